"""The tolerance table: how far each exported output may stray from its reference.

Defaults are those the public reference export uses on the released weights, except where
this project measures far tighter agreement (each such entry says what was measured). Users
override any entry from ``pyproject.toml``::

    [tool.parakeet-coreml.parity]
    psnr_floor_db = 35
    [tool.parakeet-coreml.parity.tolerances]
    "encoder.encoder" = { atol = 0.05, rtol = 0.005 }

and from the command line (``--tolerance encoder.encoder:atol=0.05,rtol=0.005``,
``--psnr-floor 30``); the command line wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from exporters.components import COMPONENTS, LENGTH, STREAMING_COMPONENTS, Component
from infra.errors import UserError
from infra.settings import PROJECT_NAME, tool_settings
from infra.settings import table as settings_table
from validation.metrics import Tolerance

EXACT = Tolerance(exact=True)
PSNR_FLOOR_DB = 35.0
# The range check's gate (validation.ranges): ops of an fp16 package whose fp32 shadow passes fp16's
# largest value (65,504) on the parity inputs; any is a failure, whatever the outputs' tolerances say
MAX_FP16_OVERFLOW_OPS = 0
# The one value check beyond the contract's outputs: the exported joint on every step of the
# decoder rollout, against the Torch joint on the Torch decoder's steps.
DECODER_ROLLOUT_LOGITS = "decoder.logits"

# Keys are those the contract declares (``exporters.components``: each output's ``tolerance``
# and ``fused_tolerance``) plus ``DECODER_ROLLOUT_LOGITS``; ``check_coverage`` holds them equal.
# "component.output" against the Torch reference; "fused.*" compares a fused package with the
# exported parts it replaces (joint_decision against the joint's logits decided on the host).
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    # The reference allows 1.0 / 1e-2 on the mel, but the preprocessor always exports fp32:
    # measured max_abs on tiny 1.6e-3 (espeak-ng speech), 1.3e-3 (noise), 4.2e-3 (DC), the worst.
    "preprocessor.mel": Tolerance(1e-2, 1e-3),
    "preprocessor.mel_length": EXACT,
    "encoder.encoder": Tolerance(5e-2, 5e-3),
    "encoder.encoder_length": EXACT,
    "mel_encoder.encoder": Tolerance(5e-2, 5e-3),
    "mel_encoder.encoder_length": EXACT,
    "decoder.decoder": Tolerance(0.1, 1e-2),
    "decoder.h_out": Tolerance(0.25, 1e-2),
    "decoder.c_out": Tolerance(1.5, 5e-2),
    "decoder.logits": Tolerance(0.1, 1e-2),  # the joint on each rolled-out decoder step
    "joint.logits": Tolerance(0.1, 1e-2),
    # Raw logits as the joint's are (one projection of the encoding here, the joint's two and a
    # ReLU there): the joint's tolerance.
    "ctc_head.ctc_logits": Tolerance(0.1, 1e-2),
    "joint_decision.token_prob": Tolerance(0.1, 1e-2),
    "joint_decision_single_step.token_prob": Tolerance(0.1, 1e-2),
    "fused.mel_encoder.encoder": Tolerance(5e-2, 5e-3),
    "fused.token_prob": Tolerance(1e-3, 0.0),
    # The streaming encoders' chunk and caches: the offline encoder's tolerance, per chunk.
    **{f"{name}.{output}": EXACT if output.endswith("length") or output.endswith("_len") else Tolerance(5e-2, 5e-3)
       for name in ("encoder_streaming_first", "encoder_streaming", "encoder_streaming_state")
       for output in ("encoder", "encoder_length", "cache_last_channel", "cache_last_time", "cache_last_channel_len")},
}


def declared_keys(components: dict[str, Component] = COMPONENTS | STREAMING_COMPONENTS) -> dict[str, bool]:
    """Every tolerance key the checks look up, with whether it must be exact (lengths)."""
    keys = {DECODER_ROLLOUT_LOGITS: False}
    for component in components.values():
        for port in component.output_ports + component.state_ports:
            if port.tolerance:
                keys[port.tolerance] = port.role == LENGTH
            if port.fused_tolerance:
                keys[port.fused_tolerance] = False
    return keys


def check_coverage(tolerances: dict[str, Tolerance],
                   components: dict[str, Component] = COMPONENTS | STREAMING_COMPONENTS) -> None:
    """Every key the contract declares has a tolerance, exact for lengths and only for them, and
    the table holds no key nothing looks up: a check never falls back to a default."""
    declared = declared_keys(components)
    problems = [f"no tolerance for {key!r}" for key in declared if key not in tolerances]
    problems += [f"{key!r} is declared by no output of the contract" for key in tolerances if key not in declared]
    problems += [f"{key!r} must {'' if exact else 'not '}be exact ({'a length' if exact else 'a value'})"
                 for key, exact in declared.items() if key in tolerances and tolerances[key].exact != exact]
    if problems:
        raise ValueError("the tolerance table does not fit the component contract: " + "; ".join(problems))


check_coverage(DEFAULT_TOLERANCES)


@dataclass(frozen=True)
class ToleranceTable:
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    psnr_floor_db: float = PSNR_FLOOR_DB
    sources: tuple[str, ...] = ("defaults",)

    def __getitem__(self, key: str) -> Tolerance:
        """The tolerance of ``key``, carrying the table's PSNR floor unless it is exact."""
        tolerance = self.tolerances[key]
        return tolerance if tolerance.exact else replace(tolerance, psnr_floor_db=self.psnr_floor_db)

    def with_overrides(self, overrides: dict[str, dict], psnr_floor_db: float | None, source: str) -> ToleranceTable:
        table = dict(self.tolerances)
        for key, values in overrides.items():
            table[key] = _parse_entry(key, values, table.get(key), source)
        floor = self.psnr_floor_db if psnr_floor_db is None else _finite(psnr_floor_db, f"{source}: psnr_floor_db")
        return replace(self, tolerances=table, psnr_floor_db=floor, sources=self.sources + (source,))

    def as_dict(self) -> dict:
        return {
            "psnr_floor_db": self.psnr_floor_db,
            "sources": list(self.sources),
            **{key: tol.as_dict() for key, tol in self.tolerances.items()},
        }


