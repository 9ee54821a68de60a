"""Will an fp16 package stay in fp16's range? Each op run beside its fp32 shadow
(``MILModel.shadow``) on the parity inputs, and per op: the largest magnitude its fp32 values
reach against fp16's 65,504, the exponentials that overflow unless the maximum is subtracted
first (as the Neural Engine computes them: ``validation.neural_engine``'s risks), integers above
2,048 carried by an fp16 tensor, and how far its fp16 result strays from the shadow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from runtimes.mil.model import NARROW_INTEGERS, MILModel
from validation.neural_engine import FP16_EXACT_INTEGERS, FP16_MAX
from validation.tolerances import MAX_FP16_OVERFLOW_OPS

# exp(x) of an fp16 x overflows past log(65504): an exponential that does not subtract the maximum
EXP_OVERFLOW = math.log(FP16_MAX)
# where the Neural Engine takes exp of the input as it is (its softmax subtracts the maximum: coremltools issue 2728)
UNSTABILISED = {"reduce_log_sum_exp", "softplus"}


@dataclass
class OpRange:
    """One op's fp32 shadow, over every input it was run on."""

    op_type: str
    max_abs: float = 0.0  # the largest finite magnitude of its shadow (fp32) values, for an fp16 op
    input_max: float = -math.inf  # the largest value the op read (an exponential's argument)
    exp_terms: int = 1  # how many exponentials an unstabilised reduction sums
    integer_max: float = 0.0  # integers cast to fp16: their largest magnitude
    infinite_in_fp16: int = 0  # elements infinite in fp16 and finite in the shadow (a log of an underflow)
    narrowed: tuple[str, float] | None = None  # (narrow type, largest magnitude) of an integer cast past its range
    deviation: float = 0.0  # max |fp16 - fp32| / max |fp32|

    def risks(self) -> list[str]:
        found = []
        if self.max_abs > FP16_MAX:
            found.append(f"overflow: fp32 values reach {self.max_abs:.4g} > {FP16_MAX:g}, fp16's largest")
        if self.op_type in UNSTABILISED and self.input_max > EXP_OVERFLOW - math.log(self.exp_terms):
            found.append(f"unstabilised exponential: its input reaches {self.input_max:.4g}, past "
                         f"log({FP16_MAX:g} / {self.exp_terms}) = {EXP_OVERFLOW - math.log(self.exp_terms):.3g} "
                         "where exp without the maximum subtracted overflows (as on the Neural Engine)")
        if self.infinite_in_fp16:
            found.append(f"infinite in fp16: {self.infinite_in_fp16} value(s) infinite where the fp32 shadow is "
                         "within fp16's range (a log of probabilities that underflowed to 0, as log_softmax gives "
                         "on the Neural Engine)")
        if self.narrowed is not None:
            kind, largest = self.narrowed
            found.append(f"narrowed integer: values up to {largest:,.0f} cast to {kind} (at most "
                         f"{np.iinfo(kind).max:,}): Core ML is reported to return them intact (apple/coremltools "
                         "issue 2222), others saw them wrap: device-dependent")
        if self.integer_max > FP16_EXACT_INTEGERS:
            found.append(f"integers through fp16: whole numbers up to {self.integer_max:.0f} in an fp16 tensor "
                         f"(exact only up to {FP16_EXACT_INTEGERS:,})")
        return found


