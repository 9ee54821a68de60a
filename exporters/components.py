"""The component contract: one table of what each exported package takes and returns, and of
how each output is checked.

Names and layouts follow the public Core ML release of Parakeet-TDT v3 so exported packages
drop into the Swift apps that load it. Every size comes from the loaded model (``ModelDims``),
never from constants for the 0.6B model. Every other per-component fact (tolerance keys, step
axes, headline outputs, fused parts, the decode path) is declared here and derived elsewhere.
This module imports nothing heavy: the Torch wrappers are bound to the table in
``exporters.wrappers``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from infra.errors import UserError
from runtimes.base import COMPUTE_UNITS

MAX_AUDIO_SECONDS = 15.0
COMPUTE_PRECISIONS = ("float16", "float32")
DEPLOYMENT_TARGETS = ("iOS17", "iOS18")

# What an output is, and so how it is compared: values within a tolerance, decisions (token id,
# duration) by margin-aware agreement, lengths exactly.
VALUE, DECISION, LENGTH = "value", "decision", "length"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32" or "int32"

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ModelDims:
    """The sizes of one loaded model on the fixed export window (``exporters.wrappers.model_dims``)."""

    sample_rate: int
    max_audio_seconds: float
    max_audio_samples: int
    n_mels: int
    mel_frames: int
    mel_length: int  # valid mel frames of a full window (the STFT's centre padding adds one)
    encoder_dim: int
    encoder_frames: int
    encoder_hop: int  # audio samples per encoder frame: the mel hop times the subsampling factor
    pred_hidden: int
    pred_layers: int
    vocab_size: int
    durations: tuple[int, ...] = field(default_factory=tuple)
    transducer: bool = True  # a prediction network and joint (RNNT, or TDT with durations)
    ctc_classes: int = 0  # a CTC head's outputs: vocab_size + 1 (the blank last); 0 without one

    @property
    def blank_id(self) -> int:
        return self.vocab_size

    @property
    def heads(self) -> frozenset[str]:
        """What decodes this model's encoding: ``transducer`` (with ``durations`` for TDT), ``ctc``."""
        return frozenset(h for h, has in (("transducer", self.transducer), ("durations", bool(self.durations)),
                                          ("ctc", bool(self.ctc_classes))) if has)

    @property
    def family(self) -> Family:
        return family_of(self.heads)

    @property
    def joint_classes(self) -> int:
        return self.vocab_size + 1 + len(self.durations)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["durations"] = list(self.durations)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelDims:
        return cls(**{**d, "durations": tuple(d["durations"])})


@dataclass(frozen=True)
class Port:
    """One input or output of a component: its name, dtype and shape for given dims and, for an
    output, how the parity checks compare it.

    ``tolerance`` is the tolerance table's key for the comparison against Torch (``None``: not
    compared on its own, as decisions are); ``fused_tolerance`` the key for a fused package's
    output against the parts it replaces; ``step_axis`` the time (or decoder-step) axis along
    which its L2 norm per step is plotted.
    """

    name: str
    dtype: str
    shape: Callable[[ModelDims], tuple[int, ...]]
    role: str = VALUE
    tolerance: str | None = None
    fused_tolerance: str | None = None
    step_axis: int | None = None

    def spec(self, dims: ModelDims) -> TensorSpec:
        return TensorSpec(self.name, tuple(self.shape(dims)), self.dtype)


