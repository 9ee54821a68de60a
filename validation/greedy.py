"""Greedy TDT and CTC decoding driven from the host, as an app drives the exported packages, and
NeMo's own greedy decodings as the references.

The rules are NeMo's (``GreedyTDTInfer._greedy_decode``): start from the blank id with zero
LSTM state; token = argmax of the first V+1 logits, duration = durations[argmax of the rest];
the prediction network advances only after a non-blank; the frame index advances by the
duration; at most ``max_symbols`` decisions per frame, after which the frame index also
advances by one; a blank with duration 0 advances one frame (NeMo repeats the same decision
until the symbol budget runs out, then moves one frame on: the same outcome).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from exporters.components import ModelDims, decoder_inputs, zero_state
from exporters.wrappers import ctc_decoder
from validation.metrics import top1_margin

MAX_SYMBOLS_PER_FRAME = 10

# (token, h, c) -> (decoder output [1, H, 1], h, c)
DecoderStep = Callable[[int, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
# (encoder frame [1, D, 1], decoder output [1, H, 1]) -> (token id, token probability, duration index)
Decide = Callable[[np.ndarray, np.ndarray], tuple[int, float, int]]


@dataclass
class Transcript:
    tokens: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)  # the frame each token was emitted at
    durations: list[int] = field(default_factory=list)  # frames each token advanced
    token_probs: list[float] = field(default_factory=list)  # only the host decoder knows them
    emitted_at: list[int] = field(default_factory=list)  # the decision (joint evaluation) of each token
    decisions: int = 0  # joint evaluations, blanks included
    decision_frames: list[int] = field(default_factory=list)  # the frame of each decision
    # (decoder output, h, c) after the last token: where the decoding of the stream's next chunk starts
    state: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "frames": self.frames, "durations": self.durations,
                "decisions": self.decisions}


def greedy_tdt(encoder: np.ndarray, length: int, dims: ModelDims, decoder_step: DecoderStep, decide: Decide,
               max_symbols: int = MAX_SYMBOLS_PER_FRAME, state: tuple | None = None) -> Transcript:
    """Decode ``encoder`` [1, D, T] up to ``length`` frames; from ``state`` (a previous chunk's
    ``Transcript.state``) as NeMo's streaming decoding continues a partial hypothesis: the
    prediction network where it stopped, the frames from 0 (a duration past a chunk's end is
    dropped, as NeMo drops it)."""
    blank, durations = dims.blank_id, dims.durations
    decoded, h, c = state if state is not None else decoder_step(blank, zero_state(dims), zero_state(dims))
    transcript = Transcript()
    t = 0
    while t < length:
        frame = encoder[:, :, t:t + 1]
        for symbols in range(1, max_symbols + 1):
            token, prob, duration_index = decide(frame, decoded)
            skip = durations[duration_index]
            if token != blank:
                transcript.emitted_at.append(transcript.decisions)
                transcript.tokens.append(token)
                transcript.frames.append(t)
                transcript.durations.append(skip)
                transcript.token_probs.append(prob)
                decoded, h, c = decoder_step(token, h, c)
            transcript.decisions += 1
            transcript.decision_frames.append(t)
            if token == blank and skip == 0:  # NeMo repeats this very decision until the budget is spent
                symbols = max_symbols
                break
            t += skip
            if skip:
                break
        if symbols == max_symbols:
            t += 1
    transcript.state = (decoded, h, c)
    return transcript


def package_decoder_step(decoder) -> DecoderStep:
    """The exported decoder package as a ``DecoderStep``."""
    def step(token, h, c):
        out = decoder.predict(decoder_inputs(token, h, c))
        return out["decoder"], out["h_out"], out["c_out"]

    return step


def package_decide(joint_decision_single_step) -> Decide:
    """The exported single-step joint+decision package as a ``Decide``."""
    def decide(frame, decoded):
        out = joint_decision_single_step.predict({"encoder_step": frame, "decoder_step": decoded})
        return int(out["token_id"].item()), float(out["token_prob"].item()), int(out["duration"].item())

    return decide


def run_torch(module, *arrays) -> list[np.ndarray]:
    """A Torch wrapper called on numpy arrays: float outputs as float32, integer ones as int32."""
    with torch.no_grad():
        out = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
    return [o.detach().float().numpy() if o.is_floating_point() else o.numpy().astype(np.int32)
            for o in (out if isinstance(out, tuple) else (out,))]


class Decision(NamedTuple):
    """The host's decisions on logits, with the top-1/top-2 margin of each."""

    token_id: np.ndarray
    token_prob: np.ndarray
    duration: np.ndarray  # index into the model's durations
    token_margin: np.ndarray
    duration_margin: np.ndarray


def decision_from_logits(logits: np.ndarray, dims: ModelDims) -> Decision:
    """The host's decision on raw logits: token argmax and its softmax probability over the
    V+1 token logits, duration index argmax over the rest; with both margins."""
    classes = dims.vocab_size + 1
    token_logits = logits[..., :classes].astype(np.float64)
    duration_logits = logits[..., classes:]
    shifted = token_logits - token_logits.max(axis=-1, keepdims=True)
    prob = 1.0 / np.exp(shifted).sum(axis=-1)
    return Decision(token_logits.argmax(axis=-1).astype(np.int32), prob.astype(np.float32),
                    duration_logits.argmax(axis=-1).astype(np.int32), top1_margin(token_logits),
                    top1_margin(duration_logits))


