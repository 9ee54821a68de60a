"""Run an exported ML Program on the CPU by evaluating its MIL operations in order.

The program is read with coremltools' own loader, its weights blob by blob
(``runtimes.mil.weights``); the arithmetic is ``runtimes.mil.ops``.

Precision. Every op computes in float32, and each output is rounded to the type the program
declares, so an fp16 program carries fp16 tensors between ops exactly as its types say while
accumulating in fp32 inside an op. An fp16 tensor is held as fp32 values on the fp16 grid
(rounded in place, ties to even, overflowing to infinity, as a cast to fp16 does) and handed out
as fp16; beyond the first 128 MB, fp16 weights stay fp16 in memory and are widened into a
scratch buffer where an op reads them, so a large package takes about 1.1x its weight file, not
twice it. Apple's CPU path (BNNS) computes fp16 programs the same way in spirit; the GPU
accumulates in fp32 or fp16 depending on the kernel, and the Neural Engine computes in fp16
throughout (with wider accumulators in its matrix units), so fp16 results from the GPU and
Neural Engine differ from this executor by more than rounding. An fp32 program runs in fp32 here
and on the CPU and GPU; the Neural Engine has no fp32 and runs such ops on the CPU or GPU
instead.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import os
import time
from collections import ChainMap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from infra.compat import deployment_target_name
from runtimes.base import InputMismatch, InputSpec, PackageError, check_inputs, input_spec
from runtimes.mil.allocator import heap_only, keep_freed_memory
from runtimes.mil.ops import KERNELS, Unsupported
from runtimes.mil.ops.base import TORCH_ELEMENTWISE, torch_module, torch_tensor
from runtimes.mil.weights import load_mil_program


class UnsupportedOperation(Exception):
    """An op, or a parameter of one, that this executor does not implement."""


# ops the executor evaluates itself rather than through a kernel: constants, and the two whose
# nested blocks it runs
CONSTANT_OPS = frozenset({"const", "_const_symbolic"})
BLOCK_OPS = frozenset({"cond", "while_loop"})


def implemented_operations() -> frozenset[str]:
    """Every MIL op type this executor runs."""
    return frozenset(KERNELS) | CONSTANT_OPS | BLOCK_OPS


@dataclass
class _Step:
    name: str  # the op's first output name
    op_type: str
    kernel: object  # None for cond and while_loop, which run their blocks
    args: dict  # parameter -> ("var", name) | ("vars", [names]) | ("const", name)
    outputs: list[str]
    dtypes: list[np.dtype | None]  # None: a list, dictionary or state, kept as it is
    blocks: list[_Block] = field(default_factory=list)
    # bound once (``MILModel._bind``) rather than looked up at each call: the constant arguments
    # as the kernel takes them, and the rest, (parameter, kind, name); a weight kept fp16 stays
    # in ``live``, widened at each use
    fixed: dict = field(default_factory=dict)
    live: list = field(default_factory=list)


@dataclass
class _Block:
    """A nested block of ``cond`` (no inputs) or ``while_loop`` (the loop variables)."""
    inputs: list[str]
    steps: list[_Step]
    outputs: list[str]


class StateSlot:
    """One state of a stateful program: the array its ops read and update in place."""

    def __init__(self, value: np.ndarray):
        self.value = value


class MILState:
    """The states of one stream of predictions, as ``MLModel.make_state()`` gives them: zeros
    at first, carried from one ``predict(..., state=...)`` to the next."""

    def __init__(self, specs: tuple[InputSpec, ...]):
        self._specs = {spec.name: spec for spec in specs}
        self._slots = {spec.name: StateSlot(np.zeros(spec.shape, spec.dtype)) for spec in specs}

    def read_state(self, name: str) -> np.ndarray:
        return np.array(self._slot(name).value, copy=True)

    def write_state(self, name: str, value) -> None:
        self._slot(name)
        spec = self._specs[name]
        array = np.asarray(value)
        if array.shape != spec.shape:
            raise InputMismatch(f"state {name!r} has shape {list(spec.shape)}; got {list(array.shape)}")
        self._slots[name].value = array.astype(spec.dtype)

    def _slot(self, name: str) -> StateSlot:
        if name not in self._slots:
            raise KeyError(f"no state {name!r}; the program's states: {sorted(self._slots)}")
        return self._slots[name]


def _declared_dtype(var) -> np.dtype | None:
    """What an op's output is cast to: its element type; None for a list, dictionary or state."""
    from coremltools.converters.mil.mil import types  # lazy: coremltools imports torch: only when a program is read

    kind = var.sym_type
    if types.is_list(kind) or types.is_dict(kind) or types.is_state(kind):
        return None
    return _np_dtype(var.dtype)