@dataclass(frozen=True)
class Component:
    name: str
    summary: str
    input_ports: tuple[Port, ...]
    output_ports: tuple[Port, ...]
    headline: str  # the output whose quality stands for the component's (plots, gates)
    # The STFT's power spectrum and the per-feature sums overflow fp16 (max 65504): ops under
    # these wrapper attributes (TorchScript module scopes) always compute in fp32.
    fp32_scopes: tuple[str, ...] = ()
    requires: str | None = None  # the head a model needs for this component (``ModelDims.heads``); None: every model
    fuses: tuple[str, ...] = ()  # the components this one replaces, run one after the other
    # exported as the converted programs of ``fuses`` chained (``exporters.compose``), not traced:
    # its wrapper's attributes are named after them, so the op origins read as the traced ones'
    chained: bool = False
    decode: bool = False  # one of the packages an app's greedy TDT loop drives
    # Core ML states (iOS 18 ``MLState``): read and written in place by every prediction; each is
    # compared, read back after the prediction, under its tolerance key as an output would be
    state_ports: tuple[Port, ...] = ()
    minimum_deployment_target: str | None = None  # the least the package needs, above the option's

    def __post_init__(self):
        names = [p.name for p in self.output_ports]
        if self.headline not in names or self.output(self.headline).role != VALUE:
            raise ValueError(f"{self.name}: headline {self.headline!r} is not one of its value outputs {names}")

    def inputs(self, dims: ModelDims) -> tuple[TensorSpec, ...]:
        return tuple(p.spec(dims) for p in self.input_ports)

    def outputs(self, dims: ModelDims) -> tuple[TensorSpec, ...]:
        return tuple(p.spec(dims) for p in self.output_ports)

    def states(self, dims: ModelDims) -> tuple[TensorSpec, ...]:
        return tuple(p.spec(dims) for p in self.state_ports)

    def output(self, name: str) -> Port:
        """An output or a state, by name."""
        return next(p for p in self.output_ports + self.state_ports if p.name == name)

    def fits(self, dims: ModelDims) -> bool:
        """Whether a model of these dims has what this component exports."""
        return self.requires is None or self.requires in dims.heads

    def deployment_target(self, option: str) -> str:
        """The package's deployment target: the option's, or this component's least if higher."""
        needed = self.minimum_deployment_target
        return needed if needed and DEPLOYMENT_TARGETS.index(needed) > DEPLOYMENT_TARGETS.index(option) else option


def _f32(name, shape, **checks) -> Port:
    return Port(name, "float32", shape, **checks)


def _i32(name, shape, **checks) -> Port:
    return Port(name, "int32", shape, **checks)


def _one(d):
    return (1,)


def _audio():
    return (_f32("audio_signal", lambda d: (1, d.max_audio_samples)), _i32("audio_length", _one))


def _mel_ports(component: str | None = None):
    """The mel and its length; as outputs of ``component`` when named."""
    checks = {"mel": {}, "length": {}}
    if component:
        checks = {"mel": {"tolerance": f"{component}.mel", "step_axis": 2},
                  "length": {"role": LENGTH, "tolerance": f"{component}.mel_length"}}
    return (_f32("mel", lambda d: (1, d.n_mels, d.mel_frames), **checks["mel"]),
            _i32("mel_length", _one, **checks["length"]))


def _encoded(component: str, fused: bool = False):
    return (_f32("encoder", lambda d: (1, d.encoder_dim, d.encoder_frames), tolerance=f"{component}.encoder",
                 fused_tolerance=f"fused.{component}.encoder" if fused else None, step_axis=2),
            _i32("encoder_length", _one, role=LENGTH, tolerance=f"{component}.encoder_length"))


def _state(name, **checks):
    return _f32(name, lambda d: (d.pred_layers, 1, d.pred_hidden), **checks)


def _joint_inputs(encoder: str, decoder: str, frames: Callable[[ModelDims], int]):
    return (_f32(encoder, lambda d: (1, d.encoder_dim, frames(d))), _f32(decoder, lambda d: (1, d.pred_hidden, 1)))


def _decision(component: str, frames: Callable[[ModelDims], int]):
    shape = lambda d: (1, frames(d), 1)  # noqa: E731
    return (_i32("token_id", shape, role=DECISION),
            _f32("token_prob", shape, tolerance=f"{component}.token_prob", fused_tolerance="fused.token_prob",
                 step_axis=1),
            _i32("duration", shape, role=DECISION))


def _all_frames(d):
    return d.encoder_frames


