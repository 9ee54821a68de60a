"""Data-set evaluation: does an export transcribe a set of recordings like NeMo, and where it does
not, is it the model, the windowing or the export?

Every utterance is transcribed three ways:

1. ``nemo_full``: NeMo's front end and encoder on the whole utterance, NeMo's greedy TDT
   (``GreedyTDTInfer``): what a NeMo user gets.
2. ``nemo_windowed``: NeMo's Torch modules on exactly the windows the export sees, merged by the
   same rule.
3. each export (``export``, or several labels): the exported mel_encoder, decoder and single-step
   joint driven by the host's greedy TDT loop, window by window, merged.

So the report takes the gap apart: the model (1 against the reference text), the windowing (2
against 1) and the export's numerics (3 against 2). With ``decoding`` "ctc" (a CTC model, or a
hybrid's second decoding) the same three paths decode greedy CTC: NeMo's CTC decoding on the whole
utterance, and the CTC head (NeMo's module, then the exported package) on each window's encoding.

Streamed (``--streaming``, a cache-aware model's streaming packages), the middle path and the
export run chunk by chunk instead of window by window: ``nemo_streaming`` is NeMo's
``cache_aware_stream_step`` over NeMo's chunks of the whole utterance with the host's greedy TDT on
the model's Torch decoder and joint continuing from chunk to chunk (NeMo's streaming decoding
rules), the export the streaming packages with the decoder and single-step joint packages the same
way; the gap is then the model, the streaming and the export's numerics.

Windows: ``validation.windowing`` cuts a long utterance into the export's windows and merges
their tokens by one of its strategies (``--strategy``); others can be run beside it on the same
utterances, NeMo on the whole utterance shared.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile
import soxr

from exporters.components import STREAMING_COMPONENTS, ModelDims, StreamingDims
from exporters.streaming import NemoStream, mel_chunks
from exporters.wrappers import wrapper
from infra.errors import UserError
from infra.publish import write_whole
from validation.audio import AudioError, audio_info, check_samples
from validation.checks import CONFIDENT_MEDIAN_PROB
from validation.corpus import check_manifest_argument
from validation.full_context import linear_memory_attention
from validation.greedy import (
    greedy_ctc,
    greedy_tdt,
    nemo_greedy_ctc,
    nemo_greedy_tdt,
    package_decide,
    package_decoder_step,
    run_torch,
    torch_decide,
    torch_decoder_step,
)
from validation.journal import Journal, fingerprint
from validation.metrics import (
    NORMALIZERS,
    WordErrors,
    add_seam_losses,
    add_timing_summaries,
    locate,
    seam_losses,
    text_normalizer,
    timing_differences,
    timing_summary,
    top1_margin,
    word_errors,
    word_flips,
)
from validation.streaming import PackageStream, stream_predicts
from validation.tolerances import CONFIDENT_FLIP_PROBABILITY, MAX_WER_DIFFERENCE_POINTS
from validation.windowing import (
    BUFFERED_SECONDS,
    DEFAULT_STRATEGY,
    STRATEGIES,
    Decode,
    Decoded,
    Strategy,
    Transcribe,
    seams,
    windowed,
)

WORD = re.compile(r"\w")


@dataclass(frozen=True)
class Paths:
    """The NeMo paths the gap is taken apart with: NeMo on whole utterances (the model offline) and
    ``reference``, NeMo as the export runs; ``middle`` names their difference."""

    reference: str
    middle: str
    model: str = "nemo_full"

    @property
    def nemo(self) -> tuple[str, str]:
        return (self.model, self.reference)

    def as_dict(self) -> dict:
        return {"model": self.model, "reference": self.reference, "middle": self.middle}

    def is_nemo(self, label: str) -> bool:
        """A NeMo path (these, or NeMo's own pipeline beside a strategy), never an export."""
        return label in self.nemo or label == NEMO_PIPELINE


WINDOWED = Paths("nemo_windowed", "windowing")  # 15 s windows, merged
STREAMED = Paths("nemo_streaming", "streaming")  # a cache-aware model's chunks
NEMO_PATHS = WINDOWED.nemo
WORST = 10
LISTED_FLIPS = 20  # the most confident word flips a block lists
ESTIMATE_AFTER_SECONDS = 30.0  # decoding time before the rest of a run is estimated


# -- what is evaluated ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Utterance:
    key: str  # unique in the set: "<manifest name>:<line>" or the file's path
    audio: Path
    text: str | None  # None: agreement with NeMo only
    offset: float = 0.0
    duration: float | None = None
    word_times: tuple[tuple[float, float], ...] | None = None  # each text word's (start, end) s, where known
    case: str | None = None  # the manifest's ``case``: which kind of recording of a stress set


@dataclass(frozen=True)
class BadInput:
    where: str  # "<manifest>:<line>" or the file
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def read_manifest(path: Path) -> tuple[list[Utterance], list[BadInput]]:
    """NeMo's manifest: JSON lines with ``audio_filepath`` (relative to the manifest's folder),
    optional ``text``, ``offset`` and ``duration``. Lines that cannot be used are returned with the
    reason; a manifest with no line at all is an error."""
    path = Path(path)
    check_manifest_argument(str(path))
    utterances, bad = [], []
    lines = [(i, line) for i, line in enumerate(path.read_bytes().splitlines(), 1) if line.strip()]
    if not lines:
        raise UserError(f"--manifest {path}: empty; expected one JSON object per line with audio_filepath")
    for number, line in lines:
        where = f"{path.name}:{number}"
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            bad.append(BadInput(where, f"not UTF-8 text (byte {e.start}); expected a JSON object"))
            continue
        except ValueError as e:
            bad.append(BadInput(where, f"not JSON ({e})"))
            continue
        if not isinstance(row, dict) or not isinstance(row.get("audio_filepath"), str):
            bad.append(BadInput(where, "no audio_filepath"))
            continue
        audio = Path(row["audio_filepath"])
        audio = audio if audio.is_absolute() else path.parent / audio
        text = row.get("text")
        try:
            offset = float(row.get("offset") or 0.0)
            duration = None if row.get("duration") is None else float(row["duration"])
        except (TypeError, ValueError):
            bad.append(BadInput(where, f"offset/duration are not numbers: {row.get('offset')!r}, "
                                       f"{row.get('duration')!r}"))
            continue
        # in samples at any rate a file can have, the span must stay a finite number
        if not (_span_seconds(offset) and offset >= 0) or (duration is not None
                                                             and not (_span_seconds(duration) and duration > 0)):
            bad.append(BadInput(where, f"offset {offset} must be >= 0 and duration {duration} > 0, both finite "
                                       f"and below {MAX_SPAN_SECONDS:g} s"))
            continue
        if text is not None and not isinstance(text, str):
            bad.append(BadInput(where, f"text is {type(text).__name__} {text!r}; expected a string"))
            continue
        if not audio.is_file():
            bad.append(BadInput(where, f"{audio}: no such file"))
            continue
        word_times, reason = _word_times(row.get("word_times"), text)
        if reason:
            bad.append(BadInput(where, reason))
            continue
        case = row.get("case") if isinstance(row.get("case"), str) else None
        utterances.append(Utterance(where, audio, text, offset, duration, word_times, case))
    return utterances, bad


def _word_times(value, text: str | None) -> tuple[tuple | None, str | None]:
    """A manifest's optional ``word_times`` (the stress sets': each word of ``text`` as [start,
    end] seconds, in order), or why it cannot be used."""
    if value is None:
        return None, None
    words = (text or "").split()
    try:
        times = tuple((float(a), float(b)) for a, b in value)
    except (TypeError, ValueError):
        return None, f"word_times {str(value)[:60]!r}: expected a list of [start, end] seconds, one per word of text"
    if len(times) != len(words):
        return None, f"word_times has {len(times)} entries for the {len(words)} words of text; expected one per word"
    if not all(math.isfinite(a) and math.isfinite(b) and 0 <= a <= b for a, b in times):
        return None, "word_times: every [start, end] must be finite with 0 <= start <= end"
    return times, None


MAX_SPAN_SECONDS = 1e9  # an offset or a duration beyond this (31 years) is no recording's


def _span_seconds(seconds: float) -> bool:
    return math.isfinite(seconds) and abs(seconds) < MAX_SPAN_SECONDS


def recordings(paths: list[Path]) -> list[Utterance]:
    """``--audio`` files: no reference text, agreement with NeMo only."""
    return [Utterance(str(p), Path(p), None) for p in paths]


def read_utterance(utterance: Utterance, sample_rate: int, block_seconds: float = 10.0) -> np.ndarray:
    """The utterance's span as mono float32 at ``sample_rate``, decoded and resampled block by block
    (memory: the result and one block, whatever the file's rate and channels)."""
    path = utterance.audio
    info = audio_info(path, str(path))
    start = int(round(utterance.offset * info.samplerate))
    stop = info.frames if utterance.duration is None else min(
        info.frames, start + int(round(utterance.duration * info.samplerate)))
    if info.frames == 0:
        check_samples(np.zeros(0, np.float32), str(path))
    if start >= info.frames:
        raise AudioError(f"{path}: offset {utterance.offset} s is past its end ({info.frames / info.samplerate:.2f} s)")
    resampler = soxr.ResampleStream(info.samplerate, sample_rate, 1, dtype="float32") \
        if info.samplerate != sample_rate else None
    parts = []
    for block in soundfile.blocks(str(path), blocksize=int(block_seconds * info.samplerate), start=start, stop=stop,
                                  dtype="float32", always_2d=True):
        check_samples(block, str(path))
        mono = block.mean(axis=1)
        parts.append(resampler.resample_chunk(mono) if resampler else mono)
    if resampler is not None:
        parts.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    check_samples(samples, str(path))
    return samples.astype(np.float32, copy=False)


def span_seconds(utterance: Utterance) -> float:
    """The span's length, from the manifest or the file's header (no samples decoded); 0 for a file
    that cannot be read, which is reported when its turn comes."""
    try:
        info = audio_info(utterance.audio, str(utterance.audio))
    except AudioError:
        return 0.0
    left = max(0.0, info.frames / info.samplerate - utterance.offset)
    return left if utterance.duration is None else min(left, utterance.duration)


def clock(seconds: float) -> str:
    """``2 h 05 min``, ``4 min 10 s``, ``12 s``: a duration as a person reads it."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class PaceBook:
    """How fast earlier runs of one kind decoded on this host (seconds of work per second of audio),
    kept in the export cache: a run says up front about how long it will take from the last run
    like it. ``kind`` is what the pace depends on (the model, backend, paths and strategies)."""

    FILE = "decoding_paces.json"

    def __init__(self, cache_root: Path, kind: dict):
        self.path = Path(cache_root) / self.FILE
        host = {"machine": platform.machine(), "system": platform.system(), "cpus": os.cpu_count()}
        self.key = hashlib.sha256(json.dumps({**kind, "host": host}, sort_keys=True, default=str).encode()).hexdigest()

    def _read(self) -> dict:
        try:
            found = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or unreadable: no estimate, never a failed run
            return {}
        return found if isinstance(found, dict) else {}

    def pace(self) -> float | None:
        value = self._read().get(self.key)
        return value if isinstance(value, (int, float)) and value > 0 else None

    def record(self, seconds_per_audio_second: float) -> None:
        try:
            write_whole(self.path, json.dumps({**self._read(), self.key: seconds_per_audio_second}) + "\n")
        except OSError:  # a read-only cache keeps no pace: the next run estimates after its start
            pass


class Pace:
    """Says up front how much audio a run decodes and about how long that takes (at the pace of the
    last run like it, where ``book`` has one), and once ``ESTIMATE_AFTER_SECONDS`` of decoding
    have given a pace, how long the rest will take: a large set's cost is known in its first minute,
    on a terminal or in a log. The pace is read after the first utterance, which pays for loading
    the packages and the first calls (a streamed run's first utterance took a fifth of the run,
    and an estimate that counted it said eighteen times the run)."""

    def __init__(self, utterances: list[Utterance], report: Callable[[str], None], book: PaceBook | None = None):
        self.total = sum(span_seconds(u) for u in utterances)
        self.done = 0.0
        self.report = report
        self.book = book
        self.started = time.monotonic()
        self.warm: tuple[float, float] | None = None  # (time, audio done) once the first utterance is done
        self.estimated = False
        earlier = book.pace() if book is not None else None
        report(f"{len(utterances)} utterance(s) to decode, {clock(self.total)} of audio"
               + (f"; about {clock(earlier * self.total)} at the pace of the last run like it on this host"
                  if earlier and self.total else ""))

    def finished(self) -> None:
        """The whole run's pace (its first utterance's loading included: what the next one waits for)
        kept for the next run like it."""
        if self.book is not None and self.done > 0:
            self.book.record((time.monotonic() - self.started) / self.done)

    def decoded(self, audio_seconds: float) -> None:
        self.done += audio_seconds
        now = time.monotonic()
        if self.warm is None:
            self.warm = (now, self.done)
            return
        since, base = self.warm
        elapsed = now - since
        if self.estimated or elapsed < ESTIMATE_AFTER_SECONDS or self.done <= base or self.done >= self.total:
            return
        self.estimated = True
        rate = (self.done - base) / elapsed
        self.report(f"{clock(self.done)} of {clock(self.total)} of audio decoded in {clock(now - self.started)}: "
                    f"about {clock((self.total - self.done) / rate)} to go at the pace since the first utterance")


def decode_streamed(chunks, encode, decoder_step, decide, dims: ModelDims, margins: list[float] | None = None
                    ) -> Decoded:
    """Each chunk's committed encoder frames (``encode(chunk)["encoder"]``) decoded by the host's
    greedy TDT, continuing from the previous chunk's state; ``margins``: the list ``decide``
    appends each decision's margin to, where it does."""
    out, state, offset = Decoded(), None, 0
    for chunk in chunks:
        frames = encode(chunk)["encoder"]
        before = len(margins) if margins is not None else 0
        t = greedy_tdt(frames, frames.shape[-1], dims, decoder_step, decide, state=state)
        state = t.state
        out.tokens += t.tokens
        out.frames += [offset + f for f in t.frames]
        out.probs += t.token_probs
        out.durations += t.durations
        if margins is not None:
            out.margins += [margins[before + d] for d in t.emitted_at]
            out.decisions += [(offset + f, m) for f, m in zip(t.decision_frames, margins[before:], strict=True)]
        offset += frames.shape[-1]
    return out