def _np_dtype(builtin) -> np.dtype:
    from coremltools.converters.mil.mil import types  # lazy: as above

    if types.is_str(builtin):
        return np.dtype(object)
    return np.dtype(types.nptype_from_builtin(builtin))


def _program_input(name: str, var) -> InputSpec:
    """An input (or state) of an in-memory program: fixed dimensions as they are, symbolic ones 1 or more."""
    from coremltools.converters.mil.mil import types  # lazy: as above

    if types.is_state(var.sym_type):
        tensor = var.sym_type.wrapped_type()
        shape, dtype = tensor.get_shape(), tensor.get_primitive()
    else:
        shape, dtype = var.shape, var.dtype
    fixed = [isinstance(d, (int, np.integer)) for d in shape]
    dims = tuple(int(d) if f else 1 for d, f in zip(shape, fixed, strict=True))
    ranges = None if all(fixed) else tuple((d, d) if f else (1, None) for d, f in zip(dims, fixed, strict=True))
    return InputSpec(name, dims, _np_dtype(dtype), ranges)


def _is_state(var) -> bool:
    from coremltools.converters.mil.mil import types  # lazy: as above

    return types.is_state(var.sym_type)


def _opset_name(target) -> str:
    return "iOS15" if target is None else deployment_target_name(target)


_HALF, _SINGLE, _OBJECT = np.dtype(np.float16), np.dtype(np.float32), np.dtype(object)
# An integer cast to a type too narrow for its value (coremltools' add_int16_cast pass narrows the
# int32 inputs of gather, squeeze and topk in fp16 programs, so a length read from a flexible
# input's shape goes through int16) is carried intact, as Core ML is reported to return it
# (apple/coremltools issue 2222). Others saw such values wrap in some cases: it is device-dependent,
# and the fp16 range report (validation.ranges) flags every narrowing that meets such a value.
NARROW_INTEGERS = frozenset(np.dtype(t) for t in (np.int8, np.int16, np.uint8, np.uint16))

# ops whose fp16 output is already on the fp16 grid when their inputs are: they move, select or
# compare values without computing new ones, so rounding their output would change nothing
_EXACT_IN_HALF = frozenset({
    "reshape", "transpose", "expand_dims", "squeeze", "slice_by_index", "slice_by_size", "split", "concat",
    "stack", "tile", "gather", "gather_along_axis", "gather_nd", "identity", "reverse", "pad", "select",
    "reshape_like", "flatten2d", "sliding_windows", "crop", "band_part", "slice_update", "depth_to_space",
    "space_to_depth", "pixel_shuffle", "pixel_unshuffle", "space_to_batch", "batch_to_space", "relu",
    "maximum", "minimum", "reduce_max", "reduce_min",
})


class _Scratch:
    """Reusable buffers: fp16 <-> fp32 conversions without allocating (and page-faulting) anew."""

    def __init__(self):
        self._buffers: dict[str, object] = {}  # torch tensors, by the parameter they serve
        self._half = np.empty(0, np.float16)

    def buffer(self, key, size: int, dtype):
        torch = torch_module()
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < size:
            buffer = self._buffers[key] = torch.empty(max(size, 1), dtype=dtype)
        return buffer[:size]

    def widened(self, key, value: np.ndarray) -> np.ndarray:
        """An fp16 array as fp32, in the buffer ``key`` (valid until the next use of that key)."""
        out = self.buffer(key, value.size, torch_module().float32)
        out.copy_(torch_tensor(np.ascontiguousarray(value)).reshape(-1))  # loaded weights are read-only
        return out.numpy().reshape(value.shape)

    def holds(self, array: np.ndarray) -> bool:
        """Whether ``array`` may lie in one of the fp32 buffers."""
        return any(buffer.dtype == torch_module().float32 and np.may_share_memory(array, buffer.numpy())
                   for buffer in self._buffers.values())

    def round_to_half(self, values: np.ndarray) -> None:
        """Round a C-contiguous, writable fp32 array to the fp16 grid in place (through an fp16
        buffer held as a numpy array: slicing it costs less than slicing a torch tensor, and
        this runs after most ops)."""
        torch = torch_module()
        if self._half.size < values.size:
            self._half = np.empty(values.size, np.float16)
        half = torch.from_numpy(self._half[:values.size].reshape(values.shape))
        exact = torch.from_numpy(values)
        half.copy_(exact)
        exact.copy_(half)


