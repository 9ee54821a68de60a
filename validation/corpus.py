"""A generated English corpus and its espeak-ng recordings: the trained test model's training
data, and the held-out test set the parity checks transcribe.

Sentences are drawn from a few grammar patterns over a fixed vocabulary, so every word of the
test set is known while its sentences are not: the held-out sentences never occur in training.
Each utterance gets its own voice, variant, speed, pitch and noise level, all from one seed.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile

from infra.errors import UserError
from validation.audio import espeak_say, espeak_say_timed

NOUNS = (
    "cat dog bird fish horse child teacher doctor farmer driver singer player captain student friend neighbour "
    "river garden window table chair kitchen market village city station forest mountain island road bridge "
    "letter book paper phone camera computer engine train boat plane bottle glass basket box door wall "
    "morning evening winter summer music picture story answer question problem idea plan song game light"
).split()
ADJECTIVES = (
    "small large old young quiet loud bright dark happy sad green blue red yellow white black warm cold "
    "heavy light fast slow clean empty busy careful tired strong gentle simple strange"
).split()
VERBS = (
    "sees finds takes brings opens closes watches follows helps calls builds paints carries moves cleans "
    "reads writes likes needs wants keeps leaves visits remembers answers"
).split()
INTRANSITIVE = "sleeps waits runs sings laughs works walks swims falls returns".split()
PLACES = "near under behind beside inside above".split()
ADVERBS = "today again quickly slowly early later often never always".split()
NUMBERS = "one two three four five six seven eight nine ten twelve twenty".split()
NAMES = "anna peter maria john lucy david emma james sarah tom".split()
# Nouns whose plural is a plain -s.
PLURAL_NOUNS = tuple(n for n in NOUNS if n != "child" and not n.endswith(("ch", "sh", "x", "s", "y")))

# espeak-ng's own English voices (no MBROLA), and its voice variants.
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "f5")


def _noun_phrase(rng: np.random.Generator) -> str:
    kind = rng.integers(4)
    if kind == 0:
        return str(rng.choice(NAMES))
    if kind == 1:
        return f"the {rng.choice(NOUNS)}"
    if kind == 2:
        return f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    return f"{rng.choice(NUMBERS)} {rng.choice(PLURAL_NOUNS)}s" if rng.random() < 0.5 else f"a {rng.choice(NOUNS)}"


def sentence(rng: np.random.Generator) -> str:
    """One sentence of 2 to about 12 words."""
    pattern = rng.integers(5)
    subject = _noun_phrase(rng)
    if pattern == 0:
        text = f"{subject} {rng.choice(VERBS)} {_noun_phrase(rng)}"
    elif pattern == 1:
        text = f"{subject} {rng.choice(INTRANSITIVE)} {rng.choice(PLACES)} {_noun_phrase(rng)}"
    elif pattern == 2:
        text = f"{subject} {rng.choice(VERBS)} {_noun_phrase(rng)} {rng.choice(ADVERBS)}"
    elif pattern == 3:
        text = f"{subject} {rng.choice(INTRANSITIVE)} and then {rng.choice(VERBS)} {_noun_phrase(rng)}"
    else:
        text = f"every day {subject} {rng.choice(VERBS)} {_noun_phrase(rng)} with {_noun_phrase(rng)}"
    return text


# The built-in evaluation sets made from this corpus (``validation.held_out`` renders them), by the
# name ``--manifest builtin:NAME`` gives them.
BUILTIN_PREFIX = "builtin:"
BUILTIN_SET_NAMES = ("held-out", "long-form", "seams", "silence")
HELD_OUT_SET = f"{BUILTIN_PREFIX}held-out"  # what compressed variants are evaluated on unless told otherwise


def check_manifest_argument(text: str) -> None:
    """``--manifest``: one of the built-in sets, or a file; checked without loading anything."""
    if text.startswith(BUILTIN_PREFIX):
        if text.removeprefix(BUILTIN_PREFIX) not in BUILTIN_SET_NAMES:
            raise UserError(f"--manifest {text}: no such built-in set; expected one of: "
                              f"{', '.join(BUILTIN_PREFIX + n for n in BUILTIN_SET_NAMES)}")
    elif not Path(text).is_file():
        raise UserError(f"--manifest {text}: no such file; expected NeMo's JSON-lines manifest")


# The shipped model's data: seed and split sizes (``python -m training.train_tiny`` defaults).
SEED = 0
SPLITS = {"train": 6000, "dev": 100, "test": 200}


def split_sentences(seed: int, n_train: int, n_test: int) -> tuple[list[str], list[str]]:
    """Distinct sentences; the test ones never appear in training."""
    rng = np.random.default_rng(seed)
    seen: dict[str, None] = {}
    while len(seen) < n_train + n_test:
        seen.setdefault(sentence(rng), None)
    texts = list(seen)
    return texts[:n_train], texts[n_train:]


@dataclass(frozen=True)
class Utterance:
    text: str
    voice: str
    words_per_minute: int
    pitch: int
    snr_db: float
    noise_seed: int

    def render(self, sample_rate: int) -> np.ndarray:
        """The recording: espeak-ng speech, 0.1 to 0.3 s of silence around it, white noise at snr_db."""
        speech = espeak_say(self.text, sample_rate, voice=self.voice, words_per_minute=self.words_per_minute,
                            pitch=self.pitch)
        return self._in_room(speech, sample_rate)[0]

    def render_timed(self, sample_rate: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """The recording as ``render`` makes it, from espeak-ng's library, with each word's (start,
        end) in seconds as the synthesiser placed it."""
        speech, spans = espeak_say_timed(self.text, sample_rate, voice=self.voice,
                                         words_per_minute=self.words_per_minute, pitch=self.pitch)
        audio, lead = self._in_room(speech, sample_rate)
        return audio, [(start + lead, end + lead) for start, end in spans]

    def _in_room(self, speech: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
        """The speech with its leading and trailing silence and noise, and the lead in seconds."""
        rng = np.random.default_rng(self.noise_seed)
        lead, tail = (int(rng.uniform(0.1, 0.3) * sample_rate) for _ in range(2))
        audio = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(tail, np.float32)])
        power = float(np.mean(speech**2)) or 1e-8
        noise = rng.standard_normal(audio.size).astype(np.float32) * np.sqrt(power / 10 ** (self.snr_db / 10))
        return (audio + noise).astype(np.float32), lead / sample_rate


def utterances(texts: list[str], seed: int) -> list[Utterance]:
    rng = np.random.default_rng(seed)
    return [
        Utterance(
            text=text,
            voice=f"{rng.choice(VOICES)}+{rng.choice(VARIANTS)}",
            words_per_minute=int(rng.integers(130, 191)),
            pitch=int(rng.integers(25, 76)),
            snr_db=float(rng.uniform(15, 40)),
            noise_seed=int(rng.integers(2**31)),
        )
        for text in texts
    ]


def split_utterances(seed: int = SEED, sizes: dict[str, int] | None = None) -> dict[str, list[Utterance]]:
    """Train, dev and test utterances: distinct sentences, each split with its own voice draws."""
    sizes = sizes or SPLITS
    train, held_out = split_sentences(seed, sizes["train"], sizes["dev"] + sizes["test"])
    texts = {"train": train, "dev": held_out[: sizes["dev"]], "test": held_out[sizes["dev"]:]}
    return {split: utterances(texts[split], seed + 1 + i) for i, split in enumerate(("train", "dev", "test"))}


def write_manifest(items: list[Utterance], audio_dir: Path, manifest: Path, sample_rate: int,
                   progress=None) -> Path:
    """Render every utterance to ``audio_dir`` and write NeMo's JSON-lines manifest."""
    audio_dir.mkdir(parents=True, exist_ok=True)

    def render(index_item):
        index, item = index_item
        path = audio_dir / f"{index:05d}.wav"
        audio = item.render(sample_rate)
        soundfile.write(str(path), audio, sample_rate, subtype="PCM_16")
        return {"audio_filepath": str(path.resolve()), "duration": round(audio.size / sample_rate, 3),
                "text": item.text, **{k: v for k, v in asdict(item).items() if k != "text"}}

    rows = []
    # espeak-ng runs as a subprocess, so threads keep both cores busy.
    with ThreadPoolExecutor(max_workers=4) as pool:
        for row in pool.map(render, enumerate(items)):
            rows.append(row)
            if progress is not None:
                progress(len(rows), len(items))
    tmp = manifest.with_suffix(".partial")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(manifest)
    return manifest