def _finite(value, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} = {value!r} is not a number") from None
    if not math.isfinite(number):
        raise UserError(f"{what} = {value!r}: expected a finite number")
    return number


def _parse_entry(key: str, values, current: Tolerance | None, source: str) -> Tolerance:
    if current is None:
        raise UserError(f"{source}: unknown tolerance {key!r}; expected one of: {', '.join(DEFAULT_TOLERANCES)}")
    if current.exact:
        raise UserError(f"{source}: {key!r} is compared exactly (ids, durations, lengths) and takes no tolerance")
    if not isinstance(values, dict) or not values or set(values) - {"atol", "rtol"}:
        raise UserError(f"{source}: tolerance {key!r} must set atol and/or rtol, e.g. {{atol = 0.05, rtol = 0.005}}; "
                          f"got {values!r}")
    try:
        atol = float(values.get("atol", current.atol))
        rtol = float(values.get("rtol", current.rtol))
    except (TypeError, ValueError):
        raise UserError(f"{source}: tolerance {key!r}: atol and rtol must be numbers; got {values!r}") from None
    if not (math.isfinite(atol) and math.isfinite(rtol) and atol >= 0 and rtol >= 0):
        raise UserError(f"{source}: tolerance {key!r}: atol and rtol must be >= 0 and finite; got {values!r}")
    return Tolerance(atol, rtol)


def parse_cli_tolerance(text: str) -> tuple[str, dict]:
    """``encoder.encoder:atol=0.05,rtol=0.005`` -> ("encoder.encoder", {"atol": "0.05", "rtol": "0.005"})."""
    key, sep, rest = text.partition(":")
    pairs = [p.partition("=") for p in rest.split(",") if p]
    if not sep or not key or not pairs or any(not eq or not name for name, eq, _ in pairs):
        raise UserError(f"--tolerance {text!r}: expected KEY:atol=A,rtol=R "
                          "(e.g. encoder.encoder:atol=0.05,rtol=0.005)")
    return key, {name.strip(): value.strip() for name, _, value in pairs}


