"""Overrides of coremltools 9.0, in one place: fixes of its torch frontend under torch 2.13 /
numpy 2, and one faster graph pass.

Each is registered through coremltools' own extension points (``register_torch_op`` and
``register_pass`` with ``override=True``) for the duration of a conversion (``overrides()``), and
tested in ``tests/unit/test_torch_compat.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op
from coremltools.converters.mil.mil.passes.defs.quantization import add_fp16_cast
from coremltools.converters.mil.mil.passes.pass_registry import register_pass

from infra.compat import pass_registry, torch_op_cast, torch_op_inputs, torch_op_registry

FP16_PASS = "common::add_fp16_cast"



def _scalar_cast(dtype, dtype_name):
    """``aten::int`` / ``aten::bool`` of a one-element constant tensor.

    coremltools casts such a constant with ``int(x.val)``; numpy 2 refuses ``int()`` of an
    array with ndim > 0 ("only 0-dimensional arrays can be converted to Python scalars").
    FastConformer's relative-position attention traces exactly that (``int()`` of the
    sequence length). Constants take the single element; everything else goes to
    coremltools' own implementation unchanged.
    """
    def convert(context, node):
        x = torch_op_inputs(context, node, expected=1)[0]
        if x.can_be_folded_to_const() and np.ndim(x.val) > 0 and np.size(x.val) == 1:
            context.add(mb.const(val=dtype(np.asarray(x.val).item()), name=node.name), node.name)
        else:
            torch_op_cast(context, node, dtype, dtype_name)

    convert.__name__ = f"_{dtype.__name__}"  # the registry keys coremltools' own "_int" / "_bool"
    return convert


class _AddFp16Cast(add_fp16_cast):
    """coremltools' fp16 pass with the same overflow rule, computed in one pass over each weight.

    An op stays fp32 when a constant fp32 input holds a finite value (below 1e38 in magnitude)
    that fp16 cannot represent (above 65504). coremltools finds those values through
    ``np.where`` of a mask, which allocates an index array per weight: a sixth of a full-size
    encoder's conversion. Same decisions, same program.
    """

    @staticmethod
    def fp16_overflow(op) -> bool:
        for inputs in op.inputs.values():
            for var in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
                if var.op is None or var.op.op_type != "const" or not var.is_tensor_or_scalar_of(dtype="fp32"):
                    continue
                magnitude = np.abs(np.asarray(var.op.val.val))
                if magnitude.size and not magnitude.max() <= 65504 \
                        and np.any((magnitude > 65504) & (magnitude < 1e38)):  # max is NaN with a NaN
                    return True
        return False


@contextmanager
def overrides() -> Iterator[None]:
    """The overrides registered for the duration of a conversion, and coremltools' own registry
    entries put back after it: code of the same process converting without this project (a
    user's own ``ct.convert``) gets coremltools unchanged. Nests."""
    ops, passes = torch_op_registry(), pass_registry()
    names = ("int", "_int", "bool", "_bool")
    saved_ops, saved_pass = {n: ops.get(n) for n in names}, passes.get(FP16_PASS)
    register_torch_op(_scalar_cast(int, "int32"), torch_alias=["int"], override=True)
    register_torch_op(_scalar_cast(bool, "bool"), torch_alias=["bool"], override=True)
    register_pass(namespace="common", override=True, name="add_fp16_cast")(_AddFp16Cast)
    try:
        yield
    finally:
        for name, function in saved_ops.items():
            if function is None:
                ops.pop(name, None)
            else:
                ops[name] = function
        if saved_pass is None:
            passes.pop(FP16_PASS, None)
        else:
            passes[FP16_PASS] = saved_pass
