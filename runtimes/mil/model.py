"""Run an exported ML Program on the CPU by evaluating its MIL operations in order.

The program and its weights are read with coremltools' own loaders (the proto and
``weights/weight.bin``); the arithmetic is ``runtimes.mil.ops``.

Precision. Every op computes in float32: fp16 inputs are widened on entry, and each output is
rounded to the type the program declares, so an fp16 program carries fp16 tensors between ops
exactly as its types say while accumulating in fp32 inside an op. Apple's CPU path (BNNS) computes
fp16 programs the same way in spirit; the GPU accumulates in fp32 or fp16 depending on the
kernel, and the Neural Engine computes in fp16 throughout (with wider accumulators in its
matrix units), so fp16 results from the GPU and Neural Engine differ from this executor by more
than rounding. An fp32 program runs in fp32 here and on the CPU and GPU; the Neural Engine has
no fp32 and runs such ops on the CPU or GPU instead.
"""

from __future__ import annotations

import gc
import inspect
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtimes.base import InputSpec, PackageError, check_inputs, input_spec
from runtimes.mil.ops import KERNELS, Unsupported


class UnsupportedOperation(Exception):
    """An op, or a parameter of one, that this executor does not implement."""


@dataclass
class _Step:
    name: str  # the op's first output name
    op_type: str
    kernel: object
    args: dict  # parameter -> ("var", name) | ("vars", [names]) | ("const", name)
    outputs: list[str]
    dtypes: list[np.dtype]


def _np_dtype(builtin) -> np.dtype:
    from coremltools.converters.mil.mil import types  # lazy: coremltools imports torch: only when a program is read

    if types.is_str(builtin):
        return np.dtype(object)
    return np.dtype(types.nptype_from_builtin(builtin))


def _program_input(name: str, var) -> InputSpec:
    """An input of an in-memory program: fixed dimensions as they are, symbolic ones 1 or more."""
    fixed = [isinstance(d, (int, np.integer)) for d in var.shape]
    shape = tuple(int(d) if f else 1 for d, f in zip(var.shape, fixed))
    ranges = None if all(fixed) else tuple((d, d) if f else (1, None) for d, f in zip(shape, fixed))
    return InputSpec(name, shape, _np_dtype(var.dtype), ranges)


def _opset_name(target) -> str:
    from coremltools.converters.mil._deployment_compatibility import AvailableTarget  # lazy: as above

    return "iOS15" if target is None else AvailableTarget(target).name


def _widened(value):
    """fp16 values as fp32, for computing; anything else as it is."""
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype == np.float16:
        return value.astype(np.float32)
    return value


def load_program(model):
    """The MIL program, from an ``MLModel``, an ``.mlpackage`` path or a pymil ``Program``."""
    return load_program_and_description(model)[0]


def load_program_and_description(model):
    """The MIL program and the model description (its inputs' flexible shapes live there; None
    for a pymil ``Program``)."""
    import coremltools as ct  # lazy: as above
    from coremltools.converters.mil.frontend.milproto.load import load  # lazy: as above
    from coremltools.converters.mil.mil import Program  # lazy: as above

    if isinstance(model, Program):
        return model, None
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.suffix == ".mlmodelc":
            raise TypeError(f"{path} is a compiled .mlmodelc bundle: only Core ML (macOS, --backend coreml) loads "
                            "those; the MIL executor reads .mlpackage programs")
        if not (path / "Manifest.json").is_file():
            raise FileNotFoundError(f"{path} is not an .mlpackage (no Manifest.json)")
        model = ct.models.MLModel(str(path), skip_model_load=True)
    if not isinstance(model, ct.models.MLModel):
        raise TypeError(f"expected an MLModel, a path to an .mlpackage or a MIL Program, got {type(model).__name__}")
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise TypeError(f"the model is a {spec.WhichOneof('Type')}, not an ML Program")
    return load(spec, spec.specificationVersion, file_weights_dir=model.weights_dir or ""), spec.description


