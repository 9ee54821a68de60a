"""Compressed variants of the exported packages (``coremltools.optimize.coreml``), cached like
the exports they start from.

A :class:`Variant` says, per component, which compression steps to apply in order (``"*"``
for every component it does not name). The decoder's LSTM weights are left as they are unless
a variant says otherwise: Core ML has no compressed LSTM kernel and the state it carries makes
it the most fragile part. A variant that needs newer operations (int4 per block: iOS18) starts
from an export for that target; the variant records it. The front end (the preprocessor, and
the mel_encoder's preprocessor ops) is never compressed: its weights are the STFT basis and the
mel filterbank, fixed signal processing rather than learned parameters.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import coremltools as ct
import coremltools.optimize.coreml as cto
import numpy as np

from exporters.components import COMPONENTS, DEPLOYMENT_TARGETS
from exporters.export import ExportedComponent
from infra.cache import ExportCache, cache_key, content_digest
from infra.compat import kmeans1d, mil_program, palettize_lut_and_indices
from infra.errors import UserError
from infra.settings import PROJECT_NAME, tool_settings
from infra.settings import table as settings_table
from runtimes.base import package_size
from runtimes.mil.model import load_program

STEP_KINDS = ("linear", "palettize", "prune")
VARIANT_NAME = re.compile(r"[A-Za-z0-9_-]+")
RESERVED_NAMES = ("plots",)  # folders of a quantize output root that are not variants
# Weights smaller than this stay uncompressed (coremltools' own default): biases, norms.
WEIGHT_THRESHOLD = 2048

# Groups of weights, the parts a sensitivity profile weighs and a recipe compresses each its own
# way, named from the Torch module of the op that reads a weight (its op origin).
_LAYER = re.compile(r"(?:^|\.)(\d+)\.(self_attn|feed_forward[12]|conv)(?:\.|$)")  # a layer's part, at any depth
_LAYER_PARTS = {"self_attn": "attention", "feed_forward1": "feed-forward", "feed_forward2": "feed-forward",
                "conv": "convolution"}
GROUP_NAME = re.compile(r"subsampling|layer \d{2} (?:attention|feed-forward|convolution)|decoder (?:LSTM|embedding)"
                        r"|joint|CTC head|other \(.+\)")


def group_of(component: str, origin: str) -> str:
    """The group a weight belongs to, from the Torch module of the op that reads it; a weight of
    no known part is a group of its own module, never left out."""
    if component == "decoder":
        return "decoder " + ("LSTM" if "lstm" in origin else "embedding")
    if component.startswith("joint"):
        return "joint"
    if component == "ctc_head":
        return "CTC head"
    if re.search(r"(?:^|\.)pre_encode(?:\.|$)", origin):
        return "subsampling"
    found = _LAYER.search(origin)
    return f"layer {int(found[1]):02d} {_LAYER_PARTS[found[2]]}" if found else f"other ({origin or 'no module'})"


def _module_of(model, component: str) -> str | None:
    """Which part of the NeMo model holds ``component``'s weights (None: the model has none): the
    CTC head is a hybrid's ``ctc_decoder`` and a CTC model's ``decoder``."""
    transducer = hasattr(model, "joint")
    if component == "ctc_head":
        return "ctc_decoder" if hasattr(model, "ctc_decoder") else None if transducer else "decoder"
    if component in ("encoder", "mel_encoder"):
        return "encoder"
    if component == "decoder" or component.startswith("joint"):
        return ("decoder" if component == "decoder" else "joint") if transducer else None
    return None


def model_weights(model, component: str, keep_lstm: bool = False) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of every weight of ``component`` a variant may compress in
    ``model`` (a NeMo ASR model), read before anything is exported."""
    name = _module_of(model, component)
    module = getattr(model, name, None) if name else None
    if module is None or is_front_end(component):
        return {}
    return {name: tuple(parameter.shape) for name, parameter in module.named_parameters()
            if parameter.dim() > 1 and parameter.numel() > WEIGHT_THRESHOLD
            and not (keep_lstm and component == "decoder" and ".lstm." in f".{name}")}


def model_groups(model, component: str) -> set[str]:
    """The groups of ``component``'s weights in ``model``: what a recipe's group names are
    checked against."""
    return {group_of(component, name.rpartition(".")[0]) for name in model_weights(model, component)}


@dataclass(frozen=True)
class Step:
    """One ``coremltools.optimize.coreml`` pass: ``kind`` and its op config's arguments."""

    kind: str
    options: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        if self.kind not in STEP_KINDS:
            raise UserError(f"unknown compression step {self.kind!r}; expected one of: {', '.join(STEP_KINDS)}")

    @classmethod
    def of(cls, kind: str, **options) -> Step:
        """A step of ``options`` as declared; a list (``n_m_ratio = [2, 4]``) is kept as a tuple, so
        a step stays hashable and compares equal to itself read back."""
        return cls(kind, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items())))

    def describe(self) -> str:
        return f"{self.kind}(" + ", ".join(f"{k}={v}" for k, v in self.options) + ")"

    def as_dict(self) -> dict:
        return {"kind": self.kind, **dict(self.options)}


