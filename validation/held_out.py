"""The trained test model's built-in evaluation sets, and its held-out check.

``held-out``: the test split of ``validation.corpus`` (sentences the model never saw in
training), spoken by espeak-ng. ``long-form``: the same recordings joined into recordings of 30 to
120 s with short pauses between them, and their joined text. ``seams`` and ``silence``: stress
sets of the same sentences rendered by espeak-ng's library with every word's time (the manifest's
``word_times``, with ``case`` and ``sentences``: fields NeMo's loader ignores): words straddling
every planned window boundary, and the silences where long-audio decoding loses words. Each is
rendered once into the export cache with a NeMo manifest beside it, and evaluated by
``validation.evaluation`` like any manifest of a user's (``--manifest builtin:held-out``).
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import soundfile

from exporters.components import ModelDims
from infra.cache import ExportCache, cache_key
from validation.audio import Clip, espeak_version, fit_window
from validation.checks import CONFIDENT_MEDIAN_PROB
from validation.corpus import (
    BUILTIN_PREFIX,
    BUILTIN_SET_NAMES,
    HELD_OUT_SET,
    SEED,
    SPLITS,
    check_manifest_argument,
    split_utterances,
)
from validation.evaluation import (
    WINDOWED,
    BadInput,
    Evaluation,
    PaceBook,
    Utterance,
    decoders_for,
    evaluate,
    nemo_window_ctc_decoder,
    nemo_window_decoder,
    read_manifest,
    read_utterance,
    token_text,
)
from validation.timestamps import word_scorer
from validation.windowing import window_stride

# fp32 exports of a confident model must transcribe exactly like NeMo; the rest within the bound.
EXACT_LABELS = ("float32",)
MANIFEST = "manifest.jsonl"
LONG_FORM_SECONDS = (30.0, 120.0)  # each long recording's length is drawn from this range
LONG_FORM_PAUSE_SECONDS = (0.3, 0.8)  # and the silence between its sentences from this one


def _write_manifest(directory: Path, rows: list[dict]) -> None:
    (directory / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def held_out_manifest(cache: ExportCache, dims: ModelDims) -> Path:
    """Every test utterance of ``validation.corpus``'s split, synthesised once, with its manifest."""
    test = split_utterances(SEED, SPLITS)["test"]
    key = cache_key(kind="held-out-set", utterances=[u.__dict__ for u in test], espeak=espeak_version(),
                    sample_rate=dims.sample_rate, manifest=MANIFEST)

    def build(tmp):
        rows = []
        for i, utterance in enumerate(test):
            audio = utterance.render(dims.sample_rate)
            soundfile.write(str(tmp / f"{i:04d}.wav"), audio, dims.sample_rate, subtype="FLOAT")
            rows.append({"audio_filepath": f"{i:04d}.wav", "text": utterance.text,
                         "duration": round(audio.size / dims.sample_rate, 3), "voice": utterance.voice})
        _write_manifest(tmp, rows)
        return {"utterances": len(test)}

    return cache.get_or_build(key, build).path / MANIFEST