class MILModel:
    """Evaluates an ML Program's ``main`` function with numpy.

    ``MILModel(model).predict(inputs)`` returns every program output by name, with the dtype and
    shape Core ML would give; ``predict(inputs, intermediates=[...])`` (or ``intermediates="all"``)
    adds the named intermediate variables.
    """

    backend = "mil"

    def __init__(self, model):
        self._constants: dict[str, object] = {}
        self.steps: list[_Step] = []
        try:
            program, description = load_program_and_description(model)
        except (FileNotFoundError, TypeError):
            raise
        except Exception as error:  # protobuf, JSON and weight-file errors of a damaged package
            raise PackageError(f"{model}: not a readable ML Program package ({type(error).__name__}: {error}); "
                               "re-export or re-download it") from None
        self._plan_program(program, description)
        self._widen_constants()
        self.variables = [name for step in self.steps for name in step.outputs]
        last_use = {}
        for i, step in enumerate(self.steps):
            for kind, ref in step.args.values():
                for name in (ref if kind == "vars" else [ref] if kind == "var" else []):
                    last_use[name] = i
        # variables no later step reads, freed after step i unless asked for
        self._released = [[] for _ in self.steps]
        for name, i in last_use.items():
            self._released[i].append(name)

    # -- loading --------------------------------------------------------------------------------

    def _plan_program(self, program, description) -> None:
        function = program.functions["main"]
        self.opset = _opset_name(function.opset_version)
        if description is not None:
            self.input_specs = tuple(input_spec(feature) for feature in description.input)
        else:  # a Program built in memory: its symbolic dimensions take any size
            self.input_specs = tuple(_program_input(name, var) for name, var in function.inputs.items())
        self.output_names = [var.name for var in function.outputs]
        self._output_shapes = {var.name: tuple(var.shape) for var in function.outputs}
        for op in function.operations:
            self._plan(op)

    def _where(self, op_type: str, name: str) -> str:
        return f"{op_type} (opset {self.opset}) at {name!r}"

    def _fail(self, op, detail: str) -> UnsupportedOperation:
        return UnsupportedOperation(f"{self._where(op.op_type, op.outputs[0].name)}: {detail}")

    def _plan(self, op) -> None:
        if op.op_type == "const":
            self._constants[op.outputs[0].name] = op.outputs[0].val
            return
        fn = KERNELS.get(op.op_type)
        if fn is None:
            raise self._fail(op, "operation not implemented by the MIL executor")
        accepted = inspect.signature(fn).parameters
        args = {}
        for param, var in op.inputs.items():
            if param not in accepted:
                raise self._fail(op, f"parameter {param!r} not implemented")
            if isinstance(var, (list, tuple)):
                args[param] = ("vars", [v.name for v in var])
            elif var.name in self._constants:
                args[param] = ("const", var.name)
            else:
                args[param] = ("var", var.name)
        step = _Step(op.outputs[0].name, op.op_type, fn, args,
                     [v.name for v in op.outputs], [_np_dtype(v.dtype) for v in op.outputs])
        if op.op_type.startswith("constexpr_"):
            # compile-time ops: decompress once, the result is an ordinary constant
            for name, value in zip(step.outputs, self._run_step(step, {})):
                self._constants[name] = value
            return
        self.steps.append(step)

    def _widen_constants(self) -> None:
        """fp16 constants become fp32 once, here, rather than at every use: each op computes in
        fp32 anyway. Done after the loaded program is released, one array at a time, so the fp16
        and fp32 copies of all weights never coexist."""
        half = [name for name, value in self._constants.items()
                if isinstance(value, (np.ndarray, np.generic)) and value.dtype == np.float16]
        if sum(self._constants[name].nbytes for name in half) > 64 << 20:
            gc.collect()  # the loaded program is a graph of cycles: free its references to the weights
        for name in half:
            self._constants[name] = _widened(self._constants[name])

    @property
    def nbytes(self) -> int:
        """Bytes of the weights held in memory (fp32 after widening)."""
        return sum(value.nbytes for value in self._constants.values() if isinstance(value, (np.ndarray, np.generic)))

    # -- running --------------------------------------------------------------------------------

    def _resolve(self, kind, ref, env):
        if kind == "const":  # widened once at load
            return self._constants[ref]
        if kind == "var":
            return _widened(env[ref])
        return [_widened(env[r]) if r in env else self._constants[r] for r in ref]

    def _run_step(self, step: _Step, env) -> list[np.ndarray]:
        args = {param: self._resolve(kind, ref, env) for param, (kind, ref) in step.args.items()}
        try:
            with np.errstate(all="ignore"):
                result = step.kernel(**args)
        except Unsupported as error:
            raise UnsupportedOperation(f"{self._where(step.op_type, step.name)}: {error}") from None
        except (ValueError, IndexError, TypeError) as error:
            raise RuntimeError(f"{self._where(step.op_type, step.name)} failed: {error}") from error
        results = result if isinstance(result, tuple) else (result,)
        with np.errstate(all="ignore"):
            return [np.asarray(r).astype(dtype, copy=False) for r, dtype in zip(results, step.dtypes)]

    def predict(self, inputs: Mapping[str, np.ndarray], intermediates: Iterable[str] | str = ()) -> dict:
        env = dict(check_inputs(self.input_specs, inputs))
        if isinstance(intermediates, str):  # one name, or "all"
            keep = set(self.variables) if intermediates == "all" else {intermediates}
        else:
            keep = set(intermediates)
        unknown = keep - set(self.variables) - set(env)
        if unknown:
            raise KeyError(f"no such variables in the program: {sorted(unknown)[:5]}")
        keep |= set(self.output_names)
        for i, step in enumerate(self.steps):
            for name, value in zip(step.outputs, self._run_step(step, env)):
                env[name] = value
            for name in self._released[i]:
                if name not in keep:
                    env.pop(name, None)
        results = {name: env[name] for name in self.output_names}
        for name, value in results.items():
            declared = self._output_shapes[name]
            if all(isinstance(d, (int, np.integer)) for d in declared) and value.shape != tuple(declared):
                raise RuntimeError(f"output {name!r} came out as {list(value.shape)}, "
                                   f"the program declares {list(declared)}")
        results.update({name: env[name] for name in keep if name in env and name not in results})
        return results

    def first_non_finite(self, inputs: Mapping[str, np.ndarray]) -> str | None:
        """Where a NaN or an infinity first appears in the program on ``inputs``: a non-finite input,
        or the first op (in program order) whose output holds one; None when nothing does."""
        arrays = check_inputs(self.input_specs, inputs)
        for name, value in arrays.items():
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                return f"input {name!r} is already non-finite"
        values = self.predict(arrays, intermediates="all")
        for step in self.steps:
            for name in step.outputs:
                value = values.get(name)
                if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating) \
                        and not np.isfinite(value).all():
                    return f"{self._where(step.op_type, name)} is the first op with a non-finite output"
        return None