def load_tolerances(pyproject: Path | None = None, cli: list[str] = (),
                    psnr_floor_db: float | None = None) -> ToleranceTable:
    """Defaults, then ``pyproject.toml``'s ``[tool.parakeet-coreml.parity]``, then the command line."""
    table = ToleranceTable()
    if pyproject is not None and pyproject.is_file():
        section = settings_table(tool_settings(pyproject), ("parity",), f"{pyproject} [tool.{PROJECT_NAME}]")
        if section:
            tolerances = settings_table(section, ("tolerances",), f"{pyproject} [tool.{PROJECT_NAME}.parity]")
            table = table.with_overrides(tolerances, section.get("psnr_floor_db"), str(pyproject))
    overrides = dict(parse_cli_tolerance(text) for text in cli)
    if overrides or psnr_floor_db is not None:
        table = table.with_overrides(overrides, psnr_floor_db, "command line")
    return table


# Data-set evaluation (validation.evaluation): how far an export's WER may stray from NeMo's on
# the same windows, in WER points.
MAX_WER_DIFFERENCE_POINTS = 0.5
# A word a compressed export changes against the uncompressed one (a flip) while deciding it with
# at least this probability is flagged even where the WER is unchanged: a confident wrong word is
# what a user hears, and an average hides it (one shipped 6-bit encoder wrote a non-word at 0.885).
CONFIDENT_FLIP_PROBABILITY = 0.8

# Quantization gates: variant -> metric -> the minimum it must reach. "quality" holds for every
# component of the variant, "joint_decision.acc" for the decision package's token-id match.
# Per-tensor symmetric int8 and 4-bit palettization are measured, not gated: they are known to
# hurt the encoder.
QUANTIZATION_GATES: dict[str, dict[str, float]] = {
    "int8_per_channel": {"quality": 0.95, "joint_decision.acc": 0.99},
    "palettize_8bit": {"quality": 0.95},
}
GATE_METRICS = ("quality", "joint_decision.acc", "joint_decision.duration_match")
# Gates that are a most, not a least: the words a variant changes against the uncompressed export
# on the set it is evaluated on (``quantize --held-out``), all of them, or those decided with at
# least CONFIDENT_FLIP_PROBABILITY.
GATE_MAXIMA = ("flips", "confident_flips")
# A most in WER points: how far a variant's WER on that set may rise above the uncompressed export's.
WER_POINTS = "wer_points"
# Gates measured on the held-out set, for a variant in --held-out (or the searched recipe) only.
HELD_OUT_GATES = (*GATE_MAXIMA, WER_POINTS)
# What the recipe search (quantize --search) holds its recipe to unless told otherwise: no word
# changed on the held-out set; on a model too unsure for a held-out set, the headline quality of
# every component, the fixed variants' gate.
SEARCH_GATES = {"flips": 0}
SEARCH_GATES_WITHOUT_HELD_OUT = {"quality": 0.95}
# The variant whose held-out WER a sweep gates by default (within MAX_WER_DIFFERENCE_POINTS of NeMo's).
DEFAULT_HELD_OUT_VARIANT = "int8_per_channel"


