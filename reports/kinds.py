"""What the suites hand to the report plugin: one small dataclass per kind of result.

A result travels in a test's report as ``(kind, as_dict())`` (plain JSON-able values, so xdist
carries it from a worker to the controller) and comes back through ``from_dict``: the plugin
reads fields, never splits strings, and a kind it does not know is an error, not a silent drop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from runtimes.base import describe_backend


@dataclass(frozen=True)
class Sent:
    kind: ClassVar[str]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        return cls(**data)


@dataclass(frozen=True)
class Described(Sent):
    """An export (convert's description) and the context its checks ran in."""

    description: dict
    context: dict


@dataclass(frozen=True)
class PrecisionRun(Sent):
    """One precision's run of a suite's checks: its record."""

    precision: str
    record: dict


@dataclass(frozen=True)
class Measured(Sent):
    """What ran the packages a suite measured, and at which precision."""

    backend: str
    values_from: str
    compute_units: str
    compute_precision: str

    @classmethod
    def of(cls, backend: str, compute_units: str, compute_precision: str, **fields):
        """The kind measured on ``backend``, saying where its values come from."""
        return cls(backend=backend, values_from=describe_backend(backend), compute_units=compute_units,
                   compute_precision=compute_precision, **fields)


@dataclass(frozen=True)
class ParityContext(Described):
    """The session's export, the checks' context, and the precision and clip plotted."""

    kind: ClassVar[str] = "parity_context"
    precision: str
    primary_clip: str


@dataclass(frozen=True)
class ParityRun(PrecisionRun):
    """One clip's checks at one precision (``ClipParity.record``)."""

    kind: ClassVar[str] = "parity"


@dataclass(frozen=True)
class HeldOut(Sent):
    """The held-out set's evaluation block, for the validation block and the quantization summary."""

    kind: ClassVar[str] = "held_out"
    block: dict


@dataclass(frozen=True)
class QuantizationContext(Measured):
    """How the quantization suite measured its variants."""

    kind: ClassVar[str] = "quantization_context"
    model: str
    clip: str
    runs: int
    warmup: int
    packages: dict | None = None  # a package set's: what the variants were built from

    def as_dict(self) -> dict:
        data = super().as_dict()
        return data if self.packages is not None else {k: v for k, v in data.items() if k != "packages"}


@dataclass(frozen=True)
class VariantReport(Sent):
    """One variant's summary entry and packages (``VariantResult.record``)."""

    kind: ClassVar[str] = "quantization"
    name: str
    entry: dict
    packages: dict


@dataclass(frozen=True)
class EvaluationContext(Measured):
    """How a data set's evaluation was measured (``evaluate`` and ``pytest --manifest`` alike):
    its set, how the audio was cut (``windows``, and ``compared`` strategies) or streamed
    (``streaming``), and the gate's settings."""

    kind: ClassVar[str] = "evaluation_context"
    description: dict
    set: str
    manifest: str | None
    normalizer: str
    max_wer_difference_points: float
    versions: dict
    windows: dict | None = None
    compared: dict | None = None
    streaming: dict | None = None
    audio: list = field(default_factory=list)  # recordings given one by one, without a manifest
    decoding: str = "tdt"  # the transcripts' decoding: greedy "tdt" (the transducer's) or "ctc"

    def block_context(self) -> dict:
        """The fields the evaluation block records as they are (how the audio was cut or streamed,
        only the way it was)."""
        return {k: v for k, v in self.as_dict().items()
                if k not in ("description", "normalizer", "max_wer_difference_points")
                and not (k in ("windows", "compared", "streaming") and v is None)}


@dataclass(frozen=True)
class UtteranceRecord(Sent):
    """One utterance's record (``validation.evaluation.evaluate_utterance``)."""

    kind: ClassVar[str] = "evaluation"
    record: dict


@dataclass(frozen=True)
class BadLine(Sent):
    """A manifest line or recording that could not be used: where, and why."""

    kind: ClassVar[str] = "evaluation_bad"
    where: str
    reason: str


@dataclass(frozen=True)
class LongAudio(Sent):
    """The stress sets' evaluation blocks, every strategy in each."""

    kind: ClassVar[str] = "long_audio"
    description: dict
    sets: dict


@dataclass(frozen=True)
class StreamingContext(Described):
    """The streaming model's description and the streaming checks' context."""

    kind: ClassVar[str] = "streaming_context"


@dataclass(frozen=True)
class StreamingRun(PrecisionRun):
    """One precision's chunk-by-chunk parity (``StreamParity.record``)."""

    kind: ClassVar[str] = "streaming"


@dataclass(frozen=True)
class NeuralEnginePlacement(Sent):
    """The session's packages placed on a chip's Neural Engine (``validation.neural_engine``),
    every op of each (``Placement.as_dict``)."""

    kind: ClassVar[str] = "neural_engine"
    description: dict
    placements: dict


KINDS: dict[str, type[Sent]] = {cls.kind: cls for cls in (
    ParityContext, ParityRun, HeldOut, QuantizationContext, VariantReport, EvaluationContext, UtteranceRecord,
    BadLine, LongAudio, StreamingContext, StreamingRun, NeuralEnginePlacement)}


def received(kind: str, data: dict) -> Sent:
    """A result as it arrived in a test report, typed again."""
    if kind not in KINDS:
        raise ValueError(f"unknown report kind {kind!r}; expected one of: {', '.join(KINDS)}")
    return KINDS[kind].from_dict(data)
