"""Reductions on the executor, against independent formulas (numpy float64 or torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from coremltools.converters.mil.mil import Builder as mb
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.runtime.ops.oracle import EXAMPLES, FLOATS, PER_OP, arrays, close

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


REDUCTIONS = {
    "reduce_sum": np.sum, "reduce_mean": np.mean, "reduce_max": np.max, "reduce_min": np.min,
    "reduce_prod": np.prod, "reduce_sum_square": lambda v, axis, keepdims: np.sum(v * v, axis=axis, keepdims=keepdims),
    "reduce_l2_norm": lambda v, axis, keepdims: np.sqrt(np.sum(v * v, axis=axis, keepdims=keepdims)),
    "reduce_log_sum_exp": lambda v, axis, keepdims: np.log(np.sum(np.exp(v), axis=axis, keepdims=keepdims)),
    "reduce_l1_norm": lambda v, axis, keepdims: np.sum(np.abs(v), axis=axis, keepdims=keepdims),
    "reduce_log_sum": lambda v, axis, keepdims: np.log(np.sum(v, axis=axis, keepdims=keepdims)),
}


@pytest.mark.parametrize("op", sorted(REDUCTIONS))
@PER_OP
@given(FLOATS, hnp.array_shapes(min_dims=1, max_dims=4, max_side=5), st.booleans(), st.data())
def test_reductions(run_mil, op, dtype, shape, keep_dims, data):
    x = data.draw(arrays(shape, dtype, 0.125 if op == "reduce_log_sum" else -1.5, 1.5))
    axes = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1, max_size=len(shape),
                              unique_by=lambda a: a % len(shape)))
    (out,) = run_mil(lambda x: getattr(mb, op)(x=x, axes=axes, keep_dims=keep_dims), {"x": x})
    expected = REDUCTIONS[op](x.astype(np.float64), axis=tuple(a % len(shape) for a in axes), keepdims=keep_dims)
    close(out, expected, scale=x.size)


@EXAMPLES
@given(st.sampled_from(["reduce_argmax", "reduce_argmin"]), hnp.array_shapes(min_dims=1, max_dims=3),
       st.booleans(), st.data())
def test_arg_reductions(run_mil, op, shape, keep_dims, data):
    x = data.draw(hnp.arrays(np.float32, shape, elements=st.integers(-100, 100).map(float), unique=True))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    (out,) = run_mil(lambda x: getattr(mb, op)(x=x, axis=axis, keep_dims=keep_dims), {"x": x})
    fn = torch.argmax if op == "reduce_argmax" else torch.argmin
    assert out.dtype == np.int32
    assert np.array_equal(out, fn(torch.from_numpy(x), dim=axis, keepdim=keep_dims).numpy())
