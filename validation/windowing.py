"""How long audio is cut into the export's fixed windows and put back together: the strategies
apps use, side by side.

Every strategy plans windows of at most the export's length whose starts lie on encoder-frame
multiples (80 ms for Parakeet), and says which of each window's frames its tokens are kept from;
each frame's tokens come from exactly one window. Where the kept frames switch from one window
to the next is a *seam*, where long-audio decoding loses words.

- ``midpoint``: windows ``OVERLAP_SECONDS`` apart at least; each keeps the tokens it emitted
  between the midpoints of its overlaps with its neighbours, so every kept token was decided with
  about a second of audio on either side (except at the utterance's own edges). Each window
  decodes on its own (blank start, zero LSTM state).
- ``quiet-start``: the same windows, each later one's start moved to the quietest encoder frame
  within ``QUIET_SEARCH_SECONDS`` of its planned start, and its tokens kept from there: a seam
  falls in a pause rather than inside a word (what the Swift runtime that ships these packages
  does for v3).
- ``long-overlap``: ``midpoint`` with ``LONG_OVERLAP_SECONDS`` of overlap: more context on either
  side of a seam, for more windows.
- ``buffered``: NeMo's buffered transducer inference: the audio in chunks of
  ``BUFFERED_SECONDS[1]``, each encoded with ``BUFFERED_SECONDS[0]`` of audio before it and
  ``BUFFERED_SECONDS[2]`` after it in one buffer, only the chunk's frames decoded, the decoder's
  state carried from chunk to chunk (a duration past a chunk's end is dropped, as NeMo's streaming
  decoding drops it). An 8 s buffer in the export's 15 s window: about three times the encoder
  work of ``midpoint``. NeMo's own pipeline (``BufferedRNNTPipeline``) runs beside it as the
  reference a NeMo user gets (``validation.evaluation.nemo_buffered_pipeline_decoder``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from exporters.components import ModelDims
from infra.errors import UserError
from validation.audio import fit_window

OVERLAP_SECONDS = 2.0
LONG_OVERLAP_SECONDS = 4.0
QUIET_SEARCH_SECONDS = 1.0
# left context, chunk, right context: NeMo's documented buffered-streaming configuration for its
# transducers (``streaming.left_padding_size``, ``chunk_size``, ``right_padding_size``), 20, 60 and 20
# frames of 80 ms
BUFFERED_SECONDS = (1.6, 4.8, 1.6)


@dataclass
class Decoded:
    """A transcript in the utterance's encoder frames, with what the decoder knew of each token."""

    tokens: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)  # top-1 probability, where the decoder knows it
    margins: list[float] = field(default_factory=list)  # top-1/top-2 logit margin, where known
    durations: list[int] = field(default_factory=list)  # frames each token advanced, where known
    # (frame, margin) of every decision, blanks and the tokens other windows keep included, where known
    decisions: list[tuple[int, float]] = field(default_factory=list)
    # where the decoding of the next chunk continues (the buffered strategy); not part of the transcript
    state: tuple | None = field(default=None, compare=False, repr=False)

    def extend(self, other: Decoded, first_frame: int, keep: tuple[float, float]) -> None:
        self.decisions += [(first_frame + frame, margin) for frame, margin in other.decisions]
        for i, (token, frame) in enumerate(zip(other.tokens, other.frames, strict=True)):
            if keep[0] <= first_frame + frame < keep[1]:
                self.tokens.append(token)
                self.frames.append(first_frame + frame)
                for name in ("durations", "probs", "margins"):
                    values = getattr(other, name)
                    if values:
                        getattr(self, name).append(values[i])


@dataclass(frozen=True)
class Window:
    start: int  # first sample
    length: int  # valid samples (the rest of the window is padding)
    first_frame: int  # the utterance's encoder frame at the window's start
    keep: tuple[float, float]  # the utterance's encoder frames whose tokens this window keeps: [from, to)


