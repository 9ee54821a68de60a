"""Chunk-by-chunk parity of a streaming encoder package against NeMo's own cache-aware streaming.

The same audio is cut into the same chunks (``exporters.streaming.mel_chunks``: NeMo's streaming
buffer) and fed to NeMo's ``cache_aware_stream_step`` and to the package, each side carrying its
own caches from chunk to chunk, as an app does. Per chunk, every output is compared under the
contract's tolerance (the committed encoder frames, each returned cache, the cache length); over
the stream, whether the error grows: a cache that drifts passes the first chunks and fails later
ones, so the growth of the error from the first quarter of the stream (once the attention cache is
full) to its last is measured and gated.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from exporters.components import (
    LATER_CHUNKS,
    STREAMING_COMPONENTS,
    VALUE,
    ModelDims,
    StreamingDims,
    initial_caches,
)
from exporters.streaming import MelChunk, NemoStream, committed_frames
from exporters.wrappers import wrapper
from infra.errors import UserError
from validation.checks import CONFIDENT_MEDIAN_PROB
from validation.greedy import decision_from_logits, greedy_tdt, run_torch, torch_decoder_step, torch_greedy_tdt
from validation.metrics import Comparison, compare, token_edit_distance
from validation.tolerances import ToleranceTable

COMPONENT = STREAMING_COMPONENTS["encoder_streaming"]  # its outputs are the first chunk's package's too
CARRIED = {"cache_last_channel_next": "cache_last_channel", "cache_last_time_next": "cache_last_time",
           "cache_last_channel_len_next": "cache_last_channel_len"}  # each output cache -> the next chunk's input
COMPONENT_VALUES = tuple(p.name for p in COMPONENT.output_ports if p.role == VALUE)  # the errors plotted
# The median error of the last quarter of a stream may be at most this many times that of its first
# quarter. Measured on the tiny streaming preset over 125 chunks of noise: fp32 0.8-1.2x, fp16 0.9-1.5x.
MAX_ERROR_GROWTH = 4.0

Predict = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # one package's predict


@dataclass(frozen=True)
class ChunkParity:
    """One chunk: each output's comparison with NeMo's (a final short chunk's caches are not
    compared: the stream has ended and nothing reads them)."""

    index: int
    last: bool
    frames: int  # committed encoder frames
    comparisons: dict[str, Comparison]

    def problems(self) -> list[str]:
        return [f"chunk {self.index} {name}: {problem}" for name, c in self.comparisons.items()
                for problem in c.problems()]


class StreamDecoder:
    """NeMo's streaming decoding (as ``conformer_stream_step`` does it): the model's own greedy
    decoding of each chunk's committed encoder frames, continuing from the previous chunk's
    hypothesis (its prediction-network state and last token). Each token's chunk and frame (of the
    stream's committed frames) are kept: where an end-of-utterance token was emitted is a decision."""

    def __init__(self, model):
        self.model = model
        self.hypotheses = None
        self.emitted: list[tuple[int, int]] = []  # (chunk, frame) of each token
        self.chunks = self.frames = 0

    def add(self, encoder: np.ndarray) -> None:
        before = len(self.tokens)
        with torch.no_grad():
            self.hypotheses = self.model.decoding.rnnt_decoder_predictions_tensor(
                encoder_output=torch.from_numpy(np.ascontiguousarray(encoder)),
                encoded_lengths=torch.tensor([encoder.shape[-1]]), return_hypotheses=True,
                partial_hypotheses=self.hypotheses)
        new = len(self.tokens) - before
        # NeMo's hypothesis restarts its timestamps with every chunk: the new tokens' frames in it
        stamps = self.hypotheses[0].timestamp  # a list after TDT decoding, a tensor after RNNT's
        stamps = stamps.tolist() if hasattr(stamps, "tolist") else list(stamps or [])
        local = stamps[-new:] if new else []
        local += [0] * (new - len(local))
        self.emitted += [(self.chunks, self.frames + int(t)) for t in local]
        self.chunks += 1
        self.frames += encoder.shape[-1]

    @property
    def tokens(self) -> list[int]:
        if not self.hypotheses:
            return []
        sequence = self.hypotheses[0].y_sequence
        return [int(t) for t in (sequence.tolist() if hasattr(sequence, "tolist") else sequence)]

    def events(self, token: int) -> list[tuple[int, int]]:
        """(chunk, frame) of each emission of ``token``."""
        return [at for t, at in zip(self.tokens, self.emitted, strict=True) if t == token]