@dataclass(frozen=True)
class Variant:
    name: str
    summary: str
    steps: dict[str, tuple[Step, ...]]  # component name or "*" -> steps in order
    minimum_deployment_target: str = "iOS17"
    keep_lstm: bool = True
    # a mixed variant (a recipe): component -> group -> the steps of that group's weights, which
    # override the component's steps (an empty tuple: the group stays as exported)
    groups: dict[str, dict[str, tuple[Step, ...]]] = field(default_factory=dict)

    def steps_for(self, component: str) -> tuple[Step, ...]:
        return self.steps.get(component, self.steps.get("*", ()))

    def compresses(self, component: str) -> bool:
        return bool(self.steps_for(component)) or any(self.groups.get(component, {}).values())

    def as_dict(self) -> dict:
        return {"name": self.name, "summary": self.summary, "minimum_deployment_target": self.minimum_deployment_target,
                "keep_lstm": self.keep_lstm,
                "steps": {c: [s.as_dict() for s in steps] for c, steps in self.steps.items()},
                **({"groups": {c: {g: [s.as_dict() for s in steps] for g, steps in groups.items()}
                               for c, groups in self.groups.items()}} if self.groups else {})}

    def recipe(self) -> dict:
        """The variant as ``--variant FILE`` and ``parse_variant`` read it back: per component its
        steps, or a table of group -> steps with ``"*"`` for the rest."""
        declared = {c: [s.as_dict() for s in steps] for c, steps in self.steps.items()}
        for component, groups in self.groups.items():
            declared[component] = {"*": declared.pop(component, [s.as_dict() for s in self.steps_for(component)]),
                                   **{g: [s.as_dict() for s in steps] for g, steps in groups.items()}}
        return {"name": self.name, "summary": self.summary, "minimum_deployment_target": self.minimum_deployment_target,
                "keep_lstm": self.keep_lstm, **declared}


INT8_PER_CHANNEL = Step.of("linear", mode="linear", dtype="int8", granularity="per_channel")
PALETTE = {bits: Step.of("palettize", mode="kmeans", nbits=bits, granularity="per_tensor") for bits in (8, 6, 4, 3, 2)}
HALF_PRUNED = Step.of("prune", target_sparsity=0.5)
IOS18_JOINT = "joint compression needs iOS18: exported for that target"
ENCODERS = ("encoder", "mel_encoder")

VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("int8_per_channel", "int8 linear, per output channel", {"*": (INT8_PER_CHANNEL,)}),
    Variant("int8_per_tensor_symmetric", "int8 linear, one symmetric scale per tensor",
            {"*": (Step.of("linear", mode="linear_symmetric", dtype="int8", granularity="per_tensor"),)}),
    *(Variant(f"palettize_{bits}bit", f"k-means palettization, {bits}-bit lookup table per tensor",
              {"*": (PALETTE[bits],)}) for bits in (8, 6, 4)),
    Variant("palettize_3bit", "k-means palettization, 3-bit lookup table per tensor (3-bit tables need iOS18: "
            "exported for that target)", {"*": (PALETTE[3],)}, minimum_deployment_target="iOS18"),
    Variant("palettize_2bit", "k-means palettization, 2-bit lookup table per tensor", {"*": (PALETTE[2],)}),
    Variant("palettize_4bit_grouped", "k-means palettization, a 4-bit table per group of 16 output channels "
            "(per-grouped-channel tables need iOS18: exported for that target)",
            {"*": (Step.of("palettize", mode="kmeans", nbits=4, granularity="per_grouped_channel", group_size=16),)},
            minimum_deployment_target="iOS18"),
    Variant("palettize_4bit_uniform", "uniform palettization: a 4-bit table of evenly spaced values per tensor",
            {"*": (Step.of("palettize", mode="uniform", nbits=4, granularity="per_tensor"),)}),
    Variant("int4_per_channel", "int4 linear, per output channel (4-bit weights need iOS18: exported for that target)",
            {"*": (Step.of("linear", mode="linear_symmetric", dtype="int4", granularity="per_channel"),)},
            minimum_deployment_target="iOS18"),
    Variant("int4_per_block", "int4 linear per block of 32 (needs iOS18: exported for that target)",
            {"*": (Step.of("linear", mode="linear_symmetric", dtype="int4", granularity="per_block",
                           block_size=32),)}, minimum_deployment_target="iOS18"),
    Variant("int8_per_block", "int8 linear per block of 32 (per-block scales need iOS18: exported for that target)",
            {"*": (Step.of("linear", mode="linear_symmetric", dtype="int8", granularity="per_block",
                           block_size=32),)}, minimum_deployment_target="iOS18"),
    Variant("pruned_50", "50% magnitude pruning, the kept weights fp16 (a sparse weight and its bit mask)",
            {"*": (HALF_PRUNED,)}),
    Variant("pruned_2of4", "n:m magnitude pruning, the 2 largest of every 4 weights kept",
            {"*": (Step.of("prune", n_m_ratio=(2, 4)),)}),
    Variant("pruned_int8", f"50% magnitude pruning, then int8 per channel on the kept weights ({IOS18_JOINT})",
            {"*": (HALF_PRUNED, INT8_PER_CHANNEL)}, minimum_deployment_target="iOS18"),
    Variant("pruned_palettize_4bit", "50% magnitude pruning, then a 4-bit k-means table for the kept weights "
            f"({IOS18_JOINT})", {"*": (HALF_PRUNED, PALETTE[4])}, minimum_deployment_target="iOS18"),
    Variant("mixed_8bit", "everything 8-bit: encoders palettized to 8 bits, the rest int8 per channel",
            {**{c: (PALETTE[8],) for c in ENCODERS}, "*": (INT8_PER_CHANNEL,)}),
    Variant("encoder_6bit_rest_int8", "encoders palettized to 6 bits, the rest int8 per channel",
            {**{c: (PALETTE[6],) for c in ENCODERS}, "*": (INT8_PER_CHANNEL,)}),
)}


