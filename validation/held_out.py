"""The held-out synthetic test set transcribed by NeMo and by exported packages: WER of each
against the text, and how many transcripts match NeMo's exactly.

The set is the trained preset's own test split (``validation.corpus``): sentences it never saw
in training, spoken by espeak-ng, rendered once and cached in the export cache. Each utterance
is padded to the export window with its true length kept, and both sides decode the same
window: NeMo with its front end and encoder in Torch and ``GreedyTDTInfer``; the packages with
the exported mel_encoder, decoder and single-step joint driven by the host's greedy TDT loop.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import soundfile

from exporters.cache import ExportCache, cache_key
from exporters.components import ModelDims
from exporters.wrappers import wrapper
from validation.audio import Clip, espeak_version, fit_window
from validation.checks import CONFIDENT_MEDIAN_PROB
from validation.corpus import SEED, SPLITS, split_utterances
from validation.greedy import (
    greedy_tdt,
    nemo_greedy_tdt,
    package_decide,
    package_decoder_step,
    run_torch,
    torch_greedy_tdt,
)
from validation.metrics import word_error_rate

# Half a point of WER: how far fp16 and int8 exports may drift from NeMo.
MAX_WER_DIFFERENCE = 0.005
# fp32 exports of a confident model must transcribe exactly like NeMo; the rest within the bound.
EXACT_LABELS = ("float32",)


def held_out_clips(cache: ExportCache, dims: ModelDims) -> list[tuple[str, Clip]]:
    """(text, clip) for every test utterance of ``validation.corpus``'s split, synthesised once."""
    test = split_utterances(SEED, SPLITS)["test"]
    key = cache_key(kind="held-out-set", utterances=[u.__dict__ for u in test], espeak=espeak_version(),
                    sample_rate=dims.sample_rate)

    def build(tmp):
        for i, utterance in enumerate(test):
            soundfile.write(str(tmp / f"{i:04d}.wav"), utterance.render(dims.sample_rate), dims.sample_rate,
                            subtype="FLOAT")
        return {"utterances": len(test)}

    entry = cache.get_or_build(key, build)
    clips = []
    for i, utterance in enumerate(test):
        samples, _ = soundfile.read(str(entry.path / f"{i:04d}.wav"), dtype="float32")
        description = f"{utterance.voice}: {utterance.text}"
        clips.append((utterance.text, fit_window(samples, dims, f"held_out_{i:04d}", description)))
    return clips


Transcriber = Callable[[Clip], list[int]]


def nemo_transcriber(model, dims: ModelDims) -> Transcriber:
    front = wrapper("mel_encoder", model)

    def transcribe(clip: Clip) -> list[int]:
        encoder, length = run_torch(front, clip.samples[None, :], np.array([clip.length], np.int32))
        return nemo_greedy_tdt(model, encoder, int(length[0]), dims).tokens

    return transcribe


def package_transcriber(packages: dict, load, dims: ModelDims) -> Transcriber:
    """``packages``: component -> package of mel_encoder, decoder and joint_decision_single_step."""
    def transcribe(clip: Clip) -> list[int]:
        out = load(packages["mel_encoder"]).predict(clip.inputs())
        return greedy_tdt(out["encoder"], int(out["encoder_length"][0]), dims,
                          package_decoder_step(load(packages["decoder"])),
                          package_decide(load(packages["joint_decision_single_step"]))).tokens

    return transcribe


def median_token_probability(model, dims: ModelDims, clips: list[Clip]) -> float:
    """The median top-1 probability of the tokens NeMo's greedy path emits: the model is
    confident (its decisions mean something) when it exceeds ``validation.checks``' bar."""
    front, decoder, joint = (wrapper(name, model) for name in ("mel_encoder", "decoder", "joint"))
    probs = []
    for clip in clips:
        encoder, length = run_torch(front, clip.samples[None, :], np.array([clip.length], np.int32))
        probs += torch_greedy_tdt(decoder, joint, encoder, int(length[0]), dims)[0].token_probs
    return statistics.median(probs) if probs else 0.0