def _one_frame(d):
    return 1


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component("preprocessor", "waveform -> normalised log-mel", _audio(), _mel_ports("preprocessor"),
                  headline="mel", fp32_scopes=("*",)),
        Component("encoder", "log-mel -> FastConformer encoding", _mel_ports(), _encoded("encoder"),
                  headline="encoder"),
        Component("mel_encoder", "waveform -> encoding (preprocessor and encoder fused)", _audio(),
                  _encoded("mel_encoder", fused=True), headline="encoder", fp32_scopes=("preprocessor",),
                  fuses=("preprocessor", "encoder"), chained=True, decode=True),
        Component(
            "decoder", "one LSTM prediction-network step with explicit state",
            (_i32("targets", lambda d: (1, 1)), _i32("target_length", _one), _state("h_in"), _state("c_in")),
            # step axis 0: the checks stack the outputs of a rollout of decoder steps
            (_f32("decoder", lambda d: (1, d.pred_hidden, 1), tolerance="decoder.decoder", step_axis=0),
             _state("h_out", tolerance="decoder.h_out", step_axis=0),
             _state("c_out", tolerance="decoder.c_out", step_axis=0)),
            headline="decoder", requires="transducer", decode=True),
        Component("joint", "encoding x decoder step -> raw token and duration logits",
                  _joint_inputs("encoder", "decoder", _all_frames),
                  (_f32("logits", lambda d: (1, d.encoder_frames, 1, d.joint_classes), tolerance="joint.logits",
                        step_axis=1),),
                  headline="logits", requires="transducer"),
        Component("joint_decision", "joint + greedy token/duration decision for every frame",
                  _joint_inputs("encoder", "decoder", _all_frames), _decision("joint_decision", _all_frames),
                  headline="token_prob", requires="durations", fuses=("joint",)),
        Component("joint_decision_single_step", "joint + decision for one frame and one decoder step",
                  _joint_inputs("encoder_step", "decoder_step", _one_frame),
                  _decision("joint_decision_single_step", _one_frame),
                  headline="token_prob", requires="durations", fuses=("joint",), decode=True),
        # Raw logits, as the public CTC releases export them: a converted log_softmax over the
        # vocabulary gave values down to -45,440 in fp16 there, and greedy CTC needs only the argmax
        # (an app that wants log-probabilities takes a log_softmax in fp32 on the host).
        Component("ctc_head", "encoding -> raw CTC logits per frame (the blank last)",
                  (_f32("encoder_output", lambda d: (1, d.encoder_dim, d.encoder_frames)),),
                  (_f32("ctc_logits", lambda d: (1, d.encoder_frames, d.ctc_classes), tolerance="ctc_head.ctc_logits",
                        step_axis=1),),
                  headline="ctc_logits", requires="ctc"),
    )
}
# The packages an app's greedy TDT loop drives: front end and encoder, decoder, single-step joint.
DECODE = tuple(name for name, c in COMPONENTS.items() if c.decode)
# The packages greedy CTC decoding drives: front end and encoder, then the CTC head on its output.
CTC_DECODE = ("mel_encoder", "ctc_head")


def decode_packages(decoding: str) -> tuple[str, ...]:
    """The packages a decoding ("tdt", "rnnt", "ctc") drives (an RNN-T model's offline decoding
    would need TDT's single-step joint)."""
    return CTC_DECODE if decoding == "ctc" else DECODE


# What each head a component may require is, in words.
HEADS = {"transducer": "prediction network and joint (an RNN-T or TDT decoder)",
         "durations": "TDT joint (duration logits beside the token logits)", "ctc": "CTC head"}


@dataclass(frozen=True)
class Family:
    """A kind of model: the heads that decode its encoding, so the components it exports, and the
    decodings its transcripts are made with (the first is the one an app uses by default)."""

    name: str
    summary: str
    heads: frozenset[str]
    decodings: tuple[str, ...]

    def components(self) -> list[Component]:
        return [c for c in COMPONENTS.values() if c.requires is None or c.requires in self.heads]

    @property
    def decode(self) -> tuple[str, ...]:
        """The packages this family's decodings drive, in table order: the TDT loop's (as far as
        the family has them), the CTC head's."""
        used = {name for decoding in self.decodings for name in decode_packages(decoding)}
        return tuple(c.name for c in self.components() if c.name in used)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("tdt", "TDT transducer: LSTM prediction network, joint with token and duration logits",
               frozenset({"transducer", "durations"}), ("tdt",)),
        Family("rnnt", "RNN-T transducer: LSTM prediction network, joint with token logits",
               frozenset({"transducer"}), ("rnnt",)),
        Family("ctc", "CTC: a linear head over the encoding, one token (or blank) per frame",
               frozenset({"ctc"}), ("ctc",)),
        Family("tdt_ctc", "hybrid: a TDT transducer and a CTC head on one encoder",
               frozenset({"transducer", "durations", "ctc"}), ("tdt", "ctc")),
        Family("rnnt_ctc", "hybrid: an RNN-T transducer and a CTC head on one encoder",
               frozenset({"transducer", "ctc"}), ("rnnt", "ctc")),
    )
}


def family_of(heads) -> Family:
    """The family whose heads these are."""
    found = next((f for f in FAMILIES.values() if f.heads == frozenset(heads)), None)
    if found is None:
        raise UserError(f"no model family has the heads {sorted(heads)}; the families: "
                        + "; ".join(f"{f.name} ({', '.join(sorted(f.heads))})" for f in FAMILIES.values()))
    return found