class Palettes:
    """k-means lookup tables, each computed once per (weight, bits) and handed to every package
    that palettizes the same weight: the encoder and the mel_encoder carry the same 600M encoder
    weights, and k-means is most of what compressing them costs. :meth:`prepare` computes a
    program's tables ahead on every core (the 1-D k-means runs outside the GIL).

    A table is what coremltools' own k-means palettization computes, bit for bit: its weighted
    1-D k-means (``kmeans1d``) on the weight's distinct values, or its scikit-learn path where it
    takes that one. For fp16 weights the distinct values and their counts come from a count of
    the 65536 bit patterns rather than numpy's sort (half the time at 4 bits)."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or os.cpu_count() or 1
        self._tables: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self.computed = self.reused = 0

    def lut_function(self, nbits: int):
        """The ``lut_function`` of a ``custom`` palettization that gives ``nbits`` k-means tables."""
        return functools.partial(self.table, nbits=nbits)

    def table(self, values: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
        key = (nbits, values.dtype.str, values.shape, hashlib.sha256(np.ascontiguousarray(values).data).hexdigest())
        if key in self._tables:
            self.reused += 1
        else:
            self.computed += 1
            self._tables[key] = kmeans_table(values, nbits)
        return self._tables[key]

    def prepare(self, package, step: Step, keep_lstm: bool, untouched_ops: tuple[str, ...] = ()) -> None:
        """The tables ``step`` will ask for on ``package`` (its weights over the threshold and of
        rank 2 or more, as coremltools picks them, those of LSTMs and ``untouched_ops`` aside),
        computed now, in parallel."""
        options = {"weight_threshold": WEIGHT_THRESHOLD, **dict(step.options)}
        program = load_program(package)
        weights = [op.outputs[0].val for op in program.functions["main"].operations
                   if op.op_type == "const" and op.name not in untouched_ops
                   and isinstance(op.outputs[0].val, np.ndarray) and op.outputs[0].val.dtype.kind == "f"
                   and op.outputs[0].val.size > options["weight_threshold"] and op.outputs[0].rank > 1
                   and not (keep_lstm and any(child.op_type == "lstm" for child in op.outputs[0].child_ops))]
        del program
        with ThreadPoolExecutor(self.workers) as pool:
            for _ in pool.map(functools.partial(self.table, nbits=options["nbits"]), weights):
                pass
        del weights
        _free_program_of(package)


def _free_program_of(package) -> None:
    """A pymil program is a web of references (ops, vars, blocks): a large package's is collected
    now, so its weights (a full-size encoder's are over a gigabyte) are freed before the next
    package is read, not at the collector's leisure; a small one's is left to the collector (a
    full collection is slow in a large process)."""
    if package_size(Path(package)) > _LARGE_PACKAGE_BYTES:
        gc.collect()


_LARGE_PACKAGE_BYTES = 128 << 20


def kmeans_table(values: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """(lookup table, uint8 indices) of ``values``: coremltools' per-tensor k-means palette."""
    if values.dtype != np.float16 or values.size < 10_000 or np.isnan(values).any():
        # coremltools' own path: scikit-learn's k-means for fp32 and small weights, its sort for NaNs
        return palettize_lut_and_indices(values, nbits)
    bits = np.ascontiguousarray(values).reshape(-1).view(np.uint16)
    counts = np.bincount(bits, minlength=1 << 16)
    counts[0], counts[_NEGATIVE_ZERO] = counts[0] + counts[_NEGATIVE_ZERO], 0  # numpy's unique: one zero
    present = np.flatnonzero(counts).astype(np.uint16)  # each distinct value's bit pattern
    patterns = present[np.argsort(present.view(np.float16), kind="stable")]  # in ascending order of value
    clusters = min(len(patterns), 1 << nbits)
    result = kmeans1d().cluster(patterns.view(np.float16), clusters, weights=counts[patterns])
    lut = np.zeros(1 << nbits)
    lut[:clusters] = result.centroids
    cluster_of = np.zeros(1 << 16, np.uint8)
    cluster_of[patterns] = result.clusters
    cluster_of[_NEGATIVE_ZERO] = cluster_of[0]
    return lut.astype(values.dtype), cluster_of[bits]


_NEGATIVE_ZERO = 0x8000


def _is_kmeans_per_value(step: Step) -> bool:
    """A k-means palettization whose tables :class:`Palettes` computes: scalar (not vector) and
    with coremltools' k-means rather than a table of the user's."""
    options = dict(step.options)
    return (step.kind == "palettize" and str(options.get("mode", "kmeans")).lower() == "kmeans"
            and options.get("cluster_dim", 1) == 1 and "nbits" in options)


def _op_config(step: Step, palettes: Palettes | None = None):
    config_class = {"linear": cto.OpLinearQuantizerConfig, "palettize": cto.OpPalettizerConfig,
                    "prune": cto.OpMagnitudePrunerConfig}[step.kind]
    options = {"weight_threshold": WEIGHT_THRESHOLD, **dict(step.options)}
    if palettes is not None and _is_kmeans_per_value(step):
        options.update(mode="custom", lut_function=palettes.lut_function(options.pop("nbits")))
    try:
        return config_class(**options)
    except (TypeError, ValueError) as e:
        raise UserError(f"compression step {step.describe()}: {e}") from None


def _optimization_config(step: Step, keep_lstm: bool, untouched_ops: tuple[str, ...] = (),
                         palettes: Palettes | None = None):
    return cto.OptimizationConfig(global_config=_op_config(step, palettes),
                                  op_type_configs={"lstm": None} if keep_lstm else None,
                                  op_name_configs=dict.fromkeys(untouched_ops) or None)


_PASSES = {"linear": cto.linear_quantize_weights, "palettize": cto.palettize_weights, "prune": cto.prune_weights}


def apply_steps(mlmodel, steps: tuple[Step, ...], keep_lstm: bool, untouched_ops: tuple[str, ...] = (),
                palettes: Palettes | None = None):
    """``mlmodel`` with each step applied in order; a step after another compresses jointly
    (e.g. int8 of the pruned weights keeps their sparsity). k-means tables come from
    ``palettes`` when given (shared with the other packages it serves)."""
    for i, step in enumerate(steps):
        config = _optimization_config(step, keep_lstm, untouched_ops, palettes)
        mlmodel = _PASSES[step.kind](mlmodel, config, joint_compression=i > 0)
    return mlmodel


def apply_mixed(mlmodel, steps_of: dict[str, tuple[Step, ...]], palettes: Palettes | None = None):
    """``mlmodel`` with each named weight (const op) compressed by its own step (a recipe: one
    step per weight, none to leave it); every other constant stays as it is. One pass per kind
    of step, each naming only its own weights."""
    for kind in STEP_KINDS:
        if not any(steps and steps[0].kind == kind for steps in steps_of.values()):
            continue
        configs = {name: _op_config(steps[0], palettes) if steps and steps[0].kind == kind else None
                   for name, steps in steps_of.items()}
        mlmodel = _PASSES[kind](mlmodel, cto.OptimizationConfig(global_config=None, op_name_configs=configs))
    return mlmodel


def grouped_weights(base, keep_lstm: bool) -> dict[str, str]:
    """Const op name -> group (``group_of``) of every weight of ``base`` a variant may compress:
    over ``WEIGHT_THRESHOLD`` values, of rank 2 or more, neither front end nor (``keep_lstm``)
    an LSTM's. Groups come from the export's op origins; a package set records none."""
    if isinstance(base, GivenPackage):
        raise UserError(f"{base.package}: a variant of groups (a recipe) needs the op origins this tool's exports "
                        "record, and a package set (--packages) has none; convert the model with this tool")
    untouched_ops = set(front_end_ops(base))
    origins = base.op_origins()
    program = load_program(base.package)
    found = {}
    for op in program.functions["main"].operations:
        value = op.outputs[0].val if op.op_type == "const" else None
        if (op.name in untouched_ops or not isinstance(value, np.ndarray) or value.dtype.kind != "f"
                or value.size <= WEIGHT_THRESHOLD or value.ndim < 2):
            continue
        readers = op.outputs[0].child_ops  # the front end's are named by the ops that read them
        if (not readers or any(reader.name in untouched_ops for reader in readers)
                or (keep_lstm and any(reader.op_type == "lstm" for reader in readers))):
            continue
        found[op.name] = group_of(base.name, origins.get(readers[0].outputs[0].name, ""))
    del program
    _free_program_of(base.package)
    return found


def is_front_end(component: str) -> bool:
    """A component that is all front end (its fp32 scopes cover everything): never compressed."""
    return "*" in COMPONENTS[component].fp32_scopes


def front_end_ops(base) -> tuple[str, ...]:
    """Ops of ``base`` under its component's fp32 scopes (``Component.fp32_scopes``): the front
    end's STFT basis and mel filterbank are not learned weights, and rounding them moves every
    mel value (int8 on the preprocessor measured quality 0.944). An export says which ops those
    are through its op origins; a given package through :meth:`GivenPackage.front_end_ops`."""
    scopes = COMPONENTS[base.name].fp32_scopes
    if not scopes:
        return ()
    program = load_program(base.package)
    if isinstance(base, GivenPackage):
        found = base.front_end_ops(program)
    else:
        front = {out for out, origin in base.op_origins().items() if origin.split(".")[0] in scopes}
        found = tuple(op.name for op in program.functions["main"].operations
                      if op.outputs and op.outputs[0].name in front)
    del program
    _free_program_of(base.package)
    return found


# a constant this large is a weight, not a scalar or a shape that any two programs may share
_SHARED_WEIGHT_SIZE = 64


def _weight_digests(program) -> dict[str, str]:
    """Const op name -> a digest of its value (rounded to fp16, so an fp16 and an fp32 copy of
    one weight agree) for every weight of at least ``_SHARED_WEIGHT_SIZE`` elements."""
    found = {}
    for op in program.functions["main"].operations:
        value = op.outputs[0].val if op.op_type == "const" else None
        if isinstance(value, np.ndarray) and value.size >= _SHARED_WEIGHT_SIZE and value.dtype.kind == "f":
            rounded = value.astype(np.float16)
            found[op.name] = hashlib.sha256(str(rounded.shape).encode() + rounded.tobytes()).hexdigest()
    return found


@dataclass(frozen=True)
class GivenPackage:
    """A package this tool did not export (``--packages``), compressed like an export and keyed by
    its content. It records no op origins; ``front_end`` (the set's preprocessor, if it has one)
    tells the front end inside a mel_encoder apart: the weights the two packages share."""

    name: str
    package: Path
    front_end: Path | None = None

    @cached_property
    def key(self) -> str:
        return content_digest(self.package)

    @property
    def size_bytes(self) -> int:
        return package_size(self.package)

    def front_end_ops(self, program) -> tuple[str, ...]:
        """The weights this program shares with the preprocessor, and the ops that read them;
        none without a preprocessor (then the front end is compressed with the rest)."""
        if self.front_end is None:
            return ()
        shared = set(_weight_digests(load_program(self.front_end)).values())
        consts = {name for name, digest in _weight_digests(program).items() if digest in shared}
        readers = [op.name for op in program.functions["main"].operations if op.op_type != "const" and any(
            var.op is not None and var.op.name in consts for var in op.inputs.values() if hasattr(var, "op"))]
        return tuple(sorted(consts)) + tuple(readers)


class GivenExports:
    """What the quantization sweep builds its variants from, for a package set: the packages as
    they are, whatever deployment target a variant asks for (a variant its target's ops cannot
    express fails to build, with the reason)."""

    def __init__(self, packages: dict[str, Path]):
        front_end = packages.get("preprocessor")
        self.packages = {name: GivenPackage(name, Path(path), front_end) for name, path in packages.items()}

    def export_all(self, names=None) -> list[GivenPackage]:
        return [self.packages[name] for name in (names or self.packages) if name in self.packages]

    def for_target(self, target: str) -> GivenExports:
        """The same packages, for every target (``Exporter.for_target``'s counterpart)."""
        return self


@dataclass(frozen=True)
class CompressedComponent:
    """A variant's package of one component: compressed, or the base export where the variant
    leaves the component alone."""

    name: str
    variant: str
    package: Path
    steps: tuple[Step, ...]
    info: dict = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return package_size(self.package)


def compress(base: ExportedComponent, variant: Variant, cache: ExportCache, progress=lambda message: None,
             palettes: Palettes | None = None) -> CompressedComponent:
    """``base`` compressed by ``variant``, built once per (base package, steps) and cached; its
    k-means tables shared through ``palettes`` with the other components compressed alike."""
    steps = variant.steps_for(base.name)
    groups = variant.groups.get(base.name, {})
    if not variant.compresses(base.name) or is_front_end(base.name):
        return CompressedComponent(base.name, variant.name, base.package, (), {"uncompressed": True})
    key = cache_key(kind="compressed", base=base.key, component=base.name,
                    steps=[s.as_dict() for s in steps], keep_lstm=variant.keep_lstm,
                    groups={g: [s.as_dict() for s in group_steps] for g, group_steps in sorted(groups.items())},
                    code=hashlib.sha256(Path(__file__).read_bytes()).hexdigest())

    def build(tmp: Path) -> dict:
        progress(f"  {variant.name}/{base.name}: " + (f"a recipe of {len(groups)} group(s)" if groups else
                                                        " then ".join(s.describe() for s in steps)) + " ...")
        start = time.perf_counter()
        untouched = front_end_ops(base)  # read the whole program: only when building
        if groups:
            weights = grouped_weights(base, variant.keep_lstm)
            unknown = sorted(set(groups) - set(weights.values()))
            if unknown:
                raise UserError(f"variant {variant.name}: {base.name} has no weights in group(s) "
                                f"{', '.join(unknown)}; its groups: {', '.join(sorted(set(weights.values())))}")
        elif palettes is not None and _is_kmeans_per_value(steps[0]):
            palettes.prepare(base.package, steps[0], variant.keep_lstm, untouched)
        mlmodel = ct.models.MLModel(str(base.package), skip_model_load=True)
        try:
            if groups:
                compressed = apply_mixed(mlmodel, {name: groups.get(group, steps) for name, group in weights.items()},
                                         palettes)
            else:
                compressed = apply_steps(mlmodel, steps, variant.keep_lstm, untouched, palettes)
        except UserError:
            raise
        except Exception as e:  # a variant that cannot be built is an error, never the base package
            raise UserError(f"variant {variant.name} cannot compress {base.name}: {type(e).__name__}: {e}") from e
        package = f"{base.name}.mlpackage"
        compressed.save(str(tmp / package))
        # Weights too small or of shapes a step cannot take (int4 blocks of 32 on a width of 48)
        # stay as they were; a package where that is every weight is the base, re-saved.
        operations = mil_program(compressed).functions["main"].operations
        constexprs = sum(op.op_type.startswith("constexpr_") for op in operations)
        return {"component": base.name, "variant": variant.name, "package": package,
                "steps": [s.as_dict() for s in steps], "base_key": base.key,
                **({"groups": {g: [s.as_dict() for s in group_steps] for g, group_steps in groups.items()}}
                   if groups else {}),
                "front_end_ops_kept": len(untouched), "compressed_weights": constexprs,
                "uncompressed": constexprs == 0,
                "minimum_deployment_target": variant.minimum_deployment_target,
                "compress_seconds": round(time.perf_counter() - start, 2)}

    entry = cache.get_or_build(key, build)
    return CompressedComponent(base.name, variant.name, entry.path / entry.info["package"], steps,
                               {**entry.info, "cached": entry.hit})


def variant_table(path: Path | None = None) -> dict[str, Variant]:
    """The built-in variants plus those of ``[tool.parakeet-coreml.quantization.variants]`` in
    ``pyproject.toml``: each a table with ``summary``, optional ``minimum_deployment_target`` and
    ``keep_lstm``, and per component (or ``"*"``) a list of steps like
    ``{ kind = "palettize", nbits = 6 }``."""
    table = dict(VARIANTS)
    if path is None or not Path(path).is_file():
        return table
    declared = settings_table(tool_settings(path), ("quantization", "variants"), f"{path} [tool.{PROJECT_NAME}]")
    for name, spec in declared.items():
        table[name] = parse_variant(name, spec, f"{path} [tool.parakeet-coreml.quantization.variants.{name}]")
    return table


# Lookup-table sizes Core ML's palettized weights take, by deployment target (3-bit from iOS 18).
PALETTE_BITS = {"iOS17": (1, 2, 4, 6, 8), "iOS18": (1, 2, 3, 4, 6, 8)}


def _ios18_feature(declared: dict) -> str | None:
    """What of a step only iOS 18's ops can express (coremltools refuses it for an older target,
    but only when it compresses, after the sweep has exported and weighed everything before it)."""
    kind, granularity = declared.get("kind"), declared.get("granularity")
    if kind == "linear" and str(declared.get("dtype", "int8")) in ("int4", "uint4"):
        return "4-bit linear quantization"
    if kind == "linear" and granularity == "per_block":
        return "per-block scales"
    if kind == "palettize" and granularity == "per_grouped_channel":
        return "per-grouped-channel lookup tables"
    return None


def _checked_step(declared: dict, target: str, where: str) -> dict:
    """The arguments coremltools accepts when it is configured but refuses minutes later, or
    refuses with a message of several hundred characters, checked here in a line each."""
    declared = dict(declared)
    feature = _ios18_feature(declared)
    if feature and target == "iOS17":
        raise UserError(f"{where}: {feature} needs minimum_deployment_target iOS18 (the variant says {target})")
    if declared.get("kind") == "palettize" and "nbits" in declared:
        allowed = PALETTE_BITS[target]
        if declared["nbits"] not in allowed:
            raise UserError(f"{where}: palettize nbits {declared['nbits']!r} is not possible for {target}; "
                              f"expected one of {', '.join(map(str, allowed))}"
                              + (" (3 bits needs minimum_deployment_target iOS18)" if declared["nbits"] == 3 else ""))
    if declared.get("kind") == "prune" and "target_sparsity" in declared:
        sparsity = declared["target_sparsity"]
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
            raise UserError(f"{where}: prune target_sparsity {sparsity!r}; expected a fraction in [0, 1), "
                              "e.g. 0.5 for half the weights")
        declared["target_sparsity"] = float(sparsity)
    return declared


def parse_variant(name: str, spec, where: str) -> Variant:
    """A variant from its declaration (a mapping, or its JSON text from the command line)."""
    if not VARIANT_NAME.fullmatch(name):
        raise UserError(f"{where}: variant name {name!r} must be letters, digits, '_' and '-' only "
                          "(it names a folder of the output)")
    if name in RESERVED_NAMES:
        raise UserError(f"{where}: variant name {name!r} is the output's own folder for "
                          f"{'the plots' if name == 'plots' else name}; choose another")
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError as e:
            raise UserError(f"{where}: not JSON ({e})") from None
    if not isinstance(spec, dict):
        raise UserError(f"{where}: expected a table of component -> list of steps")
    spec = dict(spec)
    summary = str(spec.pop("summary", name))
    target = spec.pop("minimum_deployment_target", "iOS17")
    keep_lstm = bool(spec.pop("keep_lstm", True))

    if target not in DEPLOYMENT_TARGETS:
        raise UserError(f"{where}: minimum_deployment_target {target!r}; "
                          f"expected one of {', '.join(DEPLOYMENT_TARGETS)}")
    steps, groups = {}, {}
    for component, declared in spec.items():
        if component != "*" and component not in COMPONENTS:
            raise UserError(f"{where}: unknown component {component!r}; expected '*' or one of: "
                              f"{', '.join(COMPONENTS)}")
        if isinstance(declared, dict) and component != "*":
            groups[component] = _parse_groups(component, declared, target, keep_lstm, f"{where}: {component}")
            if "*" in declared:
                steps[component] = _parse_steps(declared["*"], target, keep_lstm, f"{where}: {component}: *")
            continue
        steps[component] = _parse_steps(declared, target, keep_lstm, f"{where}: {component}")
    if not steps and not groups:
        raise UserError(f"{where}: no steps; name components (or '*') with their steps")
    variant = Variant(name, summary, steps, target, keep_lstm, groups)
    for component in groups:
        if len(variant.steps_for(component)) > 1:
            raise UserError(f"{where}: {component}: a table of groups takes one step per weight; the other weights' "
                            f"{len(variant.steps_for(component))} steps (joint compression) cannot be mixed with it")
    return variant


def _parse_steps(declared, target: str, keep_lstm: bool, where: str) -> tuple[Step, ...]:
    if not isinstance(declared, list) or not all(isinstance(s, dict) and "kind" in s for s in declared):
        raise UserError(f"{where} must be a list of steps like {{\"kind\": \"linear\", ...}}")
    if len(declared) > 1 and target == "iOS17":
        raise UserError(f"{where}: {len(declared)} steps on one weight (joint compression) need "
                        f"minimum_deployment_target iOS18 (the variant says {target})")
    steps = tuple(Step.of(**_checked_step(s, target, where)) for s in declared)
    for step in steps:
        _optimization_config(step, keep_lstm)  # refuse bad arguments now, not mid-sweep
    return steps


def _parse_groups(component: str, declared: dict, target: str, keep_lstm: bool, where: str
                  ) -> dict[str, tuple[Step, ...]]:
    """A component's table of group -> steps (``"*"``: its other weights, read by the caller)."""
    if is_front_end(component):
        raise UserError(f"{where}: the {component} is front end (the STFT basis and mel filterbank) and is never "
                        "compressed; it has no groups")
    groups = {}
    for group, group_steps in declared.items():
        if group == "*":
            continue
        if not isinstance(group, str) or not GROUP_NAME.fullmatch(group):
            raise UserError(f"{where}: unknown group {group!r}; expected 'subsampling', 'layer NN attention', "
                            "'layer NN feed-forward', 'layer NN convolution', 'decoder embedding', 'decoder LSTM', "
                            "'joint', 'CTC head' or '*' (the sensitivity profile's names)")
        if group == "decoder LSTM" and keep_lstm and group_steps:
            raise UserError(f"{where}: 'decoder LSTM' is kept as exported (keep_lstm); set keep_lstm = false to "
                            "compress it")
        groups[group] = _parse_steps(group_steps, target, keep_lstm, f"{where}: {group}")
        if len(groups[group]) > 1:
            raise UserError(f"{where}: {group}: one step per group (joint compression of a group is not mixed "
                            f"with its neighbours'); found {len(groups[group])}")
    if not groups:
        raise UserError(f"{where}: a table of groups names no group; give a list of steps for the whole component")
    return groups


def check_against_model(variant: Variant, model) -> list[str]:
    """What of ``variant`` ``model`` cannot take, refused before anything is exported or
    compressed: a group a recipe names that the model lacks (a layer 30 of a 24-layer model is a
    typo), a block or group size that divides the channels of none of the weights it would
    compress (the variant would be the uncompressed export). Returns a note per size that leaves
    some of them as exported."""
    for component, groups in variant.groups.items():
        known = model_groups(model, component)
        unknown = sorted(set(groups) - known)
        if unknown:
            raise UserError(f"variant {variant.name}: {component} has no group(s) {', '.join(unknown)} in this model; "
                            f"its groups: {', '.join(sorted(known))}")
    cut: dict[tuple[int, int, str], dict] = {}  # (size, axis, what) -> (module, weight) -> shape
    for component in COMPONENTS:
        grouped = [step for steps in variant.groups.get(component, {}).values() for step in steps]
        for found in {_channel_size(step) for step in (*variant.steps_for(component), *grouped)} - {None}:
            # keyed by the model's module: the encoder's weights once, not once per encoder
            module = _module_of(model, component)
            cut.setdefault(found, {}).update({(module, name): shape for name, shape in model_weights(
                model, component, variant.keep_lstm).items() if len(shape) > found[1]})
    notes = []
    for (size, axis, what), weights in cut.items():
        shapes = list(weights.values())
        channels = sorted({shape[axis] for shape in shapes})
        left = sorted({c for c in channels if c % size})
        if shapes and len(left) == len(channels):
            raise UserError(f"variant {variant.name}: {what} {size} divides none of the {len(shapes)} weights it would "
                            f"compress (their {_axis_name(axis)}: {', '.join(map(str, channels))}); expected a "
                            f"divisor of them, e.g. {_divisor(channels)}")
        if left:
            kept = sum(shape[axis] in left for shape in shapes)
            notes.append(f"variant {variant.name}: {what} {size} leaves {kept} of {len(shapes)} weights as exported "
                         f"(their {_axis_name(axis)} {', '.join(map(str, left))} are no multiple of it)")
    return notes


def _axis_name(axis: int) -> str:
    return {0: "output channels", 1: "input channels"}.get(axis, f"sizes on axis {axis}")


def _channel_size(step: Step) -> tuple[int, int, str] | None:
    """(size, weight axis, what it is) of a step that cuts a weight's channels into blocks or
    groups: per-block linear scales along the input channels, per-grouped-channel tables along
    the output channels (coremltools' axes for linear and convolution weights)."""
    options = dict(step.options)
    granularity = options.get("granularity")
    if step.kind == "linear" and granularity == "per_block" and isinstance(options.get("block_size"), int):
        return options["block_size"], 1, "block_size"
    if step.kind == "palettize" and granularity == "per_grouped_channel":
        return int(options.get("group_size", 32)), int(options.get("channel_axis") or 0), "group_size"
    return None


def _divisor(channels: list[int]) -> int:
    """The largest power of two up to 32 that divides every one of ``channels``."""
    return next(d for d in (32, 16, 8, 4, 2, 1) if all(c % d == 0 for c in channels))


def read_recipe(path: Path) -> Variant:
    """A variant from a recipe file (``Variant.recipe`` as JSON: its name, then its declaration)."""
    try:
        declared = json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"--variant {path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise UserError(f"--variant {path}: not JSON ({e})") from None
    if not isinstance(declared, dict) or not isinstance(declared.get("name"), str):
        raise UserError(f"--variant {path}: a recipe file is a JSON object naming its variant (\"name\") beside its "
                        "components' steps, as a --search run writes it")
    declared = dict(declared)
    return parse_variant(declared.pop("name"), declared, f"--variant {path}")