def torch_decoder_step(decoder) -> DecoderStep:
    """The Torch ``Decoder`` wrapper as a ``DecoderStep``."""
    def step(token, h, c):
        inputs = decoder_inputs(token, h, c)
        return tuple(run_torch(decoder, *(inputs[k] for k in ("targets", "target_length", "h_in", "c_in"))))

    return step


def torch_decide(joint, dims: ModelDims, margins: list[float]) -> Decide:
    """The Torch ``Joint`` wrapper and the host's decision as a ``Decide``, appending every
    decision's margin (the smaller of the token and duration top-1/top-2 logit margins) to ``margins``."""
    def decide(frame, decoded):
        (logits,) = run_torch(joint, frame, decoded)
        d = decision_from_logits(logits, dims)
        margins.append(min(float(d.token_margin.item()), float(d.duration_margin.item())))
        return int(d.token_id.item()), float(d.token_prob.item()), int(d.duration.item())

    return decide


def torch_greedy_tdt(decoder, joint, encoder: np.ndarray, length: int, dims: ModelDims
                     ) -> tuple[Transcript, list[float]]:
    """The host rules on the Torch ``Decoder`` and ``Joint`` wrappers, with every decision's margin."""
    margins = []
    return greedy_tdt(encoder, length, dims, torch_decoder_step(decoder), torch_decide(joint, dims, margins)), margins


def nemo_greedy_tdt(model, encoder: np.ndarray, length: int, dims: ModelDims,
                    max_symbols: int = MAX_SYMBOLS_PER_FRAME) -> Transcript:
    """NeMo's own greedy TDT decoding (``GreedyTDTInfer``) of ``encoder`` [1, D, T]."""
    # lazy: NeMo takes seconds to import and logs as it does; only the reference decode needs it
    from nemo.collections.asr.parts.submodules.rnnt_greedy_decoding import GreedyTDTInfer
    infer = GreedyTDTInfer(decoder_model=model.decoder, joint_model=model.joint, blank_index=dims.blank_id,
                           durations=list(dims.durations), max_symbols_per_step=max_symbols, include_duration=True)
    (hypotheses,) = infer(encoder_output=torch.from_numpy(np.ascontiguousarray(encoder)),
                          encoded_lengths=torch.tensor([length]))
    hypothesis = hypotheses[0]

    def as_list(x):
        return [int(v) for v in (x.tolist() if hasattr(x, "tolist") else x)]

    return Transcript(tokens=as_list(hypothesis.y_sequence), frames=as_list(hypothesis.timestamp),
                      durations=as_list(hypothesis.token_duration))


def greedy_ctc(logits: np.ndarray, length: int, blank: int) -> Transcript:
    """Greedy CTC on raw logits [1, T, V+1] up to ``length`` frames: each frame's argmax; a token
    is emitted where it differs from the previous frame's and is not the blank (repeats merge, a
    blank between two equal tokens keeps both), at the frame its run starts. Its probability is
    the softmax's at that frame."""
    frames = logits[0, :length].astype(np.float64)
    best = frames.argmax(axis=-1)
    shifted = frames - frames.max(axis=-1, keepdims=True)
    probs = 1.0 / np.exp(shifted).sum(axis=-1)
    transcript = Transcript(decisions=length, decision_frames=list(range(length)))
    previous = blank
    for t, token in enumerate(best.tolist()):
        if token != blank and token != previous:
            transcript.emitted_at.append(t)
            transcript.tokens.append(token)
            transcript.frames.append(t)
            transcript.token_probs.append(float(probs[t]))
        previous = token
    return transcript


def ctc_decoding(model):
    """NeMo's CTC decoding object of ``model``: a hybrid's ``ctc_decoding``, a CTC model's ``decoding``."""
    return getattr(model, "ctc_decoding", None) or model.decoding


def nemo_greedy_ctc(model, encoder: np.ndarray, length: int) -> Transcript:
    """NeMo's own greedy CTC decoding of ``encoder`` [1, D, T]: its CTC decoder's log-probabilities,
    its greedy search (``GreedyCTCInfer``) and its folding of repeats and blanks
    (``CTCDecoding.decode_hypothesis``, which with timestamps on keeps the folded token ids and
    the frame step before each)."""
    from nemo.core.classes.common import typecheck  # lazy: NeMo's typing, only where its reference runs

    decoding = ctc_decoding(model)
    # the search declares axes-free inputs, the decoder typed outputs: NeMo's own pipelines pass them through
    with torch.inference_mode(), typecheck.disable_checks():
        log_probs = ctc_decoder(model)(encoder_output=torch.from_numpy(np.ascontiguousarray(encoder)))
        (hypotheses,) = decoding.decoding(decoder_output=log_probs, decoder_lengths=torch.tensor([length]))
    keeps = decoding.compute_timestamps
    decoding.compute_timestamps = True
    try:
        (hypothesis,) = decoding.decode_hypothesis(hypotheses, fold_consecutive=True)
    finally:
        decoding.compute_timestamps = keeps
    tokens, steps = hypothesis.text[0], hypothesis.text[1]
    return Transcript(tokens=[int(t) for t in tokens], frames=np.cumsum(steps, dtype=int).tolist())