@dataclass(frozen=True)
class StreamingDims:
    """The sizes of the chunks of a cache-aware encoder (``exporters.streaming.streaming_dims``), as
    NeMo's cache-aware streaming cuts them: a first chunk of ``first_chunk_mel_frames`` mel frames,
    then chunks of the pre-encode look-back (the previous chunk's last mel frames) followed by
    ``shift_mel_frames`` new ones."""

    n_mels: int
    encoder_dim: int
    layers: int
    first_chunk_mel_frames: int  # the first chunk: new frames only (encoder_streaming_first's mel)
    first_chunk_encoder_frames: int  # encoder frames encoder_streaming_first returns
    chunk_mel_frames: int  # look-back + new frames: encoder_streaming's mel
    shift_mel_frames: int  # new mel frames per chunk after the first (10 ms each)
    pre_encode_cache_frames: int  # look-back frames
    drop_extra_pre_encoded: int  # encoder frames of the look-back, dropped after subsampling
    valid_out_frames: int  # encoder frames a chunk commits (the rest are look-ahead, recomputed)
    chunk_encoder_frames: int  # encoder frames encoder_streaming returns
    cache_channel_frames: int  # attention left context kept per layer
    cache_time_frames: int  # causal convolution context kept per layer
    att_context_size: tuple[int, ...]
    mel_hop_seconds: float

    @property
    def chunk_seconds(self) -> float:
        return self.shift_mel_frames * self.mel_hop_seconds

    def as_dict(self) -> dict:
        d = asdict(self)
        d["att_context_size"] = list(self.att_context_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StreamingDims:
        return cls(**{**d, "att_context_size": tuple(d["att_context_size"])})


def _cache_channel(s: StreamingDims) -> tuple[int, ...]:
    return (1, s.layers, s.cache_channel_frames, s.encoder_dim)


def _cache_time(s: StreamingDims) -> tuple[int, ...]:
    return (1, s.layers, s.encoder_dim, s.cache_time_frames)


def _streaming_encoder(name: str, summary: str, mel_frames: Callable[[StreamingDims], int],
                       encoder_frames: Callable[[StreamingDims], int]) -> Component:
    return Component(
        name, summary,
        (_f32("mel", lambda s: (1, s.n_mels, mel_frames(s))), _i32("mel_length", _one),
         _f32("cache_last_channel", _cache_channel), _f32("cache_last_time", _cache_time),
         _i32("cache_last_channel_len", _one)),
        (_f32("encoder", lambda s: (1, s.encoder_dim, encoder_frames(s)), tolerance=f"{name}.encoder", step_axis=2),
         _i32("encoder_length", _one, role=LENGTH, tolerance=f"{name}.encoder_length"),
         _f32("cache_last_channel_next", _cache_channel, tolerance=f"{name}.cache_last_channel"),
         _f32("cache_last_time_next", _cache_time, tolerance=f"{name}.cache_last_time"),
         _i32("cache_last_channel_len_next", _one, role=LENGTH, tolerance=f"{name}.cache_last_channel_len")),
        headline="encoder")


def _streaming_encoder_state() -> Component:
    """The later chunks' encoder with the caches kept as Core ML states, fp16 (the type Core ML's
    state examples and the public stateful conversions use; the cache length too, exact in fp16 up
    to 2048)."""
    name = "encoder_streaming_state"
    return Component(
        name, "a later log-mel chunk -> the chunk's encoding, the caches read and updated in place as "
              "iOS 18 states (seeded from encoder_streaming_first's returned caches)",
        (_f32("mel", lambda s: (1, s.n_mels, s.chunk_mel_frames)), _i32("mel_length", _one)),
        (_f32("encoder", lambda s: (1, s.encoder_dim, s.chunk_encoder_frames), tolerance=f"{name}.encoder",
              step_axis=2),
         _i32("encoder_length", _one, role=LENGTH, tolerance=f"{name}.encoder_length")),
        headline="encoder",
        state_ports=(Port("cache_last_channel", "float16", _cache_channel, tolerance=f"{name}.cache_last_channel"),
                     Port("cache_last_time", "float16", _cache_time, tolerance=f"{name}.cache_last_time"),
                     Port("cache_last_channel_len", "float16", _one, role=LENGTH,
                          tolerance=f"{name}.cache_last_channel_len")),
        minimum_deployment_target="iOS18")


# A cache-aware model's streaming components: their ports' shapes are functions of StreamingDims.
# Names and layouts (batch first, then layers) follow the public Core ML streaming releases, which
# also ship the first chunk's encoder apart from the later chunks'. The later chunks' encoder comes
# two ways: the caches as inputs and outputs (encoder_streaming), or as iOS 18 states
# (encoder_streaming_state, exported in its place with ``--cache-state``).
STREAMING_COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        _streaming_encoder("encoder_streaming_first", "a stream's first log-mel chunk and the (zero) caches -> its "
                           "encoding and the caches", lambda s: s.first_chunk_mel_frames,
                           lambda s: s.first_chunk_encoder_frames),
        _streaming_encoder("encoder_streaming", "a later log-mel chunk (look-back, then new frames) and the caches -> "
                           "the chunk's encoding and the next caches", lambda s: s.chunk_mel_frames,
                           lambda s: s.chunk_encoder_frames),
        _streaming_encoder_state(),
    )
}
LATER_CHUNKS = ("encoder_streaming", "encoder_streaming_state")  # either encodes the chunks after the first

