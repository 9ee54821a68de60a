"""Where Core ML is predicted to run each op of a package: on the Neural Engine or off it.

Apple does not document what the Neural Engine accepts, so this is a prediction from public
evidence, every rule with its source; Core ML decides on the device, and on macOS its compute
plan is read beside the prediction (``runtimes.coreml.compute_plan_devices``) so a disagreement
shows which rule is missing. The rules are data: :data:`CHIPS` (per-generation limits),
:data:`PLACEMENT_RULES` (what keeps an op off the Neural Engine, first match decides),
:data:`ELIGIBLE_OPS` (the op kinds it is known to run) and :data:`RISKS` (what it computes
differently from the CPU). An op kind none of them knows is "unknown", never guessed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtimes.mil.model import load_program

NEURAL_ENGINE, CPU, UNKNOWN, NO_COMPUTE = "neural_engine", "cpu", "unknown", "none"
FP16_MAX = 65504.0
FP16_EXACT_INTEGERS = 2048  # fp16's 11-bit significand: every integer up to 2**11, and no further without gaps

# -- public evidence, cited by every rule ---------------------------------------------------------
HOLLANCE = "hollance/neural-engine, docs/unsupported-layers.md (RNN layers such as LSTM or GRU, gather, dilated " \
           "convolutions do not run on the ANE)"
ANE_GUIDE = "ane-guide.readthedocs.io, 'Model-design rules' (fp16 datapath; width and height at most 16,384; " \
            "arg-min and arg-max reduce an axis of at most 2,048), measured on M1"
DIMENSION_REPORTS = "ncdrone/rustane issue 13 (compile fails past 16,384 on the spatial axis); microsoft/onnxruntime " \
                    "issue 19543 ('CoreML does not support input dim > 16384')"
A16_LIMIT = "public Parakeet Core ML ports: 16,384 per dimension up to A15/M1, 65,536 from A16 (a [1, 240000] " \
            "waveform falls off on every chip)"
FLEXIBLE_SHAPES = "apple/coremltools issue 2370 (a RangeDim input fed varying shapes: 0 % on the ANE)"
FP16_DATAPATH = "ane-guide.readthedocs.io, 'Model-design rules' (every operand the engine computes on is fp16; " \
                "int32 and fp32 annotations are not implemented as wider arithmetic)"
BLOCKWISE = "public Parakeet Core ML ports: blockwise-quantized weights push ops back to the CPU and make " \
            "compilation take minutes"
RELEASED_ENCODER = "the public Core ML release of parakeet-tdt-0.6b-v3: Core ML's compute plan places 1,381 of " \
                   "its encoder's 1,385 ops on the Neural Engine; these are the kinds its program is made of"
UNSTABLE_EXP = "apple/coremltools issues 2687 (softplus), 2690 (logsumexp: output drops to 0 at log(65504 / C)), " \
               "2728 (log_softmax: -inf), 2729 (logcumsumexp): the Neural Engine's exponentials do not subtract " \
               "the maximum first"
FP16_INTEGERS = "fp16 holds every integer only up to 2,048: a token id of 8,191 rounds to 8,192 (public Parakeet " \
                "ports carry ids as two fp16 digits for this reason)"


@dataclass(frozen=True)
class Chip:
    name: str
    max_dimension: int  # the largest extent of any tensor axis the Neural Engine accepts


# A15-class Neural Engines (A14, A15, M1, M2) and A16-class ones (A16, A17 Pro, A18, M3, M4)
CHIPS = {name: Chip(name, limit) for names, limit in (
    (("A14", "A15", "M1", "M2"), 16_384), (("A16", "A17", "A18", "M3", "M4"), 65_536)) for name in names}
DEFAULT_CHIP = "A17"


@dataclass(frozen=True)
class OpView:
    """What the rules read of one op: its kind, and its tensors' element types and shapes."""

    name: str
    op_type: str
    output: str  # its first output's name: how Core ML's compute plan names the op
    inputs: tuple[tuple[str, tuple, bool], ...]  # (dtype, shape, constant) of each tensor input
    outputs: tuple[tuple[str, tuple], ...]  # (dtype, shape) of each output
    attributes: dict  # the op's constant parameters (axis, dilations, ...)
    weights_from: tuple[str, ...]  # the op kinds of the constexpr ops its weights come from
    boundary: bool = False  # it reads a program input or writes a program output

    def tensors(self, constants: bool = False):
        yield from ((dtype, shape) for dtype, shape, constant in self.inputs if constants or not constant)
        yield from self.outputs


