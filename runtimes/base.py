"""What every backend shares: the ``predict`` contract, input checking, backend choice and the
compute units. A leaf module: numpy and the standard library only (and coremltools' proto, loaded
when a model description is read)."""

from __future__ import annotations

import json
import platform
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

BACKENDS = ("auto", "coreml", "mil")
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
__all__ = ["BACKENDS", "COMPUTE_UNITS", "BackendUnavailable", "InputMismatch", "InputSpec", "PackageError",
           "check_inputs", "compiled_interface", "describe_backend", "input_spec", "package_size", "program_precision",
           "resolve_backend"]


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this host; the message says why."""


class PackageError(ValueError):
    """A package that cannot be read: the message names it and what is wrong with it."""


class InputMismatch(ValueError):
    """Inputs that do not fit the program's declared inputs."""


@dataclass(frozen=True)
class InputSpec:
    """A program input: its default ``shape`` and, for a flexible input, what else it takes: a
    (lower, upper) bound per dimension (Core ML's ``RangeDim``; upper None: unbounded) or a set of
    ``shapes`` (``EnumeratedShapes``)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    ranges: tuple[tuple[int, int | None], ...] | None = None
    shapes: tuple[tuple[int, ...], ...] | None = None

    @property
    def flexible(self) -> bool:
        return self.shapes is not None or self.ranges is not None and any(lo != hi for lo, hi in self.ranges)

    def allows(self, shape: tuple[int, ...]) -> bool:
        shape = tuple(int(d) for d in shape)
        if self.shapes is not None:
            return shape in self.shapes
        if self.ranges is not None:
            return len(shape) == len(self.ranges) and all(
                lo <= d and (hi is None or d <= hi) for d, (lo, hi) in zip(shape, self.ranges, strict=True))
        return shape == self.shape

    def allowed(self) -> str:
        """The shapes it takes: ``[1, 1..240000]``, ``one of [1, 3, 10], [1, 3, 20]`` or ``[1, 3]``."""
        if self.shapes is not None:
            return "one of " + ", ".join(str(list(s)) for s in self.shapes)
        if self.ranges is not None:
            dims = [str(lo) if lo == hi else f"{lo}..{'' if hi is None else hi}" for lo, hi in self.ranges]
            return "[" + ", ".join(dims) + "]"
        return str(list(self.shape))

    def __str__(self) -> str:
        allowed = self.allowed()
        return f"{self.name}: {self.dtype.name}{allowed if allowed.startswith('[') else ' ' + allowed}"


class Predictor(Protocol):
    backend: str
    input_specs: tuple[InputSpec, ...]

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def _converted(name: str, value, spec: InputSpec) -> tuple[np.ndarray | None, str | None]:
    """``value`` as an array of the declared type, the way Core ML's ``predict`` takes it, or the
    reason it cannot be one."""
    if isinstance(value, (str, bytes, Mapping)) or value is None:
        return None, f"{name!r} is a {type(value).__name__}, not an array or a number"
    try:
        array = np.asarray(value)  # lists, numbers, numpy scalars and torch tensors alike
    except (TypeError, ValueError) as error:
        return None, f"{name!r} cannot be read as an array ({error})"
    if array.dtype.kind not in "biuf":
        return None, f"{name!r} holds {array.dtype.name} values, not numbers"
    if np.issubdtype(spec.dtype, np.integer) and array.size:
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            return None, f"{name!r} holds NaN or infinite values, which {spec.dtype.name} cannot hold"
        info = np.iinfo(spec.dtype)
        if array.min() < info.min or array.max() > info.max:
            return None, f"{name!r} holds values outside {spec.dtype.name}'s range [{info.min}, {info.max}]"
    with np.errstate(over="ignore"):  # float64 beyond fp16's range becomes infinite, as in Core ML
        return array.astype(spec.dtype, copy=False), None


def check_inputs(specs: tuple[InputSpec, ...], inputs: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Inputs as arrays of their declared types, or an ``InputMismatch`` listing every problem and
    the expected inputs.

    Conversion follows Core ML's ``predict``: any numeric array, list or number is converted to
    the input's declared type (float64 to float32, float to int32 truncating toward zero, as a C
    cast does). Refused: unknown or missing names, shapes the input does not allow, values that
    are not numbers, and values the declared integer type cannot hold (NaN, infinities, values out
    of its range, where a C cast is undefined)."""
    if not isinstance(inputs, Mapping):
        raise InputMismatch(f"inputs must be a dict of name -> array; got {type(inputs).__name__}. "
                            f"Expected: {', '.join(map(str, specs))}")
    expected = {s.name: s for s in specs}
    problems = [f"missing input {name!r}" for name in expected if name not in inputs]
    problems += [f"unexpected input {name!r}" for name in inputs if name not in expected]
    arrays = {}
    for name, spec in expected.items():
        if name not in inputs:
            continue
        array, problem = _converted(name, inputs[name], spec)
        if problem is None and not spec.allows(array.shape):
            problem = f"{name!r} has shape {list(array.shape)}, expected {spec.allowed()}"
        if problem is not None:
            problems.append(problem)
            continue
        arrays[name] = array
    if problems:
        raise InputMismatch("; ".join(problems) + ". Expected inputs: " + ", ".join(map(str, specs)))
    return arrays