# What each port holds, written into every package's own metadata (Xcode's model view shows it
# beside the port): one line an app developer can act on, the layout and units included.
PORT_DESCRIPTIONS: dict[str, str] = {
    "audio_signal": "mono 16 kHz float32 samples in [-1, 1], zero-padded to the window",
    "audio_length": "how many of audio_signal's samples are audio (the rest is padding)",
    "mel": "log-mel features (1, mel bins, frames), one frame per 10 ms",
    "mel_length": "how many of mel's frames are valid",
    "encoder": "encoder output (1, channels, frames), one frame per 80 ms",
    "encoder_length": "how many of encoder's frames are valid",
    "targets": "the last emitted token id (the blank, id vocab_size, at the start of an utterance)",
    "target_length": "1: one token per call",
    "h_in": "the decoder LSTM's hidden state (layers, 1, hidden); zeros at the start, then the h_out of the "
            "call that emitted the last token",
    "c_in": "the decoder LSTM's cell state (layers, 1, hidden); zeros at the start, then the c_out of the call "
            "that emitted the last token",
    "decoder": "decoder output (1, hidden, 1) for the last emitted token",
    "h_out": "the LSTM hidden state after this token: the next h_in once the token is emitted",
    "c_out": "the LSTM cell state after this token: the next c_in once the token is emitted",
    "logits": "joint logits per frame: vocab_size token classes, the blank (id vocab_size), then one per TDT "
              "duration (metadata.json's durations)",
    "token_id": "the most likely token per frame; vocab_size is the blank (nothing emitted); pieces in "
                "parakeet_vocab.json",
    "token_prob": "softmax probability of token_id",
    "duration": "index into metadata.json's durations: how many encoder frames to advance",
    "encoder_step": "one encoder frame (1, channels, 1), the frame the greedy loop is at",
    "decoder_step": "decoder output (1, hidden, 1) for the last emitted token",
    "encoder_output": "encoder output (1, channels, frames), one frame per 80 ms: the mel_encoder's encoder",
    "ctc_logits": "raw CTC logits (1, frames, vocab_size + 1), one row per 80 ms frame; the last class (id "
                  "vocab_size) is the blank; greedy decoding takes each frame's argmax, merges repeats and drops "
                  "blanks; pieces in parakeet_vocab.json",
    "cache_last_channel": "attention cache (1, layers, frames, channels): zeros for a stream's first chunk, then "
                          "the previous chunk's cache_last_channel_next",
    "cache_last_time": "convolution cache (1, layers, channels, frames): zeros for a stream's first chunk, then "
                       "the previous chunk's cache_last_time_next",
    "cache_last_channel_len": "how many frames of cache_last_channel hold audio (0 for the first chunk), then the "
                              "previous chunk's cache_last_channel_len_next",
    "cache_last_channel_next": "the attention cache after this chunk: the next chunk's cache_last_channel",
    "cache_last_time_next": "the convolution cache after this chunk: the next chunk's cache_last_time",
    "cache_last_channel_len_next": "the next chunk's cache_last_channel_len",
}