def nemo_full_decoder(model, dims: ModelDims) -> Callable[[np.ndarray], Decoded]:
    """NeMo's front end and encoder on the whole utterance (attention in memory linear in its length:
    ``validation.full_context``), then ``GreedyTDTInfer``."""
    front = wrapper("mel_encoder", model)

    def decode(samples: np.ndarray) -> Decoded:
        with linear_memory_attention(model.encoder):
            encoder, length = run_torch(front, samples[None, :], np.array([samples.size], np.int32))
        t = nemo_greedy_tdt(model, encoder, int(length[0]), dims)
        return Decoded(t.tokens, t.frames, durations=t.durations)

    return decode


def _frames(encoder: np.ndarray, length: int, frames: tuple[int, int] | None) -> tuple[np.ndarray, int]:
    """The encoder frames a window decodes: all its valid ones, or ``frames`` of them."""
    if frames is None:
        return encoder, length
    first, last = frames[0], min(frames[1], length)
    return encoder[:, :, first:max(first, last)], max(0, last - first)


def nemo_window_decoder(model, dims: ModelDims) -> Decode:
    """NeMo's Torch modules on one window, decoded by the host's rules (NeMo's, proven by the
    greedy-rule tests), recording each token's probability and margin."""
    front, decoder, joint = (wrapper(name, model) for name in ("mel_encoder", "decoder", "joint"))
    step = torch_decoder_step(decoder)

    def decode(window: np.ndarray, length: int, frames=None, state=None) -> Decoded:
        encoder, encoded = run_torch(front, window[None, :], np.array([length], np.int32))
        margins = []
        t = greedy_tdt(*_frames(encoder, int(encoded[0]), frames), dims, step, torch_decide(joint, dims, margins),
                       state=state)
        return Decoded(t.tokens, t.frames, t.token_probs, [margins[d] for d in t.emitted_at], t.durations,
                       decisions=list(zip(t.decision_frames, margins, strict=True)), state=t.state)

    return decode


