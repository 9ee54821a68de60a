"""The component I/O contract: one table saying what each exported package takes and returns.

Names and layouts follow the public Core ML release of Parakeet-TDT v3 so exported packages
drop into the Swift apps that load it. Every size comes from the loaded model (``ModelDims``),
never from constants for the 0.6B model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from exporters import wrappers

MAX_AUDIO_SECONDS = 15.0


class ExportError(Exception):
    """A problem the user can act on: the message says what was wrong and what is expected."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32" or "int32"

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ModelDims:
    """The sizes of one loaded model on the fixed export window."""

    sample_rate: int
    max_audio_seconds: float
    max_audio_samples: int
    n_mels: int
    mel_frames: int
    mel_length: int  # valid mel frames of a full window (the STFT's centre padding adds one)
    encoder_dim: int
    encoder_frames: int
    pred_hidden: int
    pred_layers: int
    vocab_size: int
    durations: tuple[int, ...] = field(default_factory=tuple)

    @property
    def blank_id(self) -> int:
        return self.vocab_size

    @property
    def joint_classes(self) -> int:
        return self.vocab_size + 1 + len(self.durations)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["durations"] = list(self.durations)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelDims":
        return cls(**{**d, "durations": tuple(d["durations"])})

    @classmethod
    def from_model(cls, model, max_audio_seconds: float = MAX_AUDIO_SECONDS) -> "ModelDims":
        """Measure the window's sizes by running the model's own front end on silence."""
        import torch

        sample_rate = int(model.cfg.sample_rate)
        samples = int(round(sample_rate * max_audio_seconds))
        with torch.no_grad():
            mel, mel_length = model.preprocessor(
                input_signal=torch.zeros(1, samples), length=torch.tensor([samples])
            )
            subsampled, _ = model.encoder.pre_encode(x=mel.transpose(1, 2), lengths=mel_length)
        durations = tuple(int(d) for d in (model.cfg.decoding.get("durations") or ()))
        if len(durations) != model.joint.num_extra_outputs:
            raise ExportError(
                f"the joint has {model.joint.num_extra_outputs} extra outputs but the decoding config lists "
                f"durations {list(durations)}; expected one duration per extra output"
            )
        return cls(
            sample_rate=sample_rate,
            max_audio_seconds=max_audio_seconds,
            max_audio_samples=samples,
            n_mels=mel.shape[1],
            mel_frames=mel.shape[2],
            mel_length=int(mel_length[0]),
            encoder_dim=model.encoder.d_model,
            encoder_frames=subsampled.shape[1],
            pred_hidden=model.decoder.pred_hidden,
            pred_layers=model.decoder.pred_rnn_layers,
            vocab_size=model.decoder.vocab_size,
            durations=durations,
        )


def _f32(name, *shape):
    return TensorSpec(name, tuple(shape), "float32")


def _i32(name, *shape):
    return TensorSpec(name, tuple(shape), "int32")


def _audio(d: ModelDims):
    return (_f32("audio_signal", 1, d.max_audio_samples), _i32("audio_length", 1))


def _encoded(d: ModelDims):
    return (_f32("encoder", 1, d.encoder_dim, d.encoder_frames), _i32("encoder_length", 1))


def _decision(t: int):
    return (_i32("token_id", 1, t, 1), _f32("token_prob", 1, t, 1), _i32("duration", 1, t, 1))


@dataclass(frozen=True)
class Component:
    name: str
    summary: str
    wrapper: Callable
    inputs: Callable[[ModelDims], tuple[TensorSpec, ...]]
    outputs: Callable[[ModelDims], tuple[TensorSpec, ...]]
    # The STFT's power spectrum and the per-feature sums overflow fp16 (max 65504): ops under
    # these wrapper attributes (TorchScript module scopes) always compute in fp32.
    fp32_scopes: tuple[str, ...] = ()
    requires_tdt: bool = False


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component(
            "preprocessor",
            "waveform -> normalised log-mel",
            wrappers.Preprocessor,
            _audio,
            lambda d: (_f32("mel", 1, d.n_mels, d.mel_frames), _i32("mel_length", 1)),
            fp32_scopes=("*",),
        ),
        Component(
            "encoder",
            "log-mel -> FastConformer encoding",
            wrappers.Encoder,
            lambda d: (_f32("mel", 1, d.n_mels, d.mel_frames), _i32("mel_length", 1)),
            _encoded,
        ),
        Component(
            "mel_encoder",
            "waveform -> encoding (preprocessor and encoder fused)",
            wrappers.MelEncoder,
            _audio,
            _encoded,
            fp32_scopes=("preprocessor",),
        ),
        Component(
            "decoder",
            "one LSTM prediction-network step with explicit state",
            wrappers.Decoder,
            lambda d: (
                _i32("targets", 1, 1),
                _i32("target_length", 1),
                _f32("h_in", d.pred_layers, 1, d.pred_hidden),
                _f32("c_in", d.pred_layers, 1, d.pred_hidden),
            ),
            lambda d: (
                _f32("decoder", 1, d.pred_hidden, 1),
                _f32("h_out", d.pred_layers, 1, d.pred_hidden),
                _f32("c_out", d.pred_layers, 1, d.pred_hidden),
            ),
        ),
        Component(
            "joint",
            "encoding x decoder step -> raw token and duration logits",
            wrappers.Joint,
            lambda d: (_f32("encoder", 1, d.encoder_dim, d.encoder_frames), _f32("decoder", 1, d.pred_hidden, 1)),
            lambda d: (_f32("logits", 1, d.encoder_frames, 1, d.joint_classes),),
        ),
        Component(
            "joint_decision",
            "joint + greedy token/duration decision for every frame",
            wrappers.JointDecision,
            lambda d: (_f32("encoder", 1, d.encoder_dim, d.encoder_frames), _f32("decoder", 1, d.pred_hidden, 1)),
            lambda d: _decision(d.encoder_frames),
            requires_tdt=True,
        ),
        Component(
            "joint_decision_single_step",
            "joint + decision for one frame and one decoder step",
            wrappers.JointDecisionSingleStep,
            lambda d: (_f32("encoder_step", 1, d.encoder_dim, 1), _f32("decoder_step", 1, d.pred_hidden, 1)),
            lambda d: _decision(1),
            requires_tdt=True,
        ),
    )
}


def get_components(names=None) -> list[Component]:
    """The components named (all of them, in table order, when ``names`` is empty)."""
    if not names:
        return list(COMPONENTS.values())
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise ExportError(f"unknown component(s) {', '.join(unknown)}; expected any of: {', '.join(COMPONENTS)}")
    return [COMPONENTS[n] for n in dict.fromkeys(names)]


def example_inputs(component: Component, dims: ModelDims, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the right names, shapes and dtypes with plausible values, for tracing and tests."""
    rng = np.random.default_rng(seed)
    values = {
        "audio_signal": lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32),
        "audio_length": lambda s: np.array([dims.max_audio_samples], np.int32),
        "mel_length": lambda s: np.array([dims.mel_length], np.int32),
        "targets": lambda s: np.full(s.shape, dims.blank_id, np.int32),
        "target_length": lambda s: np.ones(s.shape, np.int32),
    }
    default = lambda s: rng.standard_normal(s.shape).astype(s.dtype)  # noqa: E731
    return {s.name: values.get(s.name, default)(s) for s in component.inputs(dims)}