@dataclass(frozen=True)
class Rule:
    """One reason an op leaves the Neural Engine: ``check(op, chip)`` says why, or None."""

    name: str
    device: str
    check: Callable[[OpView, Chip], str | None]
    source: str


RECURRENT = {"lstm", "gru", "rnn"}


def _boundary_cast(op: OpView, chip: Chip) -> str | None:
    if op.op_type == "cast" and op.boundary and {op.inputs[0][0], op.outputs[0][0]} == {"fp32", "fp16"}:
        return (f"casts the program's {op.inputs[0][0]} {'input' if op.inputs[0][0] == 'fp32' else 'result'} "
                f"to {op.outputs[0][0]}: the fp32 side is not the Neural Engine's")
    return None


def _no_kernel(op: OpView, chip: Chip) -> str | None:
    if op.op_type in RECURRENT:
        return f"{op.op_type}: no Neural Engine kernel (recurrent layers run on the CPU)"
    if op.op_type in ("gather", "gather_nd", "gather_along_axis"):
        return f"{op.op_type}: no Neural Engine kernel for gathers"
    return None


def _dilated(op: OpView, chip: Chip) -> str | None:
    dilations = op.attributes.get("dilations")
    if op.op_type == "conv" and dilations is not None and any(int(d) > 1 for d in np.ravel(dilations)):
        return f"dilated convolution (dilations {[int(d) for d in np.ravel(dilations)]})"
    return None


def _dynamic(op: OpView, chip: Chip) -> str | None:
    for _, shape in op.tensors():
        if any(not isinstance(d, int) for d in shape):
            return f"dynamic shape {tuple(str(d) for d in shape)}: the Neural Engine compiles fixed shapes"
    return None


def _too_large(op: OpView, chip: Chip) -> str | None:
    for _, shape in op.tensors():
        largest = max((d for d in shape if isinstance(d, int)), default=0)
        if largest > chip.max_dimension:
            return f"a dimension of {largest:,} > {chip.max_dimension:,}, {chip.name}'s limit (shape {list(shape)})"
    return None


ARG_REDUCTIONS = ("reduce_argmax", "reduce_argmin")


def _reduced_extent(op: OpView) -> int | None:
    """How many values an arg-reduction chooses among; None where its shape does not say."""
    shape, axis = op.inputs[0][1], int(op.attributes.get("axis", -1))
    return shape[axis] if shape and isinstance(shape[axis], int) else None


def _wide_argmax(op: OpView, chip: Chip) -> str | None:
    if op.op_type in ARG_REDUCTIONS and op.inputs:
        extent = _reduced_extent(op)
        if extent is not None and extent > FP16_EXACT_INTEGERS:
            return f"{op.op_type} over {extent:,} values > {FP16_EXACT_INTEGERS:,}"
    return None


def _not_fp16(op: OpView, chip: Chip) -> str | None:
    index_output = op.op_type in ARG_REDUCTIONS  # its int32 index is the engine's own
    for dtype, _ in [t for t in op.tensors() if not (index_output and t in op.outputs)]:
        if dtype not in ("fp16", "bool"):
            return f"{dtype} tensors: the Neural Engine computes in fp16"
    return None


def _blockwise(op: OpView, chip: Chip) -> str | None:
    if "constexpr_blockwise_shift_scale" in op.weights_from:
        return "blockwise-quantized weights (constexpr_blockwise_shift_scale)"
    return None