# (window samples padded to the window, valid samples) -> its transcript; with ``frames`` (a
# range of the window's encoder frames) and ``state`` (a Decoded.state), only those frames,
# continuing from that state
Decode = Callable[..., Decoded]
Transcribe = Callable[[np.ndarray], Decoded]  # a whole utterance's samples


def window_stride(dims: ModelDims, overlap_seconds: float = OVERLAP_SECONDS) -> int:
    """Samples between window starts: a whole number of encoder frames, overlap at least as asked."""
    stride = (dims.max_audio_samples - math.ceil(overlap_seconds * dims.sample_rate)) // dims.encoder_hop \
        * dims.encoder_hop
    if stride <= 0:
        raise UserError(f"a {dims.max_audio_seconds:g} s window cannot overlap by {overlap_seconds:g} s")
    return stride


def plan_windows(samples: int, dims: ModelDims, overlap_seconds: float = OVERLAP_SECONDS) -> list[Window]:
    """``midpoint``'s windows of an utterance of ``samples``."""
    window, hop = dims.max_audio_samples, dims.encoder_hop
    if samples <= window:
        return [Window(0, samples, 0, (0, math.inf))]
    stride = window_stride(dims, overlap_seconds)
    count = 1 + math.ceil((samples - window) / stride)
    starts = [k * stride for k in range(count)]
    # the frame halfway through each overlap: tokens before it from the earlier window, after it from the later
    bounds = [(start + (window - stride) // 2) // hop for start in starts[1:]]
    keeps = list(zip([0, *bounds], [*bounds, math.inf], strict=True))
    return [Window(start, min(window, samples - start), start // hop, keep)
            for start, keep in zip(starts, keeps, strict=True)]


def frame_energy(samples: np.ndarray, hop: int) -> np.ndarray:
    """Mean square of each encoder frame's samples (the last, partial frame's own)."""
    frames = math.ceil(samples.size / hop)
    padded = np.zeros(frames * hop, np.float64)
    padded[: samples.size] = samples
    counts = np.full(frames, hop, np.float64)
    counts[-1] = samples.size - (frames - 1) * hop
    return (padded.reshape(frames, hop) ** 2).sum(axis=1) / counts


def plan_quiet_windows(samples: np.ndarray, dims: ModelDims, overlap_seconds: float = OVERLAP_SECONDS,
                       search_seconds: float = QUIET_SEARCH_SECONDS) -> list[Window]:
    """``quiet-start``'s windows: each later one starts at the quietest encoder frame within
    ``search_seconds`` of ``midpoint``'s start (never past where the earlier window ends) and keeps
    its tokens from that frame on."""
    window, hop = dims.max_audio_samples, dims.encoder_hop
    if samples.size <= window:
        return [Window(0, samples.size, 0, (0, math.inf))]
    energy = frame_energy(samples, hop)
    stride, window_frames = window_stride(dims, overlap_seconds) // hop, window // hop
    search = round(search_seconds * dims.sample_rate / hop)
    starts = [0]
    while samples.size - starts[-1] * hop > window:
        planned = starts[-1] + stride
        low, high = max(starts[-1] + 1, planned - search), min(planned + search, starts[-1] + window_frames - 1)
        starts.append(low + int(np.argmin(energy[low:high + 1])))
    keeps = list(zip(starts, [*starts[1:], math.inf], strict=True))
    return [Window(f * hop, min(window, samples.size - f * hop), f, keep)
            for f, keep in zip(starts, keeps, strict=True)]


def plan_buffers(samples: int, dims: ModelDims, seconds: tuple[float, float, float] = BUFFERED_SECONDS
                 ) -> list[Window]:
    """``buffered``'s buffers: each chunk's frames (``keep``) with the left and right context
    around them, all within one window."""
    hop = dims.encoder_hop
    left, chunk, right = (round(s * dims.sample_rate / hop) for s in seconds)
    if (left + chunk + right) * hop > dims.max_audio_samples:
        raise UserError(f"buffers of {sum(seconds):g} s do not fit the {dims.max_audio_seconds:g} s window")
    frames = math.ceil(samples / hop)
    buffers = []
    for first in range(0, frames, chunk):
        start = max(0, first - left)
        end = min(samples, (first + chunk + right) * hop)
        buffers.append(Window(start * hop, end - start * hop, start, (first, min(first + chunk, frames))))
    return buffers


@dataclass(frozen=True)
class Strategy:
    """One way to cut long audio into windows and merge their tokens."""

    name: str
    summary: str
    overlap_seconds: float = OVERLAP_SECONDS
    quiet_start: bool = False
    buffered: bool = False  # chunks decoded with the decoder's state carried, rather than windows on their own

    def plan(self, samples: np.ndarray, dims: ModelDims) -> list[Window]:
        if self.buffered:
            return plan_buffers(samples.size, dims)
        if self.quiet_start:
            return plan_quiet_windows(samples, dims, self.overlap_seconds)
        return plan_windows(samples.size, dims, self.overlap_seconds)

    def describe(self, dims: ModelDims) -> dict:
        """How long audio is cut, for the report."""
        frame = dims.encoder_hop / dims.sample_rate
        if self.buffered:
            left, chunk, right = (round(s / frame) * frame for s in BUFFERED_SECONDS)
            return {"strategy": self.name, "window_s": dims.max_audio_seconds, "left_context_s": round(left, 3),
                    "chunk_s": round(chunk, 3), "right_context_s": round(right, 3), "frame_s": frame,
                    "merge": self.summary}
        stride = window_stride(dims, self.overlap_seconds)
        return {"strategy": self.name, "window_s": dims.max_audio_seconds, "stride_s": stride / dims.sample_rate,
                "overlap_s": (dims.max_audio_samples - stride) / dims.sample_rate, "frame_s": frame,
                "merge": self.summary}


STRATEGIES = {s.name: s for s in (
    Strategy("midpoint", "each window keeps its tokens between the midpoints of its overlaps with its neighbours"),
    Strategy("quiet-start", f"each later window starts at the quietest 80 ms frame within {QUIET_SEARCH_SECONDS:g} s "
                            "of its planned start and keeps its tokens from there", quiet_start=True),
    Strategy("long-overlap", f"midpoint with {LONG_OVERLAP_SECONDS:g} s of overlap",
             overlap_seconds=LONG_OVERLAP_SECONDS),
    Strategy("buffered", "NeMo's buffered inference: chunks with left and right context, only the chunk's frames "
                         "decoded, the decoder's state carried from chunk to chunk", buffered=True),
)}
DEFAULT_STRATEGY = "midpoint"


def seams(windows: list[Window]) -> list[int]:
    """The utterance's encoder frames where the kept tokens switch from one window to the next."""
    return [int(w.keep[0]) for w in windows[1:]]


def decode_windowed(samples: np.ndarray, dims: ModelDims, decode: Decode,
                    strategy: Strategy = STRATEGIES[DEFAULT_STRATEGY]) -> Decoded:
    merged, state = Decoded(), None
    for w in strategy.plan(samples, dims):
        clip = fit_window(samples[w.start:w.start + w.length], dims, "window", "")
        if strategy.buffered:
            part = decode(clip.samples, clip.length, frames=(w.keep[0] - w.first_frame, w.keep[1] - w.first_frame),
                          state=state)
            state = part.state
            merged.extend(part, w.keep[0], (-math.inf, math.inf))
        else:
            merged.extend(decode(clip.samples, clip.length), w.first_frame, w.keep)
    return merged


def windowed(decode: Decode, dims: ModelDims, strategy: Strategy = STRATEGIES[DEFAULT_STRATEGY]) -> Transcribe:
    """A window decoder run over a whole utterance's windows by ``strategy``, merged."""
    return lambda samples: decode_windowed(samples, dims, decode, strategy)