def _single(value):
    """An fp16 array or scalar as a new fp32 one (large arrays through torch's F16C conversion)."""
    if isinstance(value, np.ndarray) and value.size >= TORCH_ELEMENTWISE:  # (a conversion is elementwise too)
        return torch_tensor(np.ascontiguousarray(value)).float().numpy()
    return value.astype(np.float32)  # a scalar stays a scalar


def _widened(value):
    """fp16 values as fp32, for computing; anything else as it is."""
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype == _HALF:
        return _single(value)
    return value


def load_program(model):
    """The MIL program, from an ``MLModel``, an ``.mlpackage`` path or a pymil ``Program``."""
    return load_program_and_description(model)[0]


def load_program_and_description(model):
    """The MIL program and the model description (its inputs' flexible shapes live there; None
    for a pymil ``Program``)."""
    import coremltools as ct  # lazy: as above
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
    return load_mil_program(spec, model.weights_dir or ""), spec.description


class MILModel:
    """Evaluates one function of an ML Program (``main``, or the package's default) with numpy.

    ``MILModel(model).predict(inputs)`` returns every program output by name, with the dtype and
    shape Core ML would give; ``predict(inputs, intermediates=[...])`` (or ``intermediates="all"``)
    adds the named top-level intermediate variables. A multi-function package runs the function
    named by ``function_name``, as ``MLModel`` takes it; a stateful program runs with
    ``predict(inputs, state=model.make_state())``.
    """

    backend = "mil"
    widen_at_load_bytes = 128 << 20  # fp16 weight bytes widened at load, smallest weights first

    def __init__(self, model, function_name: str | None = None):
        keep_freed_memory()  # runtimes.mil.allocator: activations reused, not faulted in anew each call
        self._constants: dict[str, object] = {}
        try:
            program, description = load_program_and_description(model)
        except (FileNotFoundError, TypeError):
            raise
        except Exception as error:  # protobuf, JSON and weight-file errors of a damaged package
            raise PackageError(f"{model}: not a readable ML Program package ({type(error).__name__}: {error}); "
                               "re-export or re-download it") from None
        self._scratch = _Scratch()
        self._rounding = True  # fp16 results on the fp16 grid; off for the fp32 shadow (``shadow``)
        self._kernel_clock: dict[str, float] | None = None  # seconds inside kernels, by op type (``profile``)
        self.steps = self._plan_program(program, description, function_name)
        # the program's ops refer to each other: collected now, the fp16 weights that widening
        # replaces are freed as it goes instead of staying until after the load. Only worth a
        # full collection (0.1 s and more in a large process) where widening leaves weights fp16.
        del program
        if sum(size for size, _ in self._half_constants()) > self.widen_at_load_bytes:
            gc.collect()
        self._widen_small_constants()
        self._bind(self.steps)
        self._declared = {name: dtype for step in self.steps
                          for name, dtype in zip(step.outputs, step.dtypes, strict=True)}
        self.variables = [name for step in self.steps for name in step.outputs]
        last_use = {}
        for i, step in enumerate(self.steps):
            for name in _reads(step):
                last_use[name] = i
        # variables no later step reads, freed after step i unless asked for
        self._released = [[] for _ in self.steps]
        for name, i in last_use.items():
            self._released[i].append(name)

    # -- loading --------------------------------------------------------------------------------

    def _plan_program(self, program, description, function_name) -> list[_Step]:
        if function_name is None:
            default = description.defaultFunctionName if description is not None else ""
            function_name = default or "main"
        if function_name not in program.functions:
            raise ValueError(f"no function {function_name!r} in the program; it has {sorted(program.functions)}")
        self.function_name = function_name
        function = program.functions[function_name]
        self.opset = _opset_name(function.opset_version)
        described = description
        if description is not None and len(description.functions):
            described = next(f for f in description.functions if f.name == function_name)
        if described is not None:
            self.input_specs = tuple(input_spec(feature) for feature in described.input)
            self.state_specs = tuple(input_spec(feature) for feature in described.state)
        else:  # a Program built in memory: its symbolic dimensions take any size
            self.input_specs = tuple(_program_input(name, var) for name, var in function.inputs.items()
                                     if not _is_state(var))
            self.state_specs = tuple(_program_input(name, var) for name, var in function.inputs.items()
                                     if _is_state(var))
        self.output_names = [var.name for var in function.outputs]
        # None: any shape (no shape declared, or a variadic dimension: coremltools names its symbols "*...")
        self._output_shapes = {var.name: tuple(var.shape) if var.shape is not None and not any(
            str(d).startswith("*") for d in var.shape) else None for var in function.outputs}
        steps: list[_Step] = []
        for op in function.operations:
            self._plan(op, steps)
        return steps

    def _where(self, op_type: str, name: str) -> str:
        return f"{op_type} (opset {self.opset}) at {name!r}"

    def _fail(self, op, detail: str) -> UnsupportedOperation:
        return UnsupportedOperation(f"{self._where(op.op_type, op.outputs[0].name)}: {detail}")

    def _arguments(self, op, accepted) -> dict:
        args = {}
        for param, var in op.inputs.items():
            if accepted is not None and param not in accepted:
                raise self._fail(op, f"parameter {param!r} not implemented")
            if isinstance(var, (list, tuple)):
                args[param] = ("vars", [v.name for v in var])
            elif var.name in self._constants:
                args[param] = ("const", var.name)
            else:
                args[param] = ("var", var.name)
        return args

    def _plan(self, op, steps: list[_Step]) -> None:
        if op.op_type in CONSTANT_OPS:
            self._constants[op.outputs[0].name] = op.outputs[0].val
            return
        outputs, dtypes = [v.name for v in op.outputs], [_declared_dtype(v) for v in op.outputs]
        if op.op_type in BLOCK_OPS:
            blocks = [self._plan_block(block) for block in op.blocks]
            steps.append(_Step(outputs[0], op.op_type, None, self._arguments(op, None), outputs, dtypes, blocks))
            return
        fn = KERNELS.get(op.op_type)
        if fn is None:
            raise self._fail(op, "operation not implemented by the MIL executor")
        accepted = set(inspect.signature(fn).parameters)
        if "opset" in accepted:  # a kernel whose rules changed between opsets
            fn = functools.partial(fn, opset=self.opset)
            accepted.discard("opset")
        step = _Step(outputs[0], op.op_type, fn, self._arguments(op, accepted), outputs, dtypes)
        if op.op_type.startswith("constexpr_"):
            # compile-time ops: decompress once, the result is an ordinary constant
            self._bind([step])
            with np.errstate(all="ignore"):
                values = self._run_step(step, {})
            for name, value in zip(step.outputs, values, strict=True):
                self._constants[name] = value
            return
        steps.append(step)

    def _plan_block(self, block) -> _Block:
        steps: list[_Step] = []
        for op in block.operations:
            self._plan(op, steps)
        return _Block([v.name for v in block.inputs], steps, [v.name for v in block.outputs])

    def _half_constants(self) -> list[tuple[int, str]]:
        """(bytes, name) of each fp16 constant, smallest first."""
        return sorted((value.nbytes, name) for name, value in self._constants.items()
                      if isinstance(value, (np.ndarray, np.generic)) and value.dtype == _HALF)

    def _widen_small_constants(self) -> None:
        """fp16 constants are widened once here, smallest first, up to ``widen_at_load_bytes``;
        the rest stay fp16 and are widened into a scratch buffer at each use. A full-size joint
        or decoder thus holds all its weights in fp32, an encoder about 1.1x its weight file
        (widening its large weights at each use measured no slower than holding a quarter of
        them in fp32)."""
        budget = self.widen_at_load_bytes
        for size, name in self._half_constants():
            if size > budget:
                break
            budget -= size
            self._constants[name] = _single(self._constants[name])

    def _bind(self, steps: list[_Step]) -> None:
        """Each step's constant arguments resolved now, once (again when constants are replaced)."""
        for step in steps:
            step.fixed, step.live = {}, []
            for param, (kind, ref) in step.args.items():
                value = self._constants[ref] if kind == "const" else None
                if kind == "const" and not (isinstance(value, np.ndarray) and value.dtype == _HALF):
                    step.fixed[param] = value
                else:
                    step.live.append((param, kind, ref))
            for block in step.blocks:
                self._bind(block.steps)

    @property
    def nbytes(self) -> int:
        """Bytes of the weights held in memory (the fp16 weights not widened at load as fp16)."""
        return sum(value.nbytes for value in self._constants.values() if isinstance(value, (np.ndarray, np.generic)))

    # -- running --------------------------------------------------------------------------------

    def _resolve(self, param, kind, ref, env):
        if kind == "const":
            value = self._constants[ref]
            if isinstance(value, np.ndarray) and value.dtype == _HALF:  # a large weight
                return self._scratch.widened(param, value)
            return value
        if kind == "var":
            return _widened(env[ref])
        return [_widened(env[r]) if r in env else _widened(self._constants[r]) for r in ref]

    def _run_step(self, step: _Step, env) -> list:
        args = dict(step.fixed)
        for param, kind, ref in step.live:
            args[param] = self._resolve(param, kind, ref, env)
        try:  # (under np.errstate(all="ignore"), set once per prediction: IEEE results, no warnings)
            if step.kernel is None:
                result = self._run_blocks(step, args, env)
            elif self._kernel_clock is None:
                result = step.kernel(**args)
            else:
                start = time.perf_counter()
                result = step.kernel(**args)
                self._kernel_clock[step.op_type] = self._kernel_clock.get(step.op_type, 0.0) + \
                    time.perf_counter() - start
        except Unsupported as error:
            raise UnsupportedOperation(f"{self._where(step.op_type, step.name)}: {error}") from None
        except (ValueError, IndexError, TypeError, KeyError) as error:
            # in the words of Core ML's predict for an op that fails at run time (an index out of
            # range under validate_indices, say)
            raise RuntimeError(f"Unable to compute the prediction using ML Program: "
                               f"{self._where(step.op_type, step.name)} failed: {error}") from error
        results = result if isinstance(result, tuple) else (result,)
        return [self._as_declared(r, dtype, step.op_type, args) for r, dtype in zip(results, step.dtypes, strict=True)]

    def _as_declared(self, value, dtype: np.dtype | None, op_type: str, args: dict):
        """A kernel's result as the type the program declares (fp16 as fp32 on the fp16 grid);
        lists, dictionaries, states and strings as they are. A result in a scratch buffer is
        copied out: the buffer is reused by the next op."""
        if dtype is None or dtype == _OBJECT:
            return value
        array = np.asarray(value)
        if dtype == _HALF and array.dtype == _SINGLE and self._rounding and op_type not in _EXACT_IN_HALF:
            # most ops of an fp16 program: an fp32 result to round (checked first, it runs after each)
            if not (array.flags.c_contiguous and array.flags.writeable) or _aliases(array, args):
                array = np.array(array, dtype=np.float32, order="C")  # a fresh copy, to round in place
            self._scratch.round_to_half(array)
            return array
        if dtype in NARROW_INTEGERS and array.dtype.kind in "iu" and array.size and not (
                np.iinfo(dtype).min <= array.min() and array.max() <= np.iinfo(dtype).max):
            return array.copy() if self._scratch.holds(array) else array  # intact (NARROW_INTEGERS)
        if dtype != _HALF or (op_type in _EXACT_IN_HALF and array.dtype == _SINGLE) or not self._rounding:
            array = array.astype(dtype if dtype != _HALF else _SINGLE, copy=False)
            return array.copy() if self._scratch.holds(array) else array
        if array.dtype != _SINGLE or not array.flags.c_contiguous or not array.flags.writeable \
                or _aliases(array, args):
            array = np.array(array, dtype=np.float32, order="C")  # a fresh copy, to round in place
        self._scratch.round_to_half(array)
        return array

    def _run_blocks(self, step: _Step, args: dict, env) -> tuple:
        """``cond`` runs the block its predicate picks; ``while_loop`` runs its body while its
        condition block says so, each pass on the previous pass's values."""
        if step.op_type == "cond":
            block = step.blocks[0] if bool(np.asarray(args["pred"])) else step.blocks[1]
            return tuple(self._run_block(block, [], env))
        condition, body = step.blocks
        values = list(args["loop_vars"])
        while bool(np.asarray(self._run_block(condition, values, env)[0])):
            values = self._run_block(body, values, env)
        return tuple(values)

    def _run_block(self, block: _Block, values: list, env) -> list:
        local = ChainMap(dict(zip(block.inputs, values, strict=True)), env)  # writes stay in the block
        for step in block.steps:
            for name, value in zip(step.outputs, self._run_step(step, local), strict=True):
                local[name] = value
        return [local[name] if name in local else self._constants[name] for name in block.outputs]

    def weights_in(self, compressed: MILModel) -> list[tuple[str, str, np.ndarray]]:
        """Where ``compressed`` (this program after a weight compression pass: the same ops,
        reading other constants) holds this program's weights otherwise: (the reading op's first
        output, the constant's name here, its decompressed value there), one per weight the pass
        changed."""
        theirs = {step.name: step for step in compressed.steps}
        found = []
        for step in self.steps:
            other = theirs.get(step.name)
            for param, (kind, ref) in step.args.items():
                there = other.args.get(param) if other is not None else None
                if kind == "const" and there is not None and there[0] == "const" and there[1] != ref:
                    found.append((step.name, ref, compressed._constants[there[1]]))
        return found

    @contextlib.contextmanager
    def constants_replaced(self, values: Mapping[str, np.ndarray]):
        """Inside: these constants replaced (some weights swapped for their compressed values, to
        measure what compressing them alone costs); restored on the way out."""
        saved = {name: self._constants[name] for name in values}
        self._constants.update(values)
        self._bind(self.steps)
        try:
            yield self
        finally:
            self._constants.update(saved)
            self._bind(self.steps)

    def make_state(self) -> MILState:
        """Fresh states (zeros) for a stateful program, to pass to ``predict`` call after call."""
        return MILState(self.state_specs)

    def predict(self, inputs: Mapping[str, np.ndarray], intermediates: Iterable[str] | str = (),
                state: MILState | None = None) -> dict:
        with _running():
            return self._predict(inputs, intermediates, state)

    def profile(self, inputs: Mapping[str, np.ndarray], state: MILState | None = None,
                kernels_only: bool = False) -> dict[str, float]:
        """Seconds spent in each op type over one prediction, the costliest first: where the
        executor's time goes (the ops at the program's top level; a loop's body counts as its loop).
        ``kernels_only``: the time inside the ops' kernels alone, without the executor's own work
        around each (widening fp16 weights, rounding results to fp16, copying, freeing); the ops of
        a loop's body then count as themselves. The difference is what a leaner executor could save."""
        spent: dict[str, float] = {}
        with _running():
            if not kernels_only:
                self._predict(inputs, (), state, spent)
            else:
                self._kernel_clock = spent
                try:
                    self._predict(inputs, (), state)
                finally:
                    self._kernel_clock = None
        return dict(sorted(spent.items(), key=lambda item: -item[1]))

    def _predict(self, inputs, intermediates, state, spent: dict[str, float] | None = None) -> dict:
        env = {name: _widened(value) for name, value in check_inputs(self.input_specs, inputs).items()}
        if self.state_specs:
            if not isinstance(state, MILState):
                raise InputMismatch(f"the program has states ({', '.join(s.name for s in self.state_specs)}): "
                                    "pass state=model.make_state()")
            env.update({spec.name: state._slot(spec.name) for spec in self.state_specs})
        if isinstance(intermediates, str):  # one name, or "all"
            keep = set(self.variables) if intermediates == "all" else {intermediates}
        else:
            keep = set(intermediates)
        unknown = keep - set(self.variables) - set(env)
        if unknown:
            raise KeyError(f"no such variables in the program: {sorted(unknown)[:5]}")
        keep |= set(self.output_names)
        for i, step in enumerate(self.steps):
            start = time.perf_counter() if spent is not None else 0.0
            for name, value in zip(step.outputs, self._run_step(step, env), strict=True):
                env[name] = value
            if spent is not None:
                spent[step.op_type] = spent.get(step.op_type, 0.0) + time.perf_counter() - start
            for name in self._released[i]:
                if name not in keep:
                    env.pop(name, None)
        results = {name: env[name] if name in env else self._constants[name] for name in self.output_names}
        for name, value in results.items():
            declared = self._output_shapes[name]
            if isinstance(value, np.ndarray) and declared is not None and not _fits(value.shape, declared):
                raise RuntimeError(f"output {name!r} came out as {list(value.shape)}, "
                                   f"the program declares {list(declared)}")
        results.update({name: env[name] for name in keep if name in env and name not in results})
        declared = {**{spec.name: spec.dtype for spec in self.input_specs}, **self._declared}
        return {name: value.astype(_HALF) if declared.get(name) == _HALF and isinstance(value, np.ndarray) else value
                for name, value in results.items()}

    def shadow(self, inputs: Mapping[str, np.ndarray], observe) -> None:
        """The program run twice in step, as declared (fp16 results rounded to fp16) and as its
        fp32 shadow (the same ops on the same weights, every result kept in fp32): after each
        top-level op, ``observe(op_type, name, declared, shadow, reads, dtype)`` for each of its
        array results (``reads``: the variables the op read; ``dtype``: the one the program
        declares, fp16 results being fp32 on the fp16 grid). Nothing is kept beyond what later
        ops read, so a large program fits."""
        if self.state_specs:
            raise ValueError("a stateful program: its states would advance twice; shadow its stateless twin")
        with _running():
            declared = {name: _widened(value) for name, value in check_inputs(self.input_specs, inputs).items()}
            widened = dict(declared)
            for i, step in enumerate(self.steps):
                rounded = self._run_step(step, declared)
                self._rounding = False
                try:
                    exact = self._run_step(step, widened)
                finally:
                    self._rounding = True
                reads = [ref for kind, ref in step.args.values() if kind == "var"]
                for name, a, b in zip(step.outputs, rounded, exact, strict=True):
                    declared[name], widened[name] = a, b
                    if isinstance(a, np.ndarray):
                        observe(step.op_type, name, a, b, reads, self._declared[name])
                for name in self._released[i]:
                    declared.pop(name, None)
                    widened.pop(name, None)

    def first_non_finite(self, inputs: Mapping[str, np.ndarray], state: MILState | None = None) -> str | None:
        """Where a NaN or an infinity first appears in the program on ``inputs``: a non-finite input,
        or the first op (in program order) whose output holds one; None when nothing does."""
        arrays = check_inputs(self.input_specs, inputs)
        for name, value in arrays.items():
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                return f"input {name!r} is already non-finite"
        values = self.predict(arrays, intermediates="all", state=state)
        for step in self.steps:
            for name in step.outputs:
                value = values.get(name)
                if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating) \
                        and not np.isfinite(value).all():
                    return f"{self._where(step.op_type, name)} is the first op with a non-finite output"
        return None


