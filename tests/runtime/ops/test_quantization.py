"""Activation quantization on the executor, against coremltools' own value inference of the op
and the formula clip(round(x / scale) + zero_point)."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil import Function
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.runtime.ops.oracle import BOTH_PRECISIONS, arrays


def _inferred(**inputs):
    """coremltools' value inference of quantize on constant inputs."""
    with Function({}, ct.target.iOS17):
        return mb.quantize(**inputs).val


@pytest.mark.parametrize("output_dtype", ["int8", "uint8"])
@BOTH_PRECISIONS
@settings(max_examples=15, deadline=None)
@given(st.booleans(), st.data())
def test_quantize_matches_value_inference_and_the_formula(run_mil, dtype, output_dtype, per_channel, data):
    x = data.draw(arrays((3, 4), dtype, -40, 40))
    scale = data.draw(arrays((3,) if per_channel else (), dtype, 0.125, 2.0))
    low, high = (-128, 127) if output_dtype == "int8" else (0, 255)
    zero = np.asarray(data.draw(st.integers(low, high)) if not per_channel else
                      [data.draw(st.integers(low, high)) for _ in range(3)], getattr(np, output_dtype))
    options = dict(scale=scale, zero_point=zero, output_dtype=output_dtype, **({"axis": 0} if per_channel else {}))
    (out,) = run_mil(lambda x: mb.quantize(input=x, **options), {"x": x})
    assert out.dtype == np.dtype(output_dtype)
    np.testing.assert_array_equal(out, _inferred(input=x, **options))
    shaped = scale.reshape(-1, 1) if per_channel else scale
    ratio = x.astype(np.float32) / shaped.astype(np.float32)
    formula = np.clip(np.round(ratio) + zero.reshape(-1, 1 if per_channel else 1).astype(np.float64), low, high)
    np.testing.assert_array_equal(out, formula.astype(output_dtype))