@dataclass
class RangeReport:
    """One package's ranges: per op (by its output name), over every input run."""

    ops: dict[str, OpRange] = field(default_factory=dict)
    inputs: int = 0

    def observe(self, op_type: str, name: str, declared: np.ndarray, shadow: np.ndarray, reads: list[str],
                dtype: np.dtype | None, maxima: dict[str, float], sizes: dict[str, int], integers: set[str]) -> None:
        entry = self.ops.setdefault(name, OpRange(op_type))
        if not np.issubdtype(shadow.dtype, np.floating) or shadow.size == 0:
            if np.issubdtype(shadow.dtype, np.integer) and shadow.size:
                maxima[name], sizes[name] = float(np.abs(shadow).max()), shadow.size
                integers.add(name)
                if op_type == "cast" and dtype in NARROW_INTEGERS and not (np.iinfo(dtype).min <= shadow.min()
                                                     and shadow.max() <= np.iinfo(dtype).max):
                    largest = max(maxima[name], entry.narrowed[1] if entry.narrowed else 0.0)
                    entry.narrowed = (np.dtype(dtype).name, largest)
            return
        finite = shadow[np.isfinite(shadow)]
        largest = float(np.abs(finite).max()) if finite.size else 0.0
        maxima[name] = float(finite.max()) if finite.size else -math.inf
        sizes[name] = shadow.size
        if dtype != np.float16:  # an fp32 op of a mixed program (the front end): it has fp32's range
            return
        entry.max_abs = max(entry.max_abs, largest)
        if op_type in UNSTABILISED:
            entry.input_max = max([entry.input_max] + [maxima[r] for r in reads if r in maxima])
            read = max((sizes[r] for r in reads if r in sizes), default=shadow.size)
            entry.exp_terms = max(entry.exp_terms, read // max(shadow.size, 1))  # the terms each result sums
        # infinite in fp16 though the shadow is within fp16's range: not an overflow, a lost small value
        entry.infinite_in_fp16 += int(np.count_nonzero(np.isinf(declared) & (np.abs(shadow) <= FP16_MAX)))
        if dtype == np.float16 and op_type == "cast" and any(r in integers for r in reads):
            entry.integer_max = max(entry.integer_max, largest)  # integers (ids, lengths) carried in fp16
        if largest > 0:
            difference = np.abs(declared.astype(np.float64) - shadow.astype(np.float64))
            finite_difference = difference[np.isfinite(difference)]
            if finite_difference.size:
                entry.deviation = max(entry.deviation, float(finite_difference.max()) / largest)

    def run(self, model: MILModel, inputs: Mapping) -> None:
        maxima: dict[str, float] = {}  # each variable's largest shadow value, for the ops that read it
        sizes: dict[str, int] = {}
        integers: set[str] = set()  # the variables of integer type
        model.shadow(inputs, lambda *observed: self.observe(*observed, maxima, sizes, integers))
        self.inputs += 1

    def flagged(self) -> dict[str, list[str]]:
        return {name: risks for name, entry in self.ops.items() if (risks := entry.risks())}

    def overflows(self) -> list[str]:
        return [name for name, entry in self.ops.items() if entry.max_abs > FP16_MAX]

    def block(self, origins: dict[str, str] | None = None, worst: int = 10) -> dict:
        """What the report records: the flagged ops with their source module, and the ops whose
        fp16 strays most from the shadow."""
        origins = origins or {}
        ranked = sorted(self.ops.items(), key=lambda item: item[1].deviation, reverse=True)[:worst]
        return {
            "inputs": self.inputs, "ops": len(self.ops),
            "largest": max((e.max_abs for e in self.ops.values()), default=0.0),
            "max_abs_per_op": [e.max_abs for e in self.ops.values()],  # in program order
            "flagged_at": [i for i, e in enumerate(self.ops.values()) if e.risks()],
            "overflows": self.overflows(),
            "flagged": [{"op": name, "op_type": self.ops[name].op_type, "module": origins.get(name),
                         "risks": risks} for name, risks in self.flagged().items()],
            "most_deviating": [{"op": name, "op_type": e.op_type, "module": origins.get(name),
                                "deviation": e.deviation, "max_abs": e.max_abs} for name, e in ranked],
        }


def package_ranges(package, inputs: Iterable[dict]) -> RangeReport:
    """``package`` (a path, or the ``MILModel`` already loaded for it) run beside its fp32 shadow
    on each of ``inputs``."""
    report, model = RangeReport(), package if isinstance(package, MILModel) else MILModel(package)
    for feed in inputs:
        report.run(model, feed)
    return report


def ranges_block(reports: dict[str, RangeReport], origins=lambda name: None, skipped: dict[str, str] | None = None
                 ) -> dict:
    """The ``fp16_range`` block: each fp16 package's ranges on the parity inputs, and the gate
    (at most ``MAX_FP16_OVERFLOW_OPS`` ops overflowing fp16)."""
    components = {name: report.block(origins(name)) for name, report in reports.items()}
    failures = [f"{name}: {len(c['overflows'])} op(s) overflow fp16 on the parity inputs (at most "
                f"{MAX_FP16_OVERFLOW_OPS}), first {c['overflows'][0]} "
                f"({next(f['module'] for f in c['flagged'] if f['op'] == c['overflows'][0]) or 'module unknown'})"
                for name, c in components.items() if len(c["overflows"]) > MAX_FP16_OVERFLOW_OPS]
    return {"status": "failed" if failures else "passed", "failures": failures,
            "max_overflow_ops": MAX_FP16_OVERFLOW_OPS, "components": components, "skipped": skipped or {}}


def describe_ranges(block: dict) -> list[str]:
    """One line per package: its largest value against fp16's, and what was flagged."""
    lines = []
    for name, c in block["components"].items():
        flagged = {risk.split(":")[0] for f in c["flagged"] for risk in f["risks"]}
        lines.append(f"{name}: largest {c['largest']:.4g} of {FP16_MAX:g} on {c['inputs']} input(s)"
                     + (f"; {len(c['flagged'])} op(s) flagged ({', '.join(sorted(flagged))})" if flagged else
                        "; nothing flagged"))
    lines += [f"{name}: {why}" for name, why in block["skipped"].items()]
    return lines