def long_form_manifest(cache: ExportCache, dims: ModelDims, seed: int = SEED) -> Path:
    """The held-out recordings in order, joined into recordings of 30 to 120 s with a short
    silence between sentences; the text is the sentences' joined."""
    held_out = held_out_manifest(cache, dims)
    key = cache_key(kind="long-form-set", held_out=held_out.parent.name, seed=seed, seconds=LONG_FORM_SECONDS,
                    pauses=LONG_FORM_PAUSE_SECONDS)

    def build(tmp):
        rows, rng = [], np.random.default_rng(seed)
        sentences = [json.loads(line) for line in held_out.read_text(encoding="utf-8").splitlines()]
        target, parts, texts = rng.uniform(*LONG_FORM_SECONDS), [], []

        def flush():
            audio = np.concatenate(parts)
            name = f"long_{len(rows):03d}.wav"
            soundfile.write(str(tmp / name), audio, dims.sample_rate, subtype="FLOAT")
            rows.append({"audio_filepath": name, "text": " ".join(texts),
                         "duration": round(audio.size / dims.sample_rate, 3)})

        for sentence in sentences:
            samples, _ = soundfile.read(str(held_out.parent / sentence["audio_filepath"]), dtype="float32")
            pause = np.zeros(int(rng.uniform(*LONG_FORM_PAUSE_SECONDS) * dims.sample_rate), np.float32)
            parts += [samples, pause]
            texts.append(sentence["text"])
            if sum(p.size for p in parts) >= target * dims.sample_rate:
                flush()
                target, parts, texts = rng.uniform(*LONG_FORM_SECONDS), [], []
        if parts and sum(p.size for p in parts) >= LONG_FORM_SECONDS[0] * dims.sample_rate:
            flush()  # a remainder shorter than the range is left out
        _write_manifest(tmp, rows)
        return {"utterances": len(rows)}

    return cache.get_or_build(key, build).path / MANIFEST


# -- stress sets: the places where long-audio decoding loses words, with every word's time ---------

STRESS_PAUSE_SECONDS = (0.2, 3.0)  # the pauses between the seams set's sentences
BOUNDARIES_PER_RECORDING = 3
SILENCE_FLOOR_DB = -60.0  # the room between sentences, against full scale


class _TimedPool:
    """The held-out sentences (never trained on) in a seeded order, rendered with word times on
    first use; each taken once."""

    def __init__(self, dims: ModelDims, seed: int):
        test = split_utterances(SEED, SPLITS)["test"]
        self.unused = [test[int(i)] for i in np.random.default_rng(seed).permutation(len(test))]
        self.rate = dims.sample_rate
        self.rendered = {}

    def _sentence(self, utterance):
        if utterance.text not in self.rendered:
            self.rendered[utterance.text] = (utterance.text, *utterance.render_timed(self.rate))
        return self.rendered[utterance.text]

    def peek(self):
        return self._sentence(self.unused[0])

    def take(self, fits=lambda sentence: True):
        """The first unused sentence that ``fits`` (text, audio, word spans), or None."""
        for i, utterance in enumerate(self.unused):
            sentence = self._sentence(utterance)
            if fits(sentence):
                del self.unused[i]
                return sentence
        return None


def _place(timeline: list, start: float, sentence, rate: int) -> float:
    """Put ``sentence`` (text, audio, word spans) on the timeline at ``start`` seconds, at full
    gain; returns where it ends."""
    text, audio, spans = sentence
    timeline.append((start, audio, spans, text, 0.0))
    return start + audio.size / rate


def _write_recording(tmp: Path, name: str, case: str, timeline: list, seconds: float, dims: ModelDims,
                     rng: np.random.Generator) -> dict:
    """The timeline rendered over room noise, and its manifest row with every word's time."""
    rate = dims.sample_rate
    audio = rng.standard_normal(int(round(seconds * rate))).astype(np.float32) * np.float32(
        10 ** (SILENCE_FLOOR_DB / 20))
    texts, times, sentences = [], [], []
    for start, samples, spans, text, gain_db in sorted(timeline, key=lambda item: item[0]):
        at = int(round(start * rate))
        part = samples[: audio.size - at] * np.float32(10 ** (gain_db / 20))
        audio[at:at + part.size] += part
        texts.append(text)
        times += [[round(start + a, 3), round(start + b, 3)] for a, b in spans]
        sentences.append([len(spans), round(gain_db, 2)])
    soundfile.write(str(tmp / f"{name}.wav"), audio, rate, subtype="FLOAT")
    return {"audio_filepath": f"{name}.wav", "text": " ".join(texts), "duration": round(audio.size / rate, 3),
            "case": case, "word_times": times, "sentences": sentences}