def not_confident_reason(model, dims: ModelDims, clips: list[tuple[str, Clip]]) -> tuple[float, str | None]:
    """The median top-1 probability on the first 20 held-out clips, and why a held-out WER of
    this model would mean nothing (None when it is confident enough to mean something)."""
    confidence = median_token_probability(model, dims, [clip for _, clip in clips[:20]])
    if confidence > CONFIDENT_MEDIAN_PROB:
        return confidence, None
    return confidence, (f"the model is not confident (median top-1 probability {confidence:.3g} <= "
                        f"{CONFIDENT_MEDIAN_PROB}): a random-weight model's transcripts test nothing")


@dataclass
class HeldOutResult:
    """Transcripts by label ("nemo" and each export), their WER and agreement with NeMo."""

    references: list[str]
    texts: dict[str, list[str]] = field(default_factory=dict)
    tokens: dict[str, list[list[int]]] = field(default_factory=dict)

    def wer(self, label: str) -> float:
        return word_error_rate(self.references, self.texts[label])

    def identical_to_nemo(self, label: str) -> int:
        return sum(a == b for a, b in zip(self.tokens["nemo"], self.tokens[label]))

    def differing(self, label: str, limit: int = 3) -> list[dict]:
        return [{"reference": r, "nemo": n, label: e}
                for r, n, e, a, b in zip(self.references, self.texts["nemo"], self.texts[label],
                                         self.tokens["nemo"], self.tokens[label]) if a != b][:limit]

    def failure(self, label: str) -> str | None:
        """Why ``label``'s transcripts fall short of NeMo's, or None."""
        if label in EXACT_LABELS:
            same = self.identical_to_nemo(label)
            if same != len(self.references):
                return (f"{label}: {len(self.references) - same} of {len(self.references)} transcripts differ from "
                        f"NeMo's, e.g. {self.differing(label)}")
            return None
        difference = self.wer(label) - self.wer("nemo")
        if abs(difference) > MAX_WER_DIFFERENCE:
            return (f"{label}: WER {100 * self.wer(label):.2f}% against NeMo's {100 * self.wer('nemo'):.2f}%, "
                    f"{100 * difference:+.2f} points (at most ±{100 * MAX_WER_DIFFERENCE:.1f}); "
                    f"e.g. {self.differing(label)}")
        return None

    def as_dict(self) -> dict:
        nemo_wer = self.wer("nemo")
        exports = [label for label in self.texts if label != "nemo"]
        return {"status": "failed" if any(self.failure(label) for label in exports) else "passed",
                "utterances": len(self.references), "words": sum(len(r.split()) for r in self.references),
                "max_wer_difference": MAX_WER_DIFFERENCE, "exact": list(EXACT_LABELS),
                "wer": {label: self.wer(label) for label in self.texts},
                "wer_difference_to_nemo": {label: self.wer(label) - nemo_wer for label in exports},
                "identical_to_nemo": {label: self.identical_to_nemo(label) for label in exports},
                "examples_differing": {label: self.differing(label) for label in exports}}


def transcribe_held_out(model, clips: list[tuple[str, Clip]], transcribers: dict[str, Transcriber],
                        progress=lambda message: None) -> HeldOutResult:
    result = HeldOutResult([text for text, _ in clips])
    for label, transcribe in transcribers.items():
        tokens = []
        for i, (_, clip) in enumerate(clips, 1):
            tokens.append(transcribe(clip))
            if i % 50 == 0 or i == len(clips):
                progress(f"  {label}: {i}/{len(clips)} utterances")
        result.tokens[label] = tokens
        result.texts[label] = [model.tokenizer.ids_to_text(t) if t else "" for t in tokens]
    return result


def held_out_transcripts(model, dims: ModelDims, cache: ExportCache, packages: dict[str, dict], load,
                         progress=lambda message: None) -> tuple[HeldOutResult | None, float, str | None]:
    """The held-out set transcribed by NeMo and by each labelled set of decode packages
    (``packages``: label -> component -> package); with the model's confidence. On a model not
    confident enough for its transcripts to mean anything: ``(None, confidence, why)``."""
    clips = held_out_clips(cache, dims)
    confidence, reason = not_confident_reason(model, dims, clips)
    if reason:
        return None, confidence, reason
    transcribers = {"nemo": nemo_transcriber(model, dims),
                    **{label: package_transcriber(p, load, dims) for label, p in packages.items()}}
    return transcribe_held_out(model, clips, transcribers, progress), confidence, None