def load_gates(pyproject: Path | None = None, cli: list[str] = (), variants=None) -> dict[str, dict[str, float]]:
    """The gate table: defaults, then ``[tool.parakeet-coreml.quantization.gates.VARIANT]`` in
    ``pyproject.toml``, then ``--gate VARIANT:METRIC=VALUE`` (the command line wins). Given the
    ``variants`` there are, a gate of any other is an error: a typo must not drop a gate."""
    gates = {variant: dict(metrics) for variant, metrics in QUANTIZATION_GATES.items()}

    def put(variant, metric, value, where):
        if metric not in GATE_METRICS + HELD_OUT_GATES:
            raise UserError(f"{where}: unknown gate metric {metric!r}; expected one of: "
                            f"{', '.join(GATE_METRICS + HELD_OUT_GATES)}")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: {variant}.{metric} = {value!r} is not a number") from None
        if metric in GATE_MAXIMA:
            if value < 0 or value != int(value):
                raise UserError(f"{where}: {variant}.{metric} = {value:g}: expected a count of words, 0 or more")
            value = int(value)
        elif metric == WER_POINTS:
            if not 0.0 <= value <= 100.0:
                raise UserError(f"{where}: {variant}.{metric} = {value:g}: expected WER points, 0 to 100")
        elif not 0.0 <= value <= 1.0:
            raise UserError(f"{where}: {variant}.{metric} = {value} is outside [0, 1]")
        gates.setdefault(variant, {})[metric] = value

    if pyproject is not None and pyproject.is_file():
        declared = settings_table(tool_settings(pyproject), ("quantization", "gates"),
                                  f"{pyproject} [tool.{PROJECT_NAME}]")
        for variant in declared:
            metrics = settings_table(declared, (variant,), f"{pyproject} [tool.{PROJECT_NAME}.quantization.gates]")
            for metric, value in metrics.items():
                put(variant, metric, value, str(pyproject))
    for text in cli:
        variant, sep, rest = text.partition(":")
        metric, eq, value = rest.partition("=")
        if not (sep and eq and variant and metric):
            raise UserError(f"--gate {text!r}: expected VARIANT:METRIC=VALUE (e.g. int8_per_channel:quality=0.95)")
        put(variant, metric, value, "--gate")
    unknown = sorted(set(gates) - set(variants)) if variants is not None else []
    if unknown:
        raise UserError(f"gate(s) for unknown variant(s) {', '.join(unknown)}; the variants are: "
                          f"{', '.join(variants)}")
    return gates


def gate_failures(variant: str, result: dict, gates: dict[str, dict[str, float]]) -> list[str]:
    """What ``result`` (a variant's summary entry) misses of its gates, one line each; a held-out
    evaluation's WER gate (``held_out.failures``) counts among them."""
    held_out = result.get("held_out") or {}
    failures = [f"{variant}: held-out set: {f}" for f in held_out.get("failures", [])]
    for metric, limit in gates.get(variant, {}).items():
        if metric in GATE_MAXIMA:
            failures += _flip_failures(variant, metric, limit, held_out)
            continue
        if metric == WER_POINTS:
            failures += _wer_failures(variant, limit, held_out)
            continue
        minimum = limit
        if metric == "quality":
            found = {name: c["quality"] for name, c in result["components"].items()}
        else:
            component, key = metric.split(".")
            found = {component: result["components"][component][key]} if component in result["components"] else {}
        failures += [f"{variant}: {name} {metric.split('.')[-1]} {value:.4f} < {minimum}"
                     for name, value in found.items() if value < minimum]
    return failures


def _flip_failures(variant: str, metric: str, most: int, held_out: dict) -> list[str]:
    """A flip gate's failure: more words changed than ``most``, or none counted."""
    flips = held_out.get("flips")
    if flips is None:
        why = held_out.get("skipped") or "it was not evaluated on a set (--held-out)"
        return [f"{variant}: {metric} not measured: {why}"]
    found = flips["words" if metric == "flips" else "confident"]
    what = "word flip(s)" if metric == "flips" else f"word flip(s) at confidence >= {flips['confident_at_least']}"
    return [f"{variant}: {found} {what} against {flips['against']} > {most}"] if found > most else []


def _wer_failures(variant: str, points: float, held_out: dict) -> list[str]:
    """A WER gate's failure: the variant's WER on the set more than ``points`` above the
    uncompressed export's, or not measured."""
    if held_out.get("wer_uncompressed") is None:
        why = held_out.get("skipped") or "it was not evaluated on a set (--held-out)"
        return [f"{variant}: {WER_POINTS} not measured: {why}"]
    rise = 100 * (held_out["wer"] - held_out["wer_uncompressed"])
    return [f"{variant}: WER {100 * held_out['wer']:.2f}% is {rise:.2f} points above the uncompressed export's "
            f"{100 * held_out['wer_uncompressed']:.2f}% > {points:g}"] if rise > points + 1e-9 else []
