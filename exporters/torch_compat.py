"""Fixes for coremltools 9.0's torch frontend under torch 2.13 / numpy 2, in one place.

Each fix is a registered op override (coremltools' documented extension point), applied by
``install()`` before any conversion, and tested in ``tests/unit/test_torch_compat.py``.
"""

from __future__ import annotations

import numpy as np
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.frontend.torch import ops
from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op

_installed = False


def _scalar_cast(dtype, dtype_name):
    """``aten::int`` / ``aten::bool`` of a one-element constant tensor.

    coremltools casts such a constant with ``int(x.val)``; numpy 2 refuses ``int()`` of an
    array with ndim > 0 ("only 0-dimensional arrays can be converted to Python scalars").
    FastConformer's relative-position attention traces exactly that (``int()`` of the
    sequence length). Constants take the single element; everything else goes to
    coremltools' own implementation unchanged.
    """
    def convert(context, node):
        x = ops._get_inputs(context, node, expected=1)[0]
        if x.can_be_folded_to_const() and np.ndim(x.val) > 0 and np.size(x.val) == 1:
            context.add(mb.const(val=dtype(np.asarray(x.val).item()), name=node.name), node.name)
        else:
            ops._cast(context, node, dtype, dtype_name)

    convert.__name__ = f"_{dtype.__name__}"  # the registry keys coremltools' own "_int" / "_bool"
    return convert


def install() -> None:
    """Register the overrides (idempotent)."""
    global _installed
    if _installed:
        return

    register_torch_op(_scalar_cast(int, "int32"), torch_alias=["int"], override=True)
    register_torch_op(_scalar_cast(bool, "bool"), torch_alias=["bool"], override=True)
    _installed = True