END_OF_UTTERANCE_PIECE = "<EOU>"  # the end-of-utterance control token of NeMo's EOU models' tokenizers


def end_of_utterance_id(model) -> int | None:
    """The id of the model's end-of-utterance token: its tokenizer's ``<EOU>`` piece, if it has one."""
    tokenizer = model.tokenizer
    try:
        found = int(tokenizer.token_to_id(END_OF_UTTERANCE_PIECE))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return found if tokenizer.ids_to_tokens([found]) == [END_OF_UTTERANCE_PIECE] else None


@dataclass(frozen=True)
class EndOfUtterance:
    """Where NeMo's streaming decoding and the export's emitted the end-of-utterance token: which
    chunk, which frame. Required equal where ``exact`` (an fp32 package), else reported."""

    token: int
    reference: list[tuple[int, int]]
    exported: list[tuple[int, int]]
    exact: bool

    def problems(self) -> list[str]:
        if not self.exact or self.reference == self.exported:
            return []
        first = next((i for i, (a, b) in enumerate(zip(self.reference, self.exported, strict=False)) if a != b),
                     min(len(self.reference), len(self.exported)))
        at = lambda events: f"chunk {events[first][0]} frame {events[first][1]}" if first < len(events) else "none"  # noqa: E731
        return [f"end of utterance (token {self.token}): NeMo streaming emits it {len(self.reference)} time(s), the "
                f"export {len(self.exported)}; the {first + 1}. differs: NeMo {at(self.reference)}, export "
                f"{at(self.exported)}"]

    def as_dict(self) -> dict:
        return {"token": self.token, "nemo_streaming": [list(e) for e in self.reference],
                "export_streaming": [list(e) for e in self.exported], "match": self.reference == self.exported,
                "gated": self.exact}


def stream_predicts(predictors: dict) -> dict:
    """Loaded streaming packages as ``PackageStream`` takes them: a stateful one as the predictor
    (its state is made from it), the others as their ``predict``."""
    return {name: p if p.state_specs else p.predict for name, p in predictors.items()}


class PackageStream:
    """The streaming packages, chunk after chunk, as an app drives them: each chunk padded to its
    package's length, the caches returned by one chunk fed to the next. ``predicts`` by component:
    the first chunk's and one of the later chunks' (``LATER_CHUNKS``). The stateful one
    (``encoder_streaming_state``) is a predictor: its state is made after the first chunk and
    seeded with that chunk's returned caches (``write_state``, as an app does with
    ``MLState.withMultiArray``), and read back after each chunk to be compared."""

    def __init__(self, dims: StreamingDims, predicts: dict[str, Predict]):
        self.dims = dims
        self.predicts = predicts
        self.later = next((name for name in LATER_CHUNKS if name in predicts), None)
        if "encoder_streaming_first" not in predicts or self.later is None:
            raise UserError(f"a stream needs encoder_streaming_first and one of {', '.join(LATER_CHUNKS)}; "
                              f"given {', '.join(predicts) or 'none'}")
        self.caches = initial_caches(dims)
        self.state = None

    def component(self, chunk: MelChunk) -> str:
        """The package that encodes ``chunk``."""
        return "encoder_streaming_first" if chunk.first else self.later

    def step(self, chunk: MelChunk) -> dict[str, np.ndarray]:
        """The chunk's committed encoder frames and, but after a stream's short last chunk (nothing
        reads them), the next caches."""
        inputs = {"mel": chunk.padded(self.dims), "mel_length": np.array([chunk.length], np.int32)}
        if self.component(chunk) == "encoder_streaming_state":
            predictor = self.predicts[self.later]
            if self.state is None:
                self.state = predictor.make_state()
                for name, value in self.caches.items():
                    self.state.write_state(name, value.astype(np.float16))
            got = predictor.predict(inputs, state=self.state)
            got.update({output: self.state.read_state(state).astype(self.caches[state].dtype)
                        for output, state in CARRIED.items()})
        else:
            got = self.predicts[self.component(chunk)]({**inputs, **self.caches})
        frames = committed_frames(int(got["encoder_length"][0]), self.dims, chunk.last)
        outputs = {"encoder": got["encoder"][:, :, :frames], "encoder_length": np.array([frames], np.int32)}
        if not chunk.short(self.dims):
            outputs.update({name: got[name] for name in CARRIED})
        self.caches = {CARRIED[name]: got[name] for name in CARRIED}
        return outputs