def nemo_stream_decoder(model, dims: ModelDims, streaming: StreamingDims) -> Transcribe:
    """NeMo's cache-aware streaming of the utterance (NeMo's chunks, ``cache_aware_stream_step``),
    each chunk's frames decoded by the host's rules on the Torch decoder and joint, recording each
    token's probability and margin."""
    decoder, joint = wrapper("decoder", model), wrapper("joint", model)

    def decode(samples: np.ndarray) -> Decoded:
        margins = []
        return decode_streamed(mel_chunks(model, samples), NemoStream(model, streaming).step,
                               torch_decoder_step(decoder), torch_decide(joint, dims, margins), dims, margins)

    return decode


def package_stream_decoder(model, packages: dict, load, dims: ModelDims, streaming: StreamingDims) -> Transcribe:
    """The streaming packages on NeMo's chunks of the utterance (the first chunk's, then the later
    chunks' package present), decoded by the exported decoder and single-step joint."""
    def decode(samples: np.ndarray) -> Decoded:
        predicts = stream_predicts({name: load(path) for name, path in packages.items()
                                    if name in STREAMING_COMPONENTS})
        return decode_streamed(mel_chunks(model, samples), PackageStream(streaming, predicts).step,
                               package_decoder_step(load(packages["decoder"])),
                               package_decide(load(packages["joint_decision_single_step"])), dims)

    return decode


NEMO_PIPELINE = "nemo_pipeline"  # NeMo's own buffered pipeline: a NeMo path beside the buffered strategy's