def planned_boundaries(dims: ModelDims, count: int) -> dict[str, list[float]]:
    """The default windows' boundaries in seconds, by kind: where a later window starts, the
    midpoint of an overlap (where the merge switches windows) and where an earlier window ends."""
    stride = window_stride(dims) / dims.sample_rate
    window = dims.max_audio_seconds
    return {"window_start": [k * stride for k in range(1, count + 1)],
            "overlap_midpoint": [k * stride + (window - stride) / 2 for k in range(1, count + 1)],
            "window_end": [(k - 1) * stride + window for k in range(1, count + 1)]}


def _fits(sentence, seconds: float, rate: int) -> bool:
    return sentence[1].size / rate <= seconds


def _straddling(pool: _TimedPool, rng: np.random.Generator, boundary: float, earliest: float):
    """A sentence, and where it starts so that the middle of one of its inner words is on
    ``boundary``, starting no earlier than ``earliest``."""
    chosen = {}

    def straddles(sentence) -> bool:
        spans = sentence[2]
        inner = list(range(1, len(spans) - 1)) or list(range(len(spans)))
        a, b = spans[int(rng.choice(inner))]
        chosen["start"] = boundary - (a + b) / 2
        return chosen["start"] >= earliest

    sentence = pool.take(straddles)
    return sentence, chosen["start"]


def seams_manifest(cache: ExportCache, dims: ModelDims, seed: int = SEED) -> Path:
    """Recordings in which a word straddles every planned window boundary of one kind (window
    starts, overlap midpoints, window ends: two recordings of each), the sentences between them
    apart by pauses of 0.2 to 3 s."""
    key = cache_key(kind="seams-set", version=3, seed=seed, espeak=espeak_version(), sample_rate=dims.sample_rate,
                    window=dims.max_audio_samples, hop=dims.encoder_hop, stride=window_stride(dims),
                    pauses=STRESS_PAUSE_SECONDS, floor=SILENCE_FLOOR_DB)

    def build(tmp):
        rng, pool, rate = np.random.default_rng(seed), _TimedPool(dims, seed), dims.sample_rate
        shortest, longest = STRESS_PAUSE_SECONDS
        rows = []
        for copy in range(2):
            for kind, boundaries in planned_boundaries(dims, BOUNDARIES_PER_RECORDING).items():
                timeline, t = [], float(rng.uniform(0.3, 1.0))
                for boundary in boundaries:
                    sentence, start = _straddling(pool, rng, boundary, t + shortest)
                    while start - t > longest:  # the gap filled with sentences and pauses of 0.2 to 3 s
                        filler = pool.take(partial(_fits, seconds=start - t - 2 * shortest, rate=rate))
                        left = start - t - filler[1].size / rate  # the two pauses around the filler
                        low, high = max(shortest, left - longest), min(longest, left - shortest)
                        pause = float(rng.uniform(low, high) if low <= high else rng.uniform(shortest, longest))
                        t = _place(timeline, t + pause, filler, rate)
                    t = _place(timeline, start, sentence, rate)
                rows.append(_write_recording(tmp, f"seams_{kind}_{copy}", kind, timeline,
                                             t + float(rng.uniform(0.5, 1.5)), dims, rng))
        _write_manifest(tmp, rows)
        return {"utterances": len(rows)}

    return cache.get_or_build(key, build).path / MANIFEST


SILENCE_CASES = {
    # name: (leading silence s, speech s, pause between sentences s, trailing silence s, last sentence's gain dB)
    "speech_then_silence": ((0.0, 0.0), 12.0, (0.2, 0.8), (3.0, 3.0), (0.0, 0.0)),
    "silence_then_speech": ((3.0, 4.0), 10.0, (0.2, 0.8), (0.2, 0.5), (0.0, 0.0)),
    "long_pauses": ((0.2, 0.5), 30.0, (3.0, 6.0), (0.2, 0.5), (0.0, 0.0)),
    "lead_and_trail": ((2.0, 3.0), 20.0, (0.2, 0.8), (3.0, 5.0), (0.0, 0.0)),
    "quiet_ending": ((0.2, 0.5), 20.0, (0.2, 0.8), (0.2, 0.5), (-30.0, -20.0)),
    "quiet_ending_one_window": ((0.2, 0.5), 11.0, (0.2, 0.8), (0.2, 0.5), (-30.0, -20.0)),
}


