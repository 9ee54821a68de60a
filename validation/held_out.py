"""The trained test model's built-in evaluation sets, and its held-out check.

``held-out``: the test split of ``validation.corpus`` (sentences the model never saw in
training), spoken by espeak-ng. ``long-form``: the same recordings joined into recordings of 30 to
120 s with short pauses between them, and their joined text. Each is rendered once into the
export cache with a NeMo manifest beside it, and evaluated by ``validation.evaluation`` like any
manifest of a user's (``--manifest builtin:held-out``).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import soundfile

from exporters.cache import ExportCache, cache_key
from exporters.components import ExportError, ModelDims
from validation.audio import Clip, espeak_version, fit_window
from validation.checks import CONFIDENT_MEDIAN_PROB
from validation.corpus import SEED, SPLITS, split_utterances
from validation.evaluation import (
    BUILTIN_PREFIX,
    Evaluation,
    decoders_for,
    evaluate,
    nemo_window_decoder,
    read_manifest,
    read_utterance,
    token_text,
)

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


BUILTIN_SETS = {"held-out": held_out_manifest, "long-form": long_form_manifest}


def manifest_path(text: str, cache: ExportCache, dims: ModelDims) -> Path:
    """``builtin:NAME`` (one of ``BUILTIN_SETS``, rendered on first use) or a manifest's path."""
    if not text.startswith(BUILTIN_PREFIX):
        return Path(text)
    name = text.removeprefix(BUILTIN_PREFIX)
    if name not in BUILTIN_SETS:
        raise ExportError(f"--manifest {text}: no such built-in set; expected one of: "
                          f"{', '.join(BUILTIN_PREFIX + n for n in BUILTIN_SETS)}")
    return BUILTIN_SETS[name](cache, dims)


def median_token_probability(model, dims: ModelDims, clips: list[Clip]) -> float:
    """The median top-1 probability of the tokens NeMo's greedy path emits: the model is
    confident (its decisions mean something) when it exceeds ``validation.checks``' bar."""
    decode = nemo_window_decoder(model, dims)
    probs = [p for clip in clips for p in decode(clip.samples, clip.length).probs]
    return statistics.median(probs) if probs else 0.0


def not_confident_reason(model, dims: ModelDims, clips: list[Clip]) -> tuple[float, str | None]:
    """The median top-1 probability on ``clips``, and why a WER of this model would mean nothing
    (None when it is confident enough to mean something)."""
    confidence = median_token_probability(model, dims, clips)
    if confidence > CONFIDENT_MEDIAN_PROB:
        return confidence, None
    return confidence, (f"the model is not confident (median top-1 probability {confidence:.3g} <= "
                        f"{CONFIDENT_MEDIAN_PROB}): a random-weight model's transcripts test nothing")


def held_out_evaluation(model, dims: ModelDims, cache: ExportCache, exports: dict[str, dict], load,
                        progress=lambda items, total: items) -> tuple[Evaluation | None, float, str | None]:
    """The held-out set evaluated for each labelled set of decode packages (label -> component ->
    package): fp32 exports must transcribe exactly like NeMo on the same windows, the rest within
    half a WER point. On a model not confident enough for its transcripts to mean anything (its
    first 20 utterances decide): ``(None, confidence, why)``."""
    utterances, bad = read_manifest(held_out_manifest(cache, dims))
    clips = [fit_window(read_utterance(u, dims.sample_rate), dims, u.key, "") for u in utterances[:20]]
    confidence, reason = not_confident_reason(model, dims, clips)
    if reason:
        return None, confidence, reason
    result = evaluate(utterances, decoders_for(model, dims, exports, load), token_text(model), dims,
                      normalizer="none", exact=list(EXACT_LABELS), bad=bad,
                      progress=progress)
    return result, confidence, None