def nemo_buffered_pipeline_decoder(model, dims: ModelDims) -> Transcribe:
    """NeMo's own buffered transducer inference (``nemo.collections.asr.inference``'s
    ``BufferedRNNTPipeline``, stateful, with the buffers of ``validation.windowing.BUFFERED_SECONDS``)
    on the CPU: the reference a NeMo user runs. It gives text, not decisions: its transcript is that
    text's tokens, with no frames or durations (so no word times)."""
    # lazy: the pipeline's modules are imported only where NeMo's own buffered inference is compared
    from nemo.collections.asr.inference.factory.buffered_pipeline_builder import BufferedPipelineBuilder
    from omegaconf import OmegaConf  # lazy: as above

    workdir = tempfile.TemporaryDirectory(prefix="parakeet-nemo-pipeline-")
    checkpoint = Path(workdir.name) / "model.nemo"
    model.save_to(str(checkpoint))  # the pipeline loads its own copy, by path
    left, chunk, right = BUFFERED_SECONDS
    cfg = OmegaConf.create({
        "pipeline_type": "buffered", "asr_decoding_type": "rnnt", "matmul_precision": "highest", "log_level": 40,
        "enable_itn": False, "enable_nmt": False, "enable_pnc": False, "asr_output_granularity": "segment",
        "lang": None, "return_tail_result": False, "cache_dir": None, "nmt": None,
        "asr": {"model_name": str(checkpoint), "device": "cpu", "device_id": 0, "compute_dtype": "float32",
                "use_amp": False, "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}}},
        "confidence": {"exclude_blank": True, "aggregation": "mean",
                       "method_cfg": {"name": "entropy", "entropy_type": "tsallis", "alpha": 0.5,
                                      "entropy_norm": "exp"}},
        "endpointing": {"stop_history_eou": -1, "residue_tokens_at_end": 0},
        "streaming": {"sample_rate": dims.sample_rate, "batch_size": 1, "left_padding_size": left,
                      "chunk_size": chunk, "right_padding_size": right, "word_boundary_tolerance": 4,
                      "request_type": "feature_buffer", "padding_mode": "right", "stateful": True},
        "itn": {"batch_size": 1, "n_jobs": 1, "left_padding_size": 4}})
    pipeline = BufferedPipelineBuilder.build(cfg)

    def decode(samples: np.ndarray) -> Decoded:
        path = Path(workdir.name) / "utterance.wav"
        soundfile.write(str(path), samples, dims.sample_rate, subtype="FLOAT")
        (out,) = pipeline.run([str(path)]).values()
        return Decoded(list(model.tokenizer.text_to_ids(out["text"])) if out["text"].strip() else [], [])

    decode.workdir = workdir  # kept as long as the decoder is
    return decode


def _ctc_window(logits: np.ndarray, length: int, dims: ModelDims, frames: tuple[int, int] | None,
                with_margins: bool) -> Decoded:
    """Greedy CTC on a window's raw logits [1, T, V+1]: all its valid frames, or ``frames`` of
    them; each token's probability and, ``with_margins``, its frame's top-1/top-2 margin and every
    frame's (a CTC decision is a frame)."""
    first, last = (0, length) if frames is None else (frames[0], min(frames[1], length))
    window, count = logits[:, first:max(first, last)], max(0, last - first)
    t = greedy_ctc(window, count, dims.blank_id)
    if not with_margins:
        return Decoded(t.tokens, t.frames, t.token_probs)
    margins = top1_margin(window[0, :count]).tolist()
    return Decoded(t.tokens, t.frames, t.token_probs, [margins[f] for f in t.frames],
                   decisions=list(enumerate(margins)))


def nemo_full_ctc_decoder(model) -> Callable[[np.ndarray], Decoded]:
    """NeMo's front end and encoder on the whole utterance, then NeMo's CTC decoding."""
    front = wrapper("mel_encoder", model)

    def decode(samples: np.ndarray) -> Decoded:
        with linear_memory_attention(model.encoder):
            encoder, length = run_torch(front, samples[None, :], np.array([samples.size], np.int32))
        t = nemo_greedy_ctc(model, encoder, int(length[0]))
        return Decoded(t.tokens, t.frames)

    return decode


def nemo_window_ctc_decoder(model, dims: ModelDims) -> Decode:
    """NeMo's Torch front end, encoder and CTC head on one window, greedy CTC by the host's rules
    (NeMo's, proven by the greedy-rule tests). CTC carries no state from window to window."""
    front, head = wrapper("mel_encoder", model), wrapper("ctc_head", model)

    def decode(window: np.ndarray, length: int, frames=None, state=None) -> Decoded:
        encoder, encoded = run_torch(front, window[None, :], np.array([length], np.int32))
        (logits,) = run_torch(head, encoder)
        return _ctc_window(logits, int(encoded[0]), dims, frames, with_margins=True)

    return decode


def package_window_ctc_decoder(packages: dict, load, dims: ModelDims) -> Decode:
    """The exported mel_encoder and CTC head on one window, greedy CTC on the host."""
    def decode(window: np.ndarray, length: int, frames=None, state=None) -> Decoded:
        out = load(packages["mel_encoder"]).predict({"audio_signal": window[None, :],
                                                      "audio_length": np.array([length], np.int32)})
        logits = load(packages["ctc_head"]).predict({"encoder_output": out["encoder"]})["ctc_logits"]
        return _ctc_window(logits, int(out["encoder_length"][0]), dims, frames, with_margins=False)

    return decode


def package_window_decoder(packages: dict, load, dims: ModelDims) -> Decode:
    """The exported mel_encoder, decoder and single-step joint on one window."""
    def decode(window: np.ndarray, length: int, frames=None, state=None) -> Decoded:
        out = load(packages["mel_encoder"]).predict({"audio_signal": window[None, :],
                                                      "audio_length": np.array([length], np.int32)})
        return decode_encoded(out, packages, load, dims, frames, state)

    return decode


def decode_encoded(encoded: dict, packages: dict, load, dims: ModelDims, frames=None, state=None) -> Decoded:
    """The exported decoder and single-step joint on an encoder's output (``encoder``,
    ``encoder_length``): what follows the mel_encoder in ``package_window_decoder``."""
    t = greedy_tdt(*_frames(encoded["encoder"], int(encoded["encoder_length"][0]), frames), dims,
                   package_decoder_step(load(packages["decoder"])),
                   package_decide(load(packages["joint_decision_single_step"])), state=state)
    return Decoded(t.tokens, t.frames, t.token_probs, durations=t.durations, state=t.state)


# -- one utterance -------------------------------------------------------------------------------

def first_difference(reference: Decoded, candidate: Decoded, seconds_per_frame: float, text) -> dict | None:
    """Where ``candidate``'s tokens first depart from ``reference``'s."""
    n = next((i for i, (a, b) in enumerate(zip(reference.tokens, candidate.tokens, strict=False)) if a != b),
             min(len(reference.tokens), len(candidate.tokens)))
    if n == len(reference.tokens) == len(candidate.tokens):
        return None

    def at(d: Decoded):
        return (int(d.tokens[n]), text([d.tokens[n]])) if n < len(d.tokens) else (None, None)

    (ref_id, ref_piece), (cand_id, cand_piece) = at(reference), at(candidate)
    frame = min(d.frames[n] for d in (reference, candidate) if n < len(d.frames))
    narrowest = min((margin for f, margin in reference.decisions if f <= frame), default=None)
    return {"token_index": n, "time_s": round(frame * seconds_per_frame, 3),
            "nemo_token": ref_id, "nemo_piece": ref_piece, "export_token": cand_id, "export_piece": cand_piece,
            "nemo_margin": reference.margins[n] if n < len(reference.margins) else None,
            # NeMo's narrowest decision up to there: a faithful export departs only after a narrow one
            "nemo_narrowest_margin_before": narrowest}


def unexplained_difference(record: dict, label: str, margin_threshold: float) -> str | None:
    """Why ``label``'s first departure from NeMo run the same way is not explained by a narrow
    NeMo decision (one whose margin is within ``margin_threshold``, twice the logit error the
    export may make) at or before it; None where it is (or where there is none)."""
    difference = record["first_difference"][label]
    if difference is None:
        return None
    narrowest, where = difference["nemo_narrowest_margin_before"], f"{record['key']}: {label} departs from NeMo"
    if narrowest is None:
        return f"{where} at {difference['time_s']} s, where NeMo's margins are unknown"
    if narrowest <= margin_threshold:
        return None
    return (f"{where} at {difference['time_s']} s (token {difference['token_index']}: {difference['export_piece']!r} "
            f"for {difference['nemo_piece']!r}), yet every NeMo decision up to there had "
            f"a margin of at least {narrowest:.3g} > {margin_threshold:.3g}")


def evaluate_utterance(utterance: Utterance, samples: np.ndarray, decoders: dict[str, Transcribe], text,
                       dims: ModelDims, normalizer: str, paths: Paths = WINDOWED,
                       strategy: Strategy = STRATEGIES[DEFAULT_STRATEGY], timer=None,
                       decoded: dict[str, Decoded] | None = None, flips: tuple[str, Callable] | None = None
                       ) -> tuple[dict, dict[str, Decoded]]:
    """The utterance's transcripts by path and export, their word errors (normalised, and raw)
    against the reference text, each export's agreement with NeMo run as it runs, and with
    ``timer`` (``validation.timestamps.word_timer``) its words in time: word errors near the
    strategy's seams against elsewhere, and word times against NeMo's (and against the rendered
    ones, where the manifest has them). ``decoded``: transcripts already made (NeMo on the whole
    utterance, shared by every strategy). ``flips``: (the export the others' words are held to,
    ``validation.timestamps.word_scorer``): each other export's word flips against it.
    Returns the record and every path's transcript."""
    decoded, took = dict(decoded or {}), {}
    for label, decode in decoders.items():
        if label in decoded:
            continue
        start = time.perf_counter()
        decoded[label] = decode(samples)
        took[label] = round(time.perf_counter() - start, 4)
    reference = paths.reference
    texts = {label: text(d.tokens) for label, d in decoded.items()}
    windows = strategy.plan(samples, dims) if paths == WINDOWED else None
    seconds_per_frame = dims.encoder_hop / dims.sample_rate
    record = {"key": utterance.key, "audio": str(utterance.audio), "seconds": round(samples.size / dims.sample_rate, 3),
              **({"windows": len(windows), "seams_s": [round(f * seconds_per_frame, 3) for f in seams(windows)]}
                 if windows is not None else {}),
              **({"case": utterance.case} if utterance.case else {}),
              "reference": utterance.text, "transcripts": texts,
              "tokens": {label: d.tokens for label, d in decoded.items()},
              "token_probs": [round(p, 4) for p in decoded[reference].probs], "decode_seconds": took}
    if utterance.text is not None:
        record["wer"] = {label: word_errors(utterance.text, t, normalizer).as_dict() for label, t in texts.items()}
        record["wer_raw"] = {label: word_errors(utterance.text, t, "none").as_dict() for label, t in texts.items()}
    exports = [label for label in decoded if not paths.is_nemo(label)]
    record["agreement"] = {label: word_errors(texts[reference], texts[label], normalizer).as_dict()
                           for label in exports}
    record["agreement"][f"{reference}_vs_full"] = word_errors(texts[paths.model], texts[reference],
                                                              normalizer).as_dict()
    record["identical"] = {label: decoded[label].tokens == decoded[reference].tokens for label in exports}
    record["first_difference"] = {label: first_difference(decoded[reference], decoded[label], seconds_per_frame,
                                                          text) for label in exports}
    if flips is not None:
        against, scorer = flips
        baseline = scorer(decoded[against].tokens, decoded[against].frames, decoded[against].probs)
        record["flips"] = {label: word_flips(baseline, scorer(d.tokens, d.frames, d.probs))
                           for label, d in decoded.items() if label in exports and label != against}
    if timer is not None:
        record.update(words_in_time(utterance, decoded, timer, paths, record.get("seams_s")))
    return record, decoded


def words_in_time(utterance: Utterance, decoded: dict[str, Decoded], timer, paths: Paths,
                  seams_s: list[float] | None) -> dict:
    """Each path's words with their times; the seam losses of each (the reference text's words
    placed by the manifest's word times, else by NeMo on the whole utterance); each export's word
    times against NeMo's run the same way; and every path's against the rendered times."""
    words = {label: timer(d.tokens, d.frames, d.durations) for label, d in decoded.items()
             if len(d.durations) == len(d.tokens)}
    out = {"words": {label: [[w, a, b] for w, a, b in timed] for label, timed in words.items()}}
    rendered = [(w, a, b) for w, (a, b) in zip(utterance.text.split(), utterance.word_times, strict=True)] \
        if utterance.word_times is not None else None
    placed = rendered
    if placed is None and utterance.text is not None and paths.model in words:
        placed = locate(utterance.text.split(), words[paths.model])
    if placed is not None and seams_s is not None:
        out["seam_losses"] = {label: seam_losses(placed, timed, seams_s) for label, timed in words.items()}
    if paths.reference in words:
        out["word_timing"] = {label: timing_summary(timing_differences(words[paths.reference], words[label]))
                              for label in words if not paths.is_nemo(label)}
    if rendered is not None:
        out["timing_error"] = {label: timing_summary(timing_differences(rendered, timed))
                               for label, timed in words.items()}
    return out


# -- the set -------------------------------------------------------------------------------------

def _errors(record: dict, kind: str, label: str) -> WordErrors:
    d = record[kind][label]
    return WordErrors(d["substitutions"], d["insertions"], d["deletions"], d["words"])


@dataclass
class Evaluation:
    """Per-utterance records of a set, and what they add up to."""

    exports: list[str]
    normalizer: str
    max_wer_difference: float  # a fraction (0.005 is half a point)
    exact: list[str]  # exports that must transcribe exactly like NeMo's windows (fp32 of a confident model)
    records: list[dict] = field(default_factory=list)
    bad: list[BadInput] = field(default_factory=list)
    paths: Paths = WINDOWED
    strategy: Strategy = STRATEGIES[DEFAULT_STRATEGY]
    compared: list[str] = field(default_factory=list)  # the other strategies each record also holds
    replaced: int = 0  # records of an earlier run's journal this run dropped (no --resume)
    flips_against: str | None = None  # the export whose words the others' are held to, word by word

    def with_text(self) -> list[dict]:
        return [r for r in self.records if "wer" in r]

    def total(self, kind: str, label: str) -> WordErrors | None:
        records = self.with_text() if kind in ("wer", "wer_raw") else self.records
        if not records:
            return None
        return sum((_errors(r, kind, label) for r in records), WordErrors(0, 0, 0, 0))

    def wer(self, label: str) -> float:
        """``label``'s WER over the utterances with a reference text."""
        return self.total("wer", label).wer

    def median_token_prob(self) -> float:
        probs = [p for r in self.records for p in r["token_probs"]]
        return statistics.median(probs) if probs else 0.0

    def confident(self) -> bool:
        return self.median_token_prob() > CONFIDENT_MEDIAN_PROB

    def wer_difference(self, label: str) -> float | None:
        """The export's WER minus NeMo's run the same way (fractions), over utterances with text."""
        ours, theirs = self.total("wer", label), self.total("wer", self.paths.reference)
        return None if ours is None else ours.wer - theirs.wer

    def failure(self, label: str) -> str | None:
        """Why ``label`` falls short of NeMo on the same windows, or None."""
        same = self.same_way
        if label in self.exact and self.confident():
            differing = [r["key"] for r in self.records if not r["identical"][label]]
            if differing:
                return (f"{label}: {len(differing)} of {len(self.records)} transcripts differ from NeMo's {same} "
                        f"(identical ones are required of it on a confident model), e.g. {differing[:3]}")
        difference = self.wer_difference(label)
        if difference is not None:
            if abs(difference) > self.max_wer_difference:
                return (f"{label}: WER {100 * self.total('wer', label).wer:.2f}% against NeMo's "
                        f"{100 * self.total('wer', self.paths.reference).wer:.2f}% {same}, {100 * difference:+.2f} "
                        f"points (at most ±{100 * self.max_wer_difference:.2f})")
        elif self.records:
            agreement = self.total("agreement", label).wer
            if agreement > self.max_wer_difference:
                return (f"{label}: {100 * agreement:.2f}% word errors against NeMo's transcripts {same} "
                        f"(at most {100 * self.max_wer_difference:.2f}%; no reference texts)")
        return None

    @property
    def same_way(self) -> str:
        return "on the same windows" if self.paths == WINDOWED else "streamed on the same chunks"

    def failures(self) -> list[str]:
        found = [f for f in (self.failure(label) for label in self.exports) if f]
        if self.bad:
            found.append(f"{len(self.bad)} input(s) could not be evaluated: " + "; ".join(map(str, self.bad[:3])))
        return found

    def decomposition(self) -> dict:
        """Model (NeMo on whole utterances against the text), windowing (NeMo on windows minus NeMo
        on whole utterances) and each export's numerics (the export minus NeMo on the same
        windows), in WER points; None without reference texts."""
        middle = self.paths.middle
        if not self.with_text():
            return {"model": None, middle: None, "export": {label: None for label in self.exports}}
        full, reference = self.total("wer", self.paths.model).wer, self.total("wer", self.paths.reference).wer
        return {"model": 100 * full, middle: 100 * (reference - full),
                "export": {label: 100 * self.wer_difference(label) for label in self.exports}}

    def seconds_per_audio_minute(self) -> dict:
        """Each path's decoding time per minute of audio (front end and encoder included)."""
        audio = sum(r["seconds"] for r in self.records)
        labels = [*self.paths.nemo, *self.exports]
        return {label: 60 * sum(r["decode_seconds"][label] for r in self.records) / audio if audio else None
                for label in labels}

    def worst(self, label: str, count: int = WORST) -> list[dict]:
        """The utterances where ``label`` departs most from NeMo run the same way."""
        reference = self.paths.reference

        def gap(r):
            return abs(r["wer"][label]["wer"] - r["wer"][reference]["wer"]) if "wer" in r \
                else r["agreement"][label]["wer"]

        ranked = sorted((r for r in self.records if not r["identical"][label]), key=gap, reverse=True)[:count]
        return [{"key": r["key"], "gap": gap(r), "reference": r["reference"],
                 reference: r["transcripts"][reference], label: r["transcripts"][label],
                 "first_difference": r["first_difference"][label]} for r in ranked]

    def flips(self, label: str) -> dict:
        """The words ``label`` changes against ``flips_against``: how many, in how many utterances,
        how many it decided with at least ``CONFIDENT_FLIP_PROBABILITY``, and the most confident."""
        found = [{"key": r["key"], **f} for r in self.records for f in r["flips"][label]]
        confident = [f for f in found if (f["confidence"] or 0.0) >= CONFIDENT_FLIP_PROBABILITY]
        ranked = sorted(found, key=lambda f: -1.0 if f["confidence"] is None else f["confidence"], reverse=True)
        return {"against": self.flips_against, "words": len(found), "utterances": len({f["key"] for f in found}),
                "confident": len(confident), "confident_at_least": CONFIDENT_FLIP_PROBABILITY,
                "most_confident": ranked[:LISTED_FLIPS]}

    def block(self, context: dict) -> dict:
        paths = self.labels()
        reference = self.paths.reference
        failures = self.failures()
        return {
            **context,
            "status": "failed" if failures else "passed",
            "failures": failures,
            "normalizer": self.normalizer,
            "max_wer_difference_points": 100 * self.max_wer_difference,
            "exact": [label for label in self.exact if self.confident()],
            "median_token_prob": self.median_token_prob(),
            "utterances": len(self.records), "with_text": len(self.with_text()),
            "audio_seconds": round(sum(r["seconds"] for r in self.records), 2),
            "unreadable": [str(b) for b in self.bad],
            "wer": {label: t.as_dict() for label in paths if (t := self.total("wer", label))},
            "wer_raw": {label: t.as_dict() for label in paths if (t := self.total("wer_raw", label))},
            "paths": self.paths.as_dict(),
            f"agreement_with_{reference}": {label: self.total("agreement", label).as_dict() for label in self.exports}
            if self.records else {},
            f"identical_to_{reference}": {label: sum(r["identical"][label] for r in self.records)
                                          for label in self.exports},
            "decomposition_points": self.decomposition(),
            "seconds_per_audio_minute": self.seconds_per_audio_minute(),
            "worst": {label: self.worst(label) for label in self.exports},
            **({"flips": {label: self.flips(label) for label in self.exports if label != self.flips_against}}
               if self.flips_against else {}),
            **({"strategy": self.strategy.name} if self.paths == WINDOWED else {}),
            **({"wer_by_case": self.wer_by_case()} if any("case" in r for r in self.with_text()) else {}),
            **self.words_in_time(),
            **({"strategies": {name: self.under(name).strategy_summary() for name in
                               [self.strategy.name, *self.compared]}} if self.compared else {}),
        }

    def labels(self) -> list[str]:
        """Every path of the records: NeMo's (its own pipeline too, where every record has it) and the exports."""
        pipeline = bool(self.records) and all(NEMO_PIPELINE in r["transcripts"] for r in self.records)
        return [*self.paths.nemo, *([NEMO_PIPELINE] if pipeline else []), *self.exports]

    def wer_by_case(self) -> dict:
        """Each path's WER over the recordings of each ``case`` of a stress set."""
        cases = list(dict.fromkeys(r["case"] for r in self.with_text() if "case" in r))
        labels = self.labels()
        return {case: {label: sum((_errors(r, "wer", label) for r in self.with_text() if r.get("case") == case),
                                  WordErrors(0, 0, 0, 0)).as_dict() for label in labels} for case in cases}

    def under(self, name: str) -> Evaluation:
        """The same utterances as another strategy cut them (one of ``compared``), or this one."""
        if name == self.strategy.name:
            return self
        return Evaluation(self.exports, self.normalizer, self.max_wer_difference, self.exact,
                          [r["strategies"][name] for r in self.records], paths=self.paths, strategy=STRATEGIES[name])

    def words_in_time(self) -> dict:
        """Seam losses by path, export word times against NeMo's, and every path's against the
        rendered times, over the records that have them."""
        out = {}
        for key in ("seam_losses", "word_timing", "timing_error"):
            found = [r[key] for r in self.records if key in r]
            if not found:
                continue
            labels = list(dict.fromkeys(label for f in found for label in f))
            if key == "seam_losses":
                out[key] = {label: functools.reduce(add_seam_losses, (f[label] for f in found if label in f), None)
                            for label in labels}
            else:
                out[key] = {label: add_timing_summaries([f[label] for f in found if label in f]) for label in labels}
        return out

    def strategy_summary(self) -> dict:
        """What a strategy comes to on this set: WER by path, the exports' agreement with NeMo on
        the same windows, and the seam losses."""
        reference = self.paths.reference
        return {"merge": self.strategy.summary,
                "windows": sum(r.get("windows", 0) for r in self.records),
                "wer": {label: t.as_dict() for label in self.labels() if (t := self.total("wer", label))},
                f"identical_to_{reference}": {label: sum(r["identical"][label] for r in self.records)
                                              for label in self.exports},
                "failures": [f for f in (self.failure(label) for label in self.exports) if f],
                **({"wer_by_case": self.wer_by_case()} if any("case" in r for r in self.with_text()) else {}),
                **{k: v for k, v in self.words_in_time().items() if k == "seam_losses"}}


def evaluate(utterances: list[Utterance], decoders: dict, text, dims: ModelDims, *, normalizer: str = "whisper-english",
             max_wer_difference: float = MAX_WER_DIFFERENCE_POINTS / 100, exact: list[str] = (),
             bad: list[BadInput] = (), journal: Path | None = None, resume: bool = False, settings: dict | None = None,
             report: Callable[[str], None] = lambda line: None,
             progress: Callable[[Iterator, int], Iterator] = lambda items, total: items,
             paths: Paths = WINDOWED, strategy: Strategy = STRATEGIES[DEFAULT_STRATEGY],
             compared: dict[str, dict[str, Transcribe]] | None = None, timer=None,
             paces: PaceBook | None = None, flips: tuple[str, Callable] | None = None) -> Evaluation:
    """Every utterance through every decoder (``paths.nemo`` and the exports), the windowed ones
    cut by ``strategy``, and through each other strategy's decoders in ``compared`` (name -> the
    reference path and the exports cut that way; NeMo on whole utterances is shared); with
    ``timer``, the words in time (``words_in_time``). Each record is appended to ``journal`` as it
    is done (``validation.journal``). With ``resume``, the utterances the journal already holds are
    taken from it, where nothing that determines them changed: their audio, text, ``settings``
    (the packages, say), the normaliser and the windows. What the journal held is said through
    ``report``, and with ``paces`` about how long the run will take, from the last run like it.
    ``flips``: (an export, ``validation.timestamps.word_scorer``): the words each other export
    changes against that one (``Evaluation.flips``)."""
    if normalizer not in NORMALIZERS:
        raise UserError(f"--normalizer {normalizer!r}; expected one of: {', '.join(NORMALIZERS)}")
    exports = [label for label in decoders if not paths.is_nemo(label)]
    compared = compared or {}
    result = Evaluation(exports, normalizer, max_wer_difference, list(exact), bad=list(bad), paths=paths,
                        strategy=strategy, compared=list(compared), flips_against=flips[0] if flips else None)
    # streamed records say so in their fingerprint
    determined_by = {**(settings or {}), "normalizer": normalizer, "paths": list(decoders),
                     "windows": strategy.describe(dims), "compared": list(compared), "timed": timer is not None,
                     **({"mode": paths.as_dict()} if paths != WINDOWED else {}),
                     **({"flips_against": flips[0]} if flips else {})}
    normalize = text_normalizer(normalizer)
    wordless = [u.key for u in utterances if u.text is not None and not WORD.search(normalize(u.text))]
    if wordless:  # no word to score against: a WER would be every hypothesis word over zero
        report(f"{len(wordless)} reference text(s) hold no word after the {normalizer} normaliser (punctuation or "
               f"nothing): measured for agreement with NeMo only, e.g. {wordless[:3]}")
        unscored = set(wordless)
        utterances = [replace(u, text=None) if u.key in unscored else u for u in utterances]
    prints = {u.key: fingerprint(u.audio, u.offset, u.duration, u.text, determined_by) for u in utterances}
    with Journal(journal) if journal is not None else nullcontext() as writer:
        done = {}
        if writer is not None:
            found = writer.start(prints, resume)
            done = found.records
            result.replaced = found.replaced
            for line in found.summary(journal.name):
                report(line)
        pace = Pace([u for u in utterances if u.key not in done], report, paces)
        for utterance in progress(iter(utterances), len(utterances)):
            if utterance.key in done:
                result.records.append(done[utterance.key])
                continue
            try:
                samples = read_utterance(utterance, dims.sample_rate)
            except AudioError as e:
                result.bad.append(BadInput(utterance.key, str(e)))
                continue
            record, decoded = evaluate_utterance(utterance, samples, decoders, text, dims, normalizer, paths,
                                                 strategy, timer, flips=flips)
            if compared:
                shared = {paths.model: decoded[paths.model]}
                record["strategies"] = {
                    name: evaluate_utterance(utterance, samples, others, text, dims, normalizer, paths,
                                             STRATEGIES[name], timer, decoded=shared)[0]
                    for name, others in compared.items()}
            record["fingerprint"] = prints[utterance.key]
            result.records.append(record)
            if writer is not None:
                writer.append(record)
            pace.decoded(samples.size / dims.sample_rate)
        pace.finished()
    return result


def decoders_for(model, dims: ModelDims, exports: dict[str, dict], load,
                 strategy: Strategy = STRATEGIES[DEFAULT_STRATEGY], decoding: str = "tdt") -> dict[str, Transcribe]:
    """The three paths: NeMo on whole utterances, NeMo on the windows, and each export (label ->
    component -> package) on the windows, cut by ``strategy``; greedy TDT, or with ``decoding``
    "ctc" greedy CTC on the CTC head."""
    full = nemo_full_ctc_decoder(model) if decoding == "ctc" else nemo_full_decoder(model, dims)
    return {WINDOWED.model: full, **windowed_decoders_for(model, dims, exports, load, strategy, decoding)}


def windowed_decoders_for(model, dims: ModelDims, exports: dict[str, dict], load, strategy: Strategy,
                          decoding: str = "tdt") -> dict[str, Transcribe]:
    """NeMo on the windows and each export on the windows, cut by ``strategy`` (and for the
    buffered strategy of a transducer NeMo's own buffered pipeline beside them)."""
    if decoding == "ctc":
        return {WINDOWED.reference: windowed(nemo_window_ctc_decoder(model, dims), dims, strategy),
                **{label: windowed(package_window_ctc_decoder(packages, load, dims), dims, strategy)
                   for label, packages in exports.items()}}
    return {WINDOWED.reference: windowed(nemo_window_decoder(model, dims), dims, strategy),
            **({NEMO_PIPELINE: nemo_buffered_pipeline_decoder(model, dims)} if strategy.buffered else {}),
            **{label: windowed(package_window_decoder(packages, load, dims), dims, strategy)
               for label, packages in exports.items()}}


def streaming_decoders_for(model, dims: ModelDims, streaming: StreamingDims, exports: dict[str, dict], load
                           ) -> dict[str, Transcribe]:
    """The three paths streamed: NeMo on whole utterances, NeMo's cache-aware streaming, and each
    export's streaming packages (label -> component -> package)."""
    return {STREAMED.model: nemo_full_decoder(model, dims),
            STREAMED.reference: nemo_stream_decoder(model, dims, streaming),
            **{label: package_stream_decoder(model, packages, load, dims, streaming)
               for label, packages in exports.items()}}


def token_text(model) -> Callable[[list[int]], str]:
    return lambda tokens: model.tokenizer.ids_to_text(list(tokens)) if len(tokens) else ""
