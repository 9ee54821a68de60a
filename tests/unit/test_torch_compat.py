"""Each coremltools/torch 2.13 fix converts what coremltools 9.0 alone rejects."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
import torch
from coremltools.converters.mil.frontend.torch import ops
from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

from exporters import torch_compat


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


@pytest.fixture
def stock_int_conversion():
    """coremltools' own aten::int conversion, restored for the test."""
    torch_compat.install()
    ours = _TORCH_OPS_REGISTRY.name_to_func_mapping["int"]
    for name in ("int", "_int"):
        _TORCH_OPS_REGISTRY.name_to_func_mapping[name] = ops._int
    yield
    for name in ("int", "_int"):
        _TORCH_OPS_REGISTRY.name_to_func_mapping[name] = ours


def test_stock_coremltools_rejects_int_of_one_element_tensor(stock_int_conversion):
    with pytest.raises(TypeError, match="0-dimensional"):
        _convert()


def test_override_converts_int_of_one_element_tensor():
    torch_compat.install()
    model = _convert()
    out = model.get_spec().description.output[0]
    assert list(out.type.multiArrayType.shape) == [1, 15]