def streaming_components(cache_state: bool = False) -> list[str]:
    """The packages that stream: the first chunk's encoder and the later chunks' (caches as states
    with ``cache_state``, else as inputs and outputs)."""
    return ["encoder_streaming_first", LATER_CHUNKS[cache_state]]


def initial_caches(dims: StreamingDims) -> dict[str, np.ndarray]:
    """The caches a stream starts from: zeros, nothing held."""
    spec = {s.name: s for s in STREAMING_COMPONENTS["encoder_streaming"].inputs(dims)}
    return {name: np.zeros(spec[name].shape, spec[name].dtype)
            for name in ("cache_last_channel", "cache_last_time", "cache_last_channel_len")}


@dataclass(frozen=True)
class ExportOptions:
    """Everything besides the model and the component that changes an exported package."""

    compute_precision: str = "float16"
    compute_units: str = "ALL"
    minimum_deployment_target: str = "iOS17"
    max_audio_seconds: float = 15.0
    # the preprocessor takes 1 to max_audio_samples samples (a RangeDim), as the public release's
    # does; otherwise exactly the window
    flexible_audio: bool = False
    # a cache-aware model's chunk in milliseconds of new audio (one it was trained for); None: its default
    chunk_ms: int | None = None

    def __post_init__(self):
        for value, allowed, what in (
            (self.compute_precision, COMPUTE_PRECISIONS, "compute precision"),
            (self.compute_units, COMPUTE_UNITS, "compute units"),
            (self.minimum_deployment_target, DEPLOYMENT_TARGETS, "minimum deployment target"),
        ):
            if value not in allowed:
                raise UserError(f"unknown {what} {value!r}; expected one of: {', '.join(allowed)}")
        if not 0 < self.max_audio_seconds <= 600:
            raise UserError(f"max audio seconds must be in (0, 600], got {self.max_audio_seconds}")
        if self.chunk_ms is not None and (isinstance(self.chunk_ms, bool) or not isinstance(self.chunk_ms, int)
                                          or self.chunk_ms <= 0):
            raise UserError(f"chunk ms must be a positive whole number of milliseconds, got {self.chunk_ms!r}")

    def as_dict(self) -> dict:
        """The options; ``flexible_audio`` and ``chunk_ms`` only when set, so that the cache keys of
        exports made before the options existed still hold."""
        options = asdict(self)
        if not self.flexible_audio:
            del options["flexible_audio"]
        if self.chunk_ms is None:
            del options["chunk_ms"]
        return options


def get_components(names=None) -> list[Component]:
    """The components named, offline or streaming (the offline ones, in table order, when ``names``
    is empty)."""
    if not names:
        return list(COMPONENTS.values())
    table = COMPONENTS | STREAMING_COMPONENTS
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UserError(f"unknown component(s) {', '.join(unknown)}; expected any of: {', '.join(table)}")
    return [table[n] for n in dict.fromkeys(names)]


def zero_state(dims: ModelDims) -> np.ndarray:
    """The LSTM state (h or c) the prediction network starts from."""
    return np.zeros((dims.pred_layers, 1, dims.pred_hidden), np.float32)


def decoder_inputs(token: int, h: np.ndarray, c: np.ndarray) -> dict[str, np.ndarray]:
    """The decoder package's inputs for one step on ``token``."""
    return {"targets": np.array([[token]], np.int32), "target_length": np.ones(1, np.int32), "h_in": h, "c_in": c}


def _whole_mel(component: Component, dims) -> int:
    """Valid mel frames of a whole input: the window's, or a whole streaming chunk's."""
    if component.name in STREAMING_COMPONENTS:
        return next(s.shape[-1] for s in component.inputs(dims) if s.name == "mel")
    return dims.mel_length


def example_inputs(component: Component, dims: ModelDims, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the right names, shapes and dtypes with plausible values, for tracing and tests."""
    rng = np.random.default_rng(seed)
    values = {
        "audio_signal": lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32),
        "audio_length": lambda s: np.array([dims.max_audio_samples], np.int32),
        "mel_length": lambda s: np.array([_whole_mel(component, dims)], np.int32),
        "cache_last_channel_len": lambda s: np.zeros(s.shape, np.int32),
        "targets": lambda s: np.full(s.shape, dims.blank_id, np.int32),
        "target_length": lambda s: np.ones(s.shape, np.int32),
    }
    default = lambda s: rng.standard_normal(s.shape).astype(s.dtype)  # noqa: E731
    return {s.name: values.get(s.name, default)(s) for s in component.inputs(dims)}