PLACEMENT_RULES = (
    Rule("boundary_cast", CPU, _boundary_cast, FP16_DATAPATH),
    Rule("no_kernel", CPU, _no_kernel, HOLLANCE),
    Rule("dilated_convolution", CPU, _dilated, HOLLANCE),
    Rule("dynamic_shape", CPU, _dynamic, FLEXIBLE_SHAPES),
    Rule("dimension_limit", CPU, _too_large, f"{ANE_GUIDE}; {DIMENSION_REPORTS}; {A16_LIMIT}"),
    Rule("wide_arg_reduction", CPU, _wide_argmax, ANE_GUIDE),
    Rule("not_fp16", CPU, _not_fp16, FP16_DATAPATH),
    Rule("blockwise_weights", CPU, _blockwise, BLOCKWISE),
)

# The op kinds the Neural Engine is known to run, each with its evidence.
ELIGIBLE_OPS = {
    **{kind: RELEASED_ENCODER for kind in (
        "conv", "linear", "matmul", "add", "sub", "mul", "real_div", "layer_norm", "softmax", "relu", "silu",
        "sigmoid", "transpose", "reshape", "expand_dims", "squeeze", "slice_by_index", "split", "concat", "pad",
        "select", "tile", "identity", "cast", "stack", "less", "greater_equal", "equal", "not_equal",
        "logical_and", "logical_not", "floor_div", "reduce_sum", "reduce_max", "reduce_mean", "pow", "sqrt",
        "log")},
    **dict.fromkeys(ARG_REDUCTIONS, ANE_GUIDE),
    "upsample_nearest_neighbor": "hollance/neural-engine, docs/unsupported-layers.md (upsampling works)",
    "conv_transpose": "hollance/neural-engine, docs/unsupported-layers.md (deconvolution works)",
}
NO_COMPUTE_OPS = {"const"}  # constexpr_* ops (weight decompression at load) are matched by prefix


@dataclass(frozen=True)
class Risk:
    """What the Neural Engine computes differently from the CPU path: flagged where it may bite."""

    name: str
    check: Callable[[OpView, dict], str | None]  # (op, producers: output name -> OpView)
    source: str


def _unstable_exp(op: OpView, producers: dict) -> str | None:
    if op.op_type in ("reduce_log_sum_exp", "softplus"):
        return f"{op.op_type} without subtracting the maximum: overflows in fp16 past log({FP16_MAX:g} / C)"
    if op.op_type == "log" and any(p.op_type == "softmax" for p in producers.get(op.name, ())):
        return "log of a softmax (log_softmax): small probabilities underflow in fp16 and give -inf"
    return None


def _integers_through_fp16(op: OpView, producers: dict) -> str | None:
    if op.op_type != "cast" or op.outputs[0][0] != "fp16" or op.inputs[0][0] not in ("int32", "int16", "int64"):
        return None
    for source in producers.get(op.name, ()):
        if source.op_type in ARG_REDUCTIONS:
            extent = _reduced_extent(source)
            if extent is None or extent - 1 > FP16_EXACT_INTEGERS:
                return (f"indices of {source.op_type} over {extent if extent else 'an unknown number of'} values "
                        f"cast to fp16: above {FP16_EXACT_INTEGERS:,} they are rounded")
    return None


RISKS = (
    Risk("unstable_exponential", _unstable_exp, UNSTABLE_EXP),
    Risk("integers_through_fp16", _integers_through_fp16, FP16_INTEGERS),
)


@dataclass(frozen=True)
class PlacedOp:
    index: int
    name: str
    output: str
    op_type: str
    device: str
    rule: str  # the rule that decided, "eligible" for a known kind, "unknown" for a kind no rule knows
    reason: str
    flops: int
    risks: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "output": self.output, "op_type": self.op_type,
                "device": self.device,
                "rule": self.rule, "reason": self.reason, "flops": self.flops, "risks": list(self.risks)}


def place(op: OpView, chip: Chip) -> tuple[str, str, str]:
    """``(device, rule, reason)`` for one op on ``chip``."""
    if op.op_type in NO_COMPUTE_OPS or op.op_type.startswith("constexpr_"):
        return NO_COMPUTE, "weights", "a constant: read at load, no compute"
    for rule in PLACEMENT_RULES:
        reason = rule.check(op, chip)
        if reason:
            return rule.device, rule.name, reason
    if op.op_type in ELIGIBLE_OPS:
        return NEURAL_ENGINE, "eligible", f"{op.op_type}: a kind the Neural Engine runs"
    return UNKNOWN, "unknown", f"{op.op_type}: no rule knows this op kind (not guessed)"


