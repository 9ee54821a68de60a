"""Each coremltools/torch 2.13 fix converts what coremltools 9.0 alone rejects; the faster fp16
pass decides exactly as coremltools' own."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
import torch
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.frontend.torch import ops
from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY
from coremltools.converters.mil.mil.passes.defs.quantization import add_fp16_cast
from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from exporters import torch_compat

FP16 = torch_compat.FP16_PASS


class RelativePositionSlice(torch.nn.Module):
    """Slices a position table around its centre by the input's length, as NeMo's
    ``RelPositionalEncoding.forward`` does: the trace computes the bounds from ``x.size(1)``
    and converts them with ``aten::Int``."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pe", torch.arange(40, dtype=torch.float32).reshape(1, 40))

    def forward(self, x):
        center = self.pe.size(1) // 2 + 1
        return self.pe[:, center - x.size(1) : center + x.size(1) - 1] + x.sum()


def _convert():
    traced = torch.jit.trace(RelativePositionSlice(), torch.zeros(1, 8))
    return ct.convert(traced, inputs=[ct.TensorType(name="x", shape=(1, 8), dtype=np.float32)],
                      convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17, skip_model_load=True)


def test_stock_coremltools_rejects_int_of_one_element_tensor():
    """Outside the overrides, coremltools' own conversion: what the override fixes."""
    with pytest.raises(TypeError, match="0-dimensional"):
        _convert()


def test_override_converts_int_of_one_element_tensor():
    with torch_compat.overrides():
        model = _convert()
    out = model.get_spec().description.output[0]
    assert list(out.type.multiArrayType.shape) == [1, 15]


def test_the_overrides_hold_for_a_conversion_and_coremltools_own_come_back_after():
    """A user's own ``ct.convert`` in the same process gets coremltools unchanged; nested uses
    restore what the outer one set."""
    stock_int, stock_pass = _TORCH_OPS_REGISTRY.name_to_func_mapping["int"], PASS_REGISTRY.passes[FP16]
    assert stock_int is ops._int and not isinstance(PASS_REGISTRY[FP16], torch_compat._AddFp16Cast)
    with torch_compat.overrides():
        ours = _TORCH_OPS_REGISTRY.name_to_func_mapping["int"]
        assert ours is not stock_int and isinstance(PASS_REGISTRY[FP16], torch_compat._AddFp16Cast)
        with torch_compat.overrides():
            pass
        assert isinstance(PASS_REGISTRY[FP16], torch_compat._AddFp16Cast)
        assert _TORCH_OPS_REGISTRY.name_to_func_mapping["_int"].__name__ == "_int"
    assert _TORCH_OPS_REGISTRY.name_to_func_mapping["int"] is stock_int
    assert PASS_REGISTRY.passes[FP16] is stock_pass


def _add_op(values: np.ndarray):
    """A MIL ``add`` whose second input is the constant ``values``."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(1,))])
    def program(x):
        return mb.add(x=x, y=values)

    return next(op for op in program.functions["main"].operations if op.op_type == "add")


_SPECIAL = [0.0, -0.0, 1.0, 65504.0, -65504.0, 65505.0, 65520.0, -1e5, 3e37, 1e38, -1e38, 3.4e38,
            np.inf, -np.inf, np.nan]


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
                  elements=st.one_of(st.sampled_from(_SPECIAL), st.floats(-1e6, 1e6, width=32))))
def test_fp16_overflow_decides_as_coremltools(values):
    """The faster pass keeps exactly the ops coremltools' own rule keeps in fp32."""
    op = _add_op(values)
    assert torch_compat._AddFp16Cast.fp16_overflow(op) == add_fp16_cast.fp16_overflow(op)


@pytest.mark.parametrize("value, overflows", [(65504.0, False), (65505.0, True), (-1e5, True), (np.inf, False),
                                              (np.nan, False), (1e38, False), (9.9e37, True)])
def test_fp16_overflow_on_the_edges(value, overflows):
    assert torch_compat._AddFp16Cast.fp16_overflow(_add_op(np.array([1.0, value], np.float32))) is overflows