# -- joined recordings: several sentences with the pauses of continuous speech ------------------

JOINED_SECONDS = (2.0, 15.0)  # a joined recording's length is drawn from this range (a window at most)
SHORT_PAUSE_SECONDS = (0.2, 1.0)  # most pauses between sentences
LONG_PAUSE_SECONDS = (1.0, 3.0)  # and one in LONG_PAUSE_SHARE
LONG_PAUSE_SHARE = 0.2
QUIETER_DB = (-12.0, 0.0)  # each sentence's gain against the recording's


@dataclass(frozen=True)
class Joined:
    """Rendered utterances joined by pauses: what a window of continuous speech holds."""

    parts: tuple[int, ...]  # indices into the rendered utterances
    pauses: tuple[float, ...]  # seconds of silence after each part but the last
    lead: float  # seconds of silence before the first part
    gains_db: tuple[float, ...]  # each part's gain


def plan_joined(durations: list[float], seed: int, seconds: tuple[float, float] = JOINED_SECONDS,
                copies: int = 2) -> list[Joined]:
    """Group utterances (of the given durations) into recordings whose lengths are drawn from
    ``seconds``: consecutive utterances of a shuffled order, ``copies`` shuffles, so each sentence
    appears in ``copies`` recordings with other neighbours. An utterance longer than its draw
    stands alone."""
    rng = np.random.default_rng(seed)

    def pause() -> float:
        span = LONG_PAUSE_SECONDS if rng.random() < LONG_PAUSE_SHARE else SHORT_PAUSE_SECONDS
        return float(rng.uniform(*span))

    plans = []
    for _ in range(copies):
        order = [int(i) for i in rng.permutation(len(durations))]
        i = 0
        while i < len(order):
            target = rng.uniform(*seconds)
            lead = float(rng.uniform(0.0, 2.0)) if rng.random() < 0.2 else 0.0
            parts, pauses, total = [order[i]], [], lead + durations[order[i]]
            i += 1
            while i < len(order):
                gap = pause()
                if total + gap + durations[order[i]] > target:
                    break
                parts.append(order[i])
                pauses.append(gap)
                total += gap + durations[order[i]]
                i += 1
            gains = tuple(float(g) for g in rng.uniform(*QUIETER_DB, size=len(parts)))
            plans.append(Joined(tuple(parts), tuple(pauses), lead, gains))
    return plans


def render_joined(joined: Joined, audio: list[np.ndarray], sample_rate: int, seed: int) -> np.ndarray:
    """The recording: each part at its gain, the pauses (and lead) filled with white noise at the
    level of the next part's own leading silence, so a pause sounds like the room, not like zeros."""
    rng = np.random.default_rng(seed)
    pieces = []
    for i, index in enumerate(joined.parts):
        part = audio[index] * np.float32(10 ** (joined.gains_db[i] / 20))
        silence = joined.lead if i == 0 else joined.pauses[i - 1]
        floor = float(np.std(part[: sample_rate // 10])) if part.size else 0.0
        pieces.append(rng.standard_normal(int(silence * sample_rate)).astype(np.float32) * np.float32(floor))
        pieces.append(part.astype(np.float32))
    return np.concatenate(pieces).astype(np.float32)