# -- reading a MIL program ------------------------------------------------------------------------

def _dtype_name(var) -> str:
    from coremltools.converters.mil.mil import types  # lazy: coremltools imports torch

    return types.builtin_to_string(var.dtype) if types.is_tensor(var.sym_type) or types.is_scalar(var.sym_type) \
        else str(var.sym_type)


def _shape(var) -> tuple:
    return tuple(int(d) if isinstance(d, (int, np.integer)) else d for d in (var.shape or ()))


def op_views(program, function: str = "main") -> list[tuple[OpView, object]]:
    """Every op of ``function`` (nested blocks flattened, in program order) as the rules see it,
    with the pymil op it was read from."""
    found = []
    main = program.functions[function]
    boundary = {var.name for var in main.inputs.values()} | {var.name for var in main.outputs}

    def walk(block):
        for op in block.operations:
            tensors, attributes, weights_from = [], {}, []
            for name, value in op.inputs.items():
                for var in value if isinstance(value, (list, tuple)) else (value,):
                    constant = var.op is not None and (var.op.op_type == "const"
                                                      or var.op.op_type.startswith("constexpr_"))
                    if var.op is not None and var.op.op_type.startswith("constexpr_"):
                        weights_from.append(var.op.op_type)
                    if constant and var.val is not None and np.size(var.val) <= 16:
                        attributes[name] = var.val
                    tensors.append((_dtype_name(var), _shape(var), constant))
            touches = {var.name for value in op.inputs.values()
                       for var in (value if isinstance(value, (list, tuple)) else (value,))} | {
                v.name for v in op.outputs}
            found.append((OpView(op.name, op.op_type, op.outputs[0].name if op.outputs else op.name, tuple(tensors),
                                 tuple((_dtype_name(v), _shape(v)) for v in op.outputs), attributes,
                                 tuple(weights_from), bool(touches & boundary)), op))
            for inner in op.blocks:
                walk(inner)

    walk(main)
    return found


def op_flops(view: OpView, op) -> int:
    """Floating-point operations of one op (a multiply-add counts two): exact for the matrix
    products, one per output element for elementwise kinds, none for data movement."""
    out = [math.prod(d for d in shape if isinstance(d, int)) for _, shape in view.outputs]
    elements = out[0] if out else 0
    kind = view.op_type
    if kind == "conv":
        weight = _shape(op.inputs["weight"])
        groups = int(op.inputs["groups"].val) if op.inputs.get("groups") is not None else 1
        return 2 * elements * (weight[1] * math.prod(weight[2:]) if groups else 0)
    if kind == "linear":
        return 2 * elements * _shape(op.inputs["weight"])[1]
    if kind == "matmul":
        x = _shape(op.inputs["x"])
        transpose = op.inputs.get("transpose_x") is not None and bool(op.inputs["transpose_x"].val)
        return 2 * elements * int(x[-2] if transpose else x[-1])
    if kind in RECURRENT:
        x, hidden = _shape(op.inputs["x"]), _shape(op.outputs[1])[-1]
        gates = {"lstm": 4, "gru": 3}.get(kind, 1)
        return 2 * gates * hidden * (x[-1] + hidden) * math.prod(x[:-1])
    if kind in ("layer_norm", "softmax", "batch_norm", "instance_norm"):
        return 5 * elements  # mean, variance (or max, exp, sum) and the scaling: about five per element
    if kind.startswith("reduce_"):
        return math.prod(d for d in view.inputs[0][1] if isinstance(d, int))
    movement = {"reshape", "transpose", "expand_dims", "squeeze", "slice_by_index", "slice_by_size", "split",
                "concat", "stack", "pad", "tile", "gather", "identity", "cast", "const"}
    if kind in movement or kind.startswith("constexpr_"):
        return 0
    return elements