def offline_tokens(model, samples: np.ndarray) -> list[int]:
    """NeMo on the whole stream at once: its front end, encoder (the same limited attention
    context) and greedy decoding: what the model gives offline, for the streaming-vs-offline gap."""
    with torch.no_grad():
        audio = torch.from_numpy(np.asarray(samples, np.float32))[None, :]
        mel, mel_length = model.preprocessor(input_signal=audio, length=torch.tensor([audio.shape[1]]))
        encoded, length = model.encoder(audio_signal=mel, length=mel_length)
    decoder = StreamDecoder(model)
    decoder.add(encoded[:, :, :int(length[0])].numpy())
    return decoder.tokens


@dataclass(frozen=True)
class DecisiveAgreement:
    """The host's greedy TDT (the model's Torch decoder and joint) on NeMo's streaming frames and on
    the package's: NeMo's tokens before its first decision whose top-1/top-2 margin is within twice
    the largest joint-logit difference the package's frames make must be the package's; all of
    them where ``exact`` (an fp32 package of a confident model)."""

    reference: list[int]
    exported: list[int]
    decisive_tokens: int
    required_tokens: int
    logit_error: float  # the largest joint-logit difference along NeMo's path
    median_token_prob: float

    @property
    def match(self) -> bool:
        n = self.required_tokens
        return self.reference[:n] == self.exported[:n]

    def problems(self) -> list[str]:
        if self.match:
            return []
        first = next((i for i, (a, b) in enumerate(zip(self.reference, self.exported, strict=False)) if a != b),
                     min(len(self.reference), len(self.exported)))
        return [f"transcript: the first {self.required_tokens} tokens must be NeMo's; they differ from token {first} "
                f"({token_edit_distance(self.reference, self.exported)} edits over {len(self.reference)} tokens)"]

    def as_dict(self) -> dict:
        return {"decisive_tokens": self.decisive_tokens, "required_tokens": self.required_tokens,
                "tokens": len(self.reference), "edits": token_edit_distance(self.reference, self.exported),
                "logit_error": self.logit_error, "median_token_prob": self.median_token_prob, "match": self.match}