def silence_manifest(cache: ExportCache, dims: ModelDims, seed: int = SEED) -> Path:
    """Silence where decoders lose words (``SILENCE_CASES``, two recordings each): a window of
    12 s of speech and 3 s of silence, silence first, several seconds between sentences, leading
    and trailing silence, and a last sentence 20 to 30 dB quieter than the rest."""
    key = cache_key(kind="silence-set", version=3, seed=seed, espeak=espeak_version(), sample_rate=dims.sample_rate,
                    cases=SILENCE_CASES, floor=SILENCE_FLOOR_DB, window=dims.max_audio_samples)

    def build(tmp):
        rng, pool = np.random.default_rng(seed + 1), _TimedPool(dims, seed + 1)
        rows = []
        for copy in range(2):
            for case, (lead, speech, pauses, trail, last_gain) in SILENCE_CASES.items():
                begin = float(rng.uniform(*lead))
                timeline, t = [], begin
                while True:  # sentences until the next would pass the case's seconds of speech
                    start = t + float(rng.uniform(*pauses)) if timeline else t
                    if timeline and start + pool.peek()[1].size / dims.sample_rate > begin + speech:
                        break
                    t = _place(timeline, start, pool.take(), dims.sample_rate)
                if last_gain != (0.0, 0.0):
                    start, audio, spans, text, _ = timeline[-1]
                    timeline[-1] = (start, audio, spans, text, float(rng.uniform(*last_gain)))
                rows.append(_write_recording(tmp, f"silence_{case}_{copy}", case, timeline,
                                             t + float(rng.uniform(*trail)), dims, rng))
        _write_manifest(tmp, rows)
        return {"utterances": len(rows)}

    return cache.get_or_build(key, build).path / MANIFEST


BUILTIN_SETS = dict(zip(BUILTIN_SET_NAMES, (held_out_manifest, long_form_manifest, seams_manifest, silence_manifest),
                        strict=True))


def open_data_set(text: str, cache: ExportCache, dims: ModelDims) -> tuple[Path, list[Utterance], list[BadInput]]:
    """A data set as ``--manifest`` names it, ``builtin:NAME`` (one of ``BUILTIN_SETS``, rendered
    on first use) or a manifest's path: the manifest, its utterances and its unusable lines. The
    one way the command, the suites and the benchmarks open a set."""
    check_manifest_argument(text)
    path = BUILTIN_SETS[text.removeprefix(BUILTIN_PREFIX)](cache, dims) if text.startswith(BUILTIN_PREFIX) \
        else Path(text)
    utterances, bad = read_manifest(path)
    return path, utterances, bad


def median_token_probability(model, dims: ModelDims, clips: list[Clip], decoding: str = "tdt") -> float:
    """The median top-1 probability of the tokens NeMo's greedy path (TDT, or ``decoding`` "ctc")
    emits: the model is confident (its decisions mean something) when it exceeds
    ``validation.checks``' bar."""
    decode = nemo_window_ctc_decoder(model, dims) if decoding == "ctc" else nemo_window_decoder(model, dims)
    probs = [p for clip in clips for p in decode(clip.samples, clip.length).probs]
    return statistics.median(probs) if probs else 0.0


def not_confident_reason(model, dims: ModelDims, clips: list[Clip], decoding: str = "tdt"
                         ) -> tuple[float, str | None]:
    """The median top-1 probability on ``clips``, and why a WER of this model would mean nothing
    (None when it is confident enough to mean something)."""
    confidence = median_token_probability(model, dims, clips, decoding)
    if confidence > CONFIDENT_MEDIAN_PROB:
        return confidence, None
    return confidence, (f"the model is not confident (median top-1 probability {confidence:.3g} <= "
                        f"{CONFIDENT_MEDIAN_PROB}): a random-weight model's transcripts test nothing")