def input_spec(feature) -> InputSpec:
    """An input (or state) of a Core ML model description (``spec.description.input[i]``): its
    dtype, default shape and, where it has them, its shape range or enumerated shapes."""
    from coremltools.proto import FeatureTypes_pb2  # lazy: coremltools imports torch; only packages read need it

    kind = feature.type.WhichOneof("Type")
    array = feature.type.stateType.arrayType if kind == "stateType" else feature.type.multiArrayType
    dtypes = {
        FeatureTypes_pb2.ArrayFeatureType.FLOAT32: np.float32,
        FeatureTypes_pb2.ArrayFeatureType.FLOAT16: np.float16,
        FeatureTypes_pb2.ArrayFeatureType.INT32: np.int32,
        FeatureTypes_pb2.ArrayFeatureType.DOUBLE: np.float64,
    }
    if kind not in ("multiArrayType", "stateType") or array.dataType not in dtypes:
        raise PackageError(f"input {feature.name!r}: a {feature.type.WhichOneof('Type')} input; "
                           "expected a float32, float16, float64 or int32 multi-array")
    flexibility = array.WhichOneof("ShapeFlexibility")
    ranges = shapes = None
    if flexibility == "shapeRange":
        ranges = tuple((int(r.lowerBound), None if r.upperBound < 0 else int(r.upperBound))
                       for r in array.shapeRange.sizeRanges)
    elif flexibility == "enumeratedShapes":
        shapes = tuple(tuple(int(d) for d in s.shape) for s in array.enumeratedShapes.shapes)
    return InputSpec(feature.name, tuple(int(d) for d in array.shape), np.dtype(dtypes[array.dataType]), ranges,
                     shapes)


_SCHEMA_DTYPES = {"float32": "float32", "float16": "float16", "int32": "int32", "double": "float64"}


def compiled_interface(bundle: Path) -> tuple[tuple[InputSpec, ...], dict, dict] | None:
    """A compiled ``.mlmodelc`` bundle's inputs, outputs ({name: (dtype, shape or None)}) and
    metadata, from the ``metadata.json`` Core ML's compiler leaves in it; None when it has none.
    Its schema gives no shape ranges, so the inputs take any size here and Core ML checks them."""
    try:
        document = json.loads((Path(bundle) / "metadata.json").read_text())
        meta = document[0] if isinstance(document, list) else document

        def shape(entry) -> tuple[int, ...]:
            return tuple(int(d) for d in json.loads(entry["shape"])) if entry.get("shape") else ()

        inputs = tuple(InputSpec(e["name"], shape(e), np.dtype(_SCHEMA_DTYPES[e["dataType"].lower()]),
                                 ranges=tuple((1, None) for _ in shape(e))) for e in meta["inputSchema"])
        outputs = {e["name"]: (_SCHEMA_DTYPES[e["dataType"].lower()], shape(e) or None) for e in meta["outputSchema"]}
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):  # [] or a wrong schema
        return None
    user = meta.get("userDefinedMetadata") or {}
    metadata = {"author": meta.get("author") or None, "version": meta.get("version") or None,
                **{k: v for k, v in user.items() if k.startswith("com.github.apple.coremltools")}}
    return inputs, outputs, metadata


def package_size(package: Path) -> int:
    """Bytes of an ``.mlpackage`` directory."""
    return sum(f.stat().st_size for f in Path(package).rglob("*") if f.is_file())


def resolve_backend(name: str) -> str:
    """``auto`` is Core ML on macOS and the MIL executor elsewhere."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of: {', '.join(BACKENDS)}")
    if name == "auto":
        return "coreml" if platform.system() == "Darwin" else "mil"
    return name


def describe_backend(backend: str) -> str:
    """What produced a backend's numbers, for every report that shows them."""
    if backend == "coreml":
        return "Apple's Core ML runtime"
    return "this project's MIL executor (runtimes/mil), not Core ML"


def program_precision(spec) -> dict:
    """The precision a package's program really computes in, read from its ops' output types in
    the model spec (no weights are read, so it is cheap on a 0.6B package written by anyone).

    Casts (which coremltools puts at fp16 programs' inputs and outputs) and consts are left
    out; a program with both fp16 and fp32 compute ops is "mixed".
    """
    from coremltools.proto import MIL_pb2  # lazy: base is numpy only (coremltools imports torch)

    function = spec.mlProgram.functions["main"]
    counts = Counter()
    for op in function.block_specializations[function.opset].operations:
        if op.type in ("const", "cast"):
            continue
        for out in op.outputs:
            if out.type.WhichOneof("type") != "tensorType":
                continue
            dtype = out.type.tensorType.dataType
            if dtype == MIL_pb2.DataType.FLOAT16:
                counts["float16"] += 1
            elif dtype == MIL_pb2.DataType.FLOAT32:
                counts["float32"] += 1
    if counts["float16"] and counts["float32"]:
        label = "mixed"
    else:
        label = "float16" if counts["float16"] else "float32"
    return {"compute_precision": label, "fp16_ops": counts["float16"], "fp32_ops": counts["float32"]}