@contextlib.contextmanager
def _running():
    """How a prediction runs: the collector paused, every block from the heap
    (``runtimes.mil.allocator.heap_only``), IEEE results without warnings."""
    with _collector_paused(), heap_only(), np.errstate(all="ignore"):
        yield


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off for one prediction: a prediction makes no cycles,
    but its thousands of small objects trigger full collections, whose cost grows with everything
    else the process holds (a loaded NeMo model: 20 % of a full-size encoder call in a test
    session). Restored afterwards, also on an error."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _aliases(array: np.ndarray, args: dict) -> bool:
    """Whether ``array`` may share memory with an argument of its op (a view of it, or the
    argument itself), which rounding in place would change. An array that owns its memory can
    only be an argument itself."""
    owner = array.base is None
    for value in args.values():
        for item in value if isinstance(value, list) else (value,):
            if item is array or not owner and isinstance(item, np.ndarray) and np.may_share_memory(array, item):
                return True
    return False


def _fits(shape: tuple, declared: tuple) -> bool:
    """Whether ``shape`` has the declared rank and every declared size (symbolic dimensions, and
    the -1 coremltools writes for some sizes known only at run time, take any size)."""
    return len(shape) == len(declared) and all(
        not isinstance(d, (int, np.integer)) or d < 0 or d == n for n, d in zip(shape, declared, strict=True))


def _reads(step: _Step):
    """Every variable ``step`` reads, its nested blocks' reads included."""
    for kind, ref in step.args.values():
        yield from ref if kind == "vars" else [ref] if kind == "var" else []
    for block in step.blocks:
        yield from block.outputs
        for inner in block.steps:
            yield from _reads(inner)
