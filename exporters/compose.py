"""Chain converted ML Programs into one: a fused component from the packages it fuses.

The mel_encoder is the preprocessor followed by the encoder. Tracing and converting it again
repeats the encoder's conversion, the longest of the export (a full-size fp16 encoder: 16 to 23 s
each time); chaining the two converted programs instead takes the ops as they are, weights
included, and only writes the package. The chained program computes what the two packages
compute one after the other, op for op (``tests/unit/test_compose.py`` holds it to the traced
mel_encoder on the executor).
"""

from __future__ import annotations

from collections.abc import Sequence

from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil import Function, Program


class NotChainable(Exception):
    """Programs this module cannot chain (the caller traces the fused component instead)."""


def chain(programs: Sequence[Program], prefixes: Sequence[str]) -> tuple[Program, list[dict[str, str]]]:
    """One program running ``programs``' main functions in turn, each later one's inputs fed by
    the earlier ones' outputs of the same names; its inputs are the first's, its outputs the
    last's. An op or output name an earlier program shares with a later one (an op's or an
    output's) is renamed with that program's prefix: coremltools' passes and compression configs
    find ops by name. Returns the program and, per program, its renamed variables (old name -> new)."""
    functions = [program.functions["main"] for program in programs]
    first, last = functions[0], functions[-1]
    for function in functions:
        if any(op.blocks for op in function.operations):
            raise NotChainable("an op with nested blocks (cond, while_loop)")
        if any(not all(isinstance(d, int) for d in var.shape) for var in function.inputs.values()):
            raise NotChainable("an input of flexible shape")
    inputs = {name: mb.placeholder(shape=var.shape, dtype=var.dtype) for name, var in first.inputs.items()}
    renamed: list[dict[str, str]] = [{} for _ in functions]
    with Function(inputs, opset_version=last.opset_version) as chained:
        produced = {}  # output name -> the chained program's var, of the programs copied so far
        new_of = {id(var): chained.inputs[name] for name, var in first.inputs.items()}
        for i, function in enumerate(functions):
            if i:
                missing = set(function.inputs) - set(produced)
                if missing:
                    raise NotChainable(f"no earlier program outputs {sorted(missing)}")
                new_of.update({id(var): produced[name] for name, var in function.inputs.items()})
            later = {name for f in functions[i + 1:] for op in f.operations  # op names and output names
                     for name in (op.name, *(var.name for var in op.outputs))}
            for op in function.operations:
                _copy(op, new_of, lambda name, i=i, later=later: name if name not in later else f"{prefixes[i]}{name}",
                      renamed[i])
            produced = {var.name: new_of[id(var)] for var in function.outputs}
        chained.set_outputs([new_of[id(var)] for var in last.outputs])
    program = Program()
    program.add_function("main", chained)
    return program, renamed


def _copy(op, new_of: dict, name_of, renamed: dict[str, str]) -> None:
    """Emit ``op`` again in the function being built, on the copies of its inputs, its outputs
    keeping their names (``name_of`` may rename them)."""
    def mapped(var):
        if id(var) in new_of:
            return new_of[id(var)]
        if var.op is None and var.val is not None:  # a default an op filled in itself
            return var.val
        raise NotChainable(f"{op.name}: input {var.name} comes from no earlier op")

    if op.op_type == "const":
        outputs = (mb.const(val=op.outputs[0].val, name=name_of(op.name)),)
    else:
        kwargs = {param: tuple(mapped(v) for v in var) if isinstance(var, (list, tuple)) else mapped(var)
                  for param, var in op.inputs.items()}
        result = getattr(mb, op.op_type)(**kwargs, name=name_of(op.name))
        outputs = result if isinstance(result, (list, tuple)) else (result,)
    if len(outputs) != len(op.outputs):
        raise NotChainable(f"{op.name}: {len(outputs)} outputs copied of {len(op.outputs)}")
    for old, new in zip(op.outputs, outputs, strict=True):
        name = name_of(old.name)
        new.set_name(name)
        if name != old.name:
            renamed[old.name] = name
        new_of[id(old)] = new