def _confidence(model, dims: ModelDims, utterances: list[Utterance], decoding: str = "tdt"
                ) -> tuple[float, str | None]:
    """How sure the model is of the set's first 20 utterances, and why that is too unsure."""
    clips = [fit_window(read_utterance(u, dims.sample_rate), dims, u.key, "") for u in utterances[:20]]
    return not_confident_reason(model, dims, clips, decoding)


def held_out_unusable(model, dims: ModelDims, cache: ExportCache, data_set: str = HELD_OUT_SET) -> str | None:
    """Why ``held_out_evaluation`` would skip this model on ``data_set`` (too unsure for its
    transcripts to mean anything), asked before the work that depends on it; None if it will not."""
    return _confidence(model, dims, open_data_set(data_set, cache, dims)[1], dims.family.decodings[0])[1]


@dataclass
class TranscriptMemo:
    """What stays the same while a search tries variant after variant on one set, for
    ``held_out_evaluation(remembered=...)``: the transcripts of NeMo's two paths and of the
    exports that do not change (label -> utterance digest -> Decoded), and the model's confidence
    on the set."""

    stores: dict[str, dict]
    confidence: tuple[float, str | None] | None = None


def transcript_memo(*labels: str) -> TranscriptMemo:
    """A memo for NeMo's two paths and the exports ``labels``."""
    return TranscriptMemo({label: {} for label in (*WINDOWED.nemo, *labels)})


def _remembered(decode, store: dict, samples: np.ndarray):
    key = hashlib.sha256(np.ascontiguousarray(samples).view(np.uint8)).hexdigest()
    if key not in store:
        store[key] = decode(samples)
    return store[key]


def held_out_evaluation(model, dims: ModelDims, cache: ExportCache, exports: dict[str, dict], load,
                        progress=lambda items, total: items, report=lambda line: None, flips_against: str | None = None,
                        data_set: str = HELD_OUT_SET, remembered: TranscriptMemo | None = None,
                        decoding: str | None = None) -> tuple[Evaluation | None, float, str | None]:
    """The held-out set evaluated for each labelled set of decode packages (label -> component ->
    package), saying through ``report`` how much it decodes and, once it has a pace, how long the
    rest takes: fp32 exports must transcribe exactly like NeMo on the same windows, the rest within
    half a WER point. On a model not confident enough for its transcripts to mean anything (its
    first 20 utterances decide): ``(None, confidence, why)``. ``flips_against``: the label of the
    uncompressed export, whose words the others' are held to word by word. ``data_set``: another
    set as ``--manifest`` names one; a built-in set's texts are plain already, a manifest's are
    normalised as ``evaluate`` does by default. ``remembered`` (``transcript_memo``), kept by the
    caller across calls that change only the other exports: the decoders it holds a store for
    (NeMo's, the uncompressed export's) decode each utterance once, and the model's confidence is
    measured once, not once per call. ``decoding``: the transcripts' ("tdt" or "ctc"; by default
    the model's first)."""
    decoding = decoding or dims.family.decodings[0]
    _, utterances, bad = open_data_set(data_set, cache, dims)
    known = remembered.confidence if remembered is not None else None
    confidence, reason = known or _confidence(model, dims, utterances, decoding)
    if remembered is not None:
        remembered.confidence = (confidence, reason)
    if reason:
        return None, confidence, reason
    paces = PaceBook(cache.root, {"set": data_set, "dims": dims.as_dict(), "exports": sorted(exports),
                                  **({"decoding": decoding} if decoding == "ctc" else {})})
    decoders = decoders_for(model, dims, exports, load, decoding=decoding)
    for label, store in (remembered.stores if remembered else {}).items():
        decoders[label] = partial(_remembered, decoders[label], store)
    result = evaluate(utterances, decoders, token_text(model), dims,
                      normalizer="none" if data_set.startswith(BUILTIN_PREFIX) else "whisper-english",
                      exact=list(EXACT_LABELS), bad=bad,
                      progress=progress, report=report, paces=paces,
                      flips=(flips_against, word_scorer(model, dims)) if flips_against else None)
    return result, confidence, None