@dataclass
class Placement:
    """One package's prediction on one chip."""

    chip: str
    ops: list[PlacedOp]

    def as_dict(self) -> dict:
        return {"chip": self.chip, "ops": [op.as_dict() for op in self.ops]}

    @classmethod
    def from_dict(cls, data: dict) -> Placement:
        return cls(data["chip"], [PlacedOp(**{**op, "risks": tuple(op["risks"])}) for op in data["ops"]])

    def summary(self) -> dict:
        computing = [op for op in self.ops if op.device != NO_COMPUTE]
        devices = Counter(op.device for op in computing)
        flops = sum(op.flops for op in computing)
        on_ne = sum(op.flops for op in computing if op.device == NEURAL_ENGINE)
        placed = [op.device for op in computing if op.device in (NEURAL_ENGINE, CPU)]
        # the casts at the program's edges are off it in every fp16 program: the first op off it inside tells more
        first_off = next((op for op in computing if op.device != NEURAL_ENGINE and op.rule != "boundary_cast"), None)
        return {
            "chip": self.chip, "ops": len(computing), "by_device": dict(sorted(devices.items())),
            "neural_engine_op_share": devices[NEURAL_ENGINE] / len(computing) if computing else None,
            "flops": flops, "neural_engine_flop_share": on_ne / flops if flops else None,
            "transitions": sum(a != b for a, b in zip(placed, placed[1:], strict=False)),
            "first_off": first_off.as_dict() if first_off else None,
            "by_rule": dict(sorted(Counter(op.rule for op in computing if op.device != NEURAL_ENGINE).items())),
            "risks": [{"op": op.name, "op_type": op.op_type, "risk": risk} for op in self.ops for risk in op.risks],
            "unknown_kinds": sorted({op.op_type for op in computing if op.device == UNKNOWN}),
        }


def predict_placement(program, chip: str = DEFAULT_CHIP, function: str = "main") -> Placement:
    """Each op of the program placed by the rules on ``chip``, with its FLOPs and risks."""
    if chip not in CHIPS:
        raise ValueError(f"unknown chip {chip!r}; expected one of: {', '.join(CHIPS)}")
    views = op_views(program, function)
    by_output = {var.name: view for view, op in views for var in op.outputs}
    producers = {view.name: [by_output[var.name] for value in op.inputs.values()
                             for var in (value if isinstance(value, (list, tuple)) else (value,))
                             if var.name in by_output] for view, op in views}
    placed = []
    for index, (view, op) in enumerate(views):
        device, rule, reason = place(view, CHIPS[chip])
        risks = tuple(f"{risk.name}: {text}" for risk in RISKS if (text := risk.check(view, producers)))
        placed.append(PlacedOp(index, view.name, view.output, view.op_type, device, rule, reason,
                               op_flops(view, op) if device != NO_COMPUTE else 0, risks))
    return Placement(chip, placed)


def agreement(placement: Placement, planned: dict[str, str | None]) -> dict:
    """The prediction against Core ML's compute plan (``runtimes.coreml.compute_plan_devices``, on
    CPU_AND_NE): for each op that computes, on the Neural Engine or not in both; the ops where
    they differ, each with the rule that decided the prediction."""
    compared, differing, missing = 0, [], []
    for op in placement.ops:
        if op.device == NO_COMPUTE:
            continue
        if op.output not in planned:
            missing.append(op.output)
            continue
        compared += 1
        actual = planned[op.output]
        if (op.device == NEURAL_ENGINE) != (actual == "NeuralEngine"):
            differing.append({"op": op.output, "op_type": op.op_type, "predicted": op.device, "core_ml": actual,
                              "rule": op.rule, "reason": op.reason})
    return {"compared": compared, "agreeing": compared - len(differing),
            "share": (compared - len(differing)) / compared if compared else None,
            "differing": differing, "not_in_plan": missing}


def predict_package(package: Path, chip: str = DEFAULT_CHIP) -> Placement:
    """``predict_placement`` of an ``.mlpackage``'s main program."""
    return predict_placement(load_program(package), chip)


def rule_sources() -> dict[str, str]:
    """Every rule's and op kind's evidence, for the report and the README."""
    return {**{f"placement:{r.name}": r.source for r in PLACEMENT_RULES},
            **{f"risk:{r.name}": r.source for r in RISKS},
            **{f"eligible:{kind}": source for kind, source in sorted(ELIGIBLE_OPS.items())}}