def decisive_agreement(model, dims: ModelDims, reference: np.ndarray, exported: np.ndarray,
                       exact: bool) -> DecisiveAgreement:
    """``reference`` and ``exported``: each side's committed frames of the whole stream, [1, D, T]."""
    decoder, joint = wrapper("decoder", model), wrapper("joint", model)
    width = reference.shape[1]
    margins, errors = [], []

    def decide(frame, decoded):  # the frame holds both sides' [1, 2D, 1]: NeMo's decides, the package's is measured
        (ref,) = run_torch(joint, frame[:, :width], decoded)
        (exp,) = run_torch(joint, frame[:, width:], decoded)
        errors.append(float(np.abs(exp - ref).max()))
        d = decision_from_logits(ref, dims)
        margins.append(min(float(d.token_margin.item()), float(d.duration_margin.item())))
        return int(d.token_id.item()), float(d.token_prob.item()), int(d.duration.item())

    both = np.concatenate([reference, exported], axis=1)
    path = greedy_tdt(both, both.shape[-1], dims, torch_decoder_step(decoder), decide)
    threshold = 2 * max(errors, default=0.0)
    ambiguous = next((i for i, m in enumerate(margins) if m <= threshold), len(margins))
    decisive = sum(1 for d in path.emitted_at if d < ambiguous)
    theirs, _ = torch_greedy_tdt(decoder, joint, exported, exported.shape[-1], dims)
    median_prob = statistics.median(path.token_probs) if path.token_probs else 0.0
    required = max(len(path.tokens), len(theirs.tokens)) if exact and median_prob > CONFIDENT_MEDIAN_PROB \
        else decisive
    return DecisiveAgreement(path.tokens, theirs.tokens, decisive, required, threshold / 2, median_prob)


@dataclass(frozen=True)
class StreamParity:
    dims: StreamingDims
    chunks: list[ChunkParity]
    transcripts: dict[str, list[int]]  # "nemo_streaming", "export_streaming" (and "nemo_offline" when given)
    agreement: DecisiveAgreement | None  # None for a model the host cannot decode (not TDT)
    end_of_utterance: EndOfUtterance | None = None  # None for a model without an end-of-utterance token

    def series(self, output: str, metric: str = "max_abs") -> list[float]:
        """``metric`` of ``output`` chunk by chunk (NaN where not compared)."""
        return [getattr(c.comparisons[output], metric) if output in c.comparisons else float("nan")
                for c in self.chunks]

    def growth(self, output: str) -> float | None:
        """Median error of the last quarter of the chunks over that of the first quarter after
        the attention cache has filled; ``None`` for a stream too short to tell (under 8 chunks)."""
        filled = self.dims.cache_channel_frames // max(1, self.dims.valid_out_frames)
        errors = [e for e in self.series(output)[filled:] if not np.isnan(e)]
        if len(errors) < 8:
            return None
        quarter = len(errors) // 4
        first, last = statistics.median(errors[:quarter]), statistics.median(errors[-quarter:])
        return last / first if first > 0 else (1.0 if last == 0 else float("inf"))

    def transcript_edits(self) -> int:
        """Token edits from NeMo's streaming transcript to the export's."""
        return token_edit_distance(self.transcripts["nemo_streaming"], self.transcripts["export_streaming"])

    def failures(self) -> list[str]:
        found = [p for c in self.chunks for p in c.problems()]
        if self.agreement is not None:
            found += self.agreement.problems()
        if self.end_of_utterance is not None:
            found += self.end_of_utterance.problems()
        for output in COMPONENT_VALUES:
            growth = self.growth(output)
            if growth is not None and growth > MAX_ERROR_GROWTH:
                found.append(f"{output}: the error grows along the stream, {growth:.1f}x from its first quarter "
                             f"to its last (at most {MAX_ERROR_GROWTH:g}x): a drifting cache")
        return found

    def record(self) -> dict:
        """The per-chunk series and verdicts, for metadata.json and the plots."""
        return {"chunks": len(self.chunks), "chunk_seconds": self.dims.chunk_seconds,
                "dims": self.dims.as_dict(), "failures": self.failures(),
                "decisions": self.agreement.as_dict() if self.agreement is not None else None,
                "end_of_utterance": self.end_of_utterance.as_dict() if self.end_of_utterance is not None else None,
                "transcripts": {**self.transcripts, "export_edits_to_nemo_streaming": self.transcript_edits(),
                                **({"nemo_streaming_edits_to_offline": token_edit_distance(
                                    self.transcripts["nemo_offline"], self.transcripts["nemo_streaming"])}
                                   if "nemo_offline" in self.transcripts else {})},
                "growth": {o: self.growth(o) for o in COMPONENT_VALUES},
                "series": {o: {"max_abs": self.series(o), "psnr_db": [None if np.isinf(v) or np.isnan(v) else v
                                                                      for v in self.series(o, "psnr_db")]}
                           for o in COMPONENT_VALUES}}


def stream_parity(model, dims: StreamingDims, predicts: dict[str, Predict], chunks: list[MelChunk],
                  tolerances: ToleranceTable, model_dims: ModelDims, exact: bool,
                  offline: list[int] | None = None,
                  progress: Callable[[Iterator, int], Iterator] = lambda items, total: items,
                  end_of_utterance: int | None = None) -> StreamParity:
    """``chunks`` through NeMo's streaming and through the packages (``predicts`` by component:
    the first chunk's and the later chunks'), each side with its own caches, and each side's
    committed frames decoded by NeMo's streaming decoding; ``offline``: NeMo's transcript of the
    whole stream at once (``offline_tokens``), reported beside them; ``end_of_utterance``: the
    token whose emissions (chunk, frame) are compared (``end_of_utterance_id``)."""
    reference, exported = NemoStream(model, dims), PackageStream(dims, predicts)
    decoders = {"nemo_streaming": StreamDecoder(model), "export_streaming": StreamDecoder(model)}
    committed = {"nemo": [], "export": []}
    results = []
    for i, chunk in enumerate(progress(iter(chunks), len(chunks))):
        expected = reference.step(chunk)
        outputs = exported.step(chunk)
        comparisons = {}
        package = STREAMING_COMPONENTS[exported.component(chunk)]
        for port in COMPONENT.output_ports:
            if port.name not in outputs:
                continue
            if outputs[port.name].shape != expected[port.name].shape:
                continue  # frames committed differ: the encoder_length check says how many each side gave
            # a returned cache, or on the stateful package the state it is read from
            name = CARRIED[port.name] if package.state_ports and port.name in CARRIED else port.name
            tolerance = tolerances[package.output(name).tolerance]
            comparisons[port.name] = compare(expected[port.name], outputs[port.name], tolerance)
        results.append(ChunkParity(i, chunk.last, int(outputs["encoder_length"][0]), comparisons))
        decoders["nemo_streaming"].add(expected["encoder"])
        decoders["export_streaming"].add(outputs["encoder"])
        if outputs["encoder"].shape == expected["encoder"].shape:
            committed["nemo"].append(expected["encoder"])
            committed["export"].append(outputs["encoder"])
    transcripts = {name: decoder.tokens for name, decoder in decoders.items()}
    agreement = None
    if model_dims.durations and committed["nemo"]:
        agreement = decisive_agreement(model, model_dims, np.concatenate(committed["nemo"], axis=-1),
                                       np.concatenate(committed["export"], axis=-1), exact)
    eou = None if end_of_utterance is None else EndOfUtterance(
        end_of_utterance, decoders["nemo_streaming"].events(end_of_utterance),
        decoders["export_streaming"].events(end_of_utterance), exact)
    return StreamParity(dims, results, {**transcripts, **({"nemo_offline": offline} if offline is not None else {})},
                        agreement, eou)


def stream_audio(speech: np.ndarray, sample_rate: int) -> np.ndarray:
    """The parity stream: 0.45 s of silence, ``speech``, 1.3 s of silence, ``speech`` again and 0.37 s
    of silence. With the 14.7 s synthetic speech, 31.5 s: about 197 chunks of 160 ms, speech starting
    and the stream ending part of the way into a chunk, and a pause that runs over several chunks."""
    def silence(seconds: float) -> np.ndarray:
        return np.zeros(int(round(seconds * sample_rate)), np.float32)

    return np.concatenate([silence(0.45), speech, silence(1.3), speech, silence(0.37)]).astype(np.float32)
