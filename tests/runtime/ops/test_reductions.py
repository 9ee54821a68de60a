"""Reductions on the executor, against independent formulas (numpy float64 or torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from coremltools.converters.mil.mil import Builder as mb
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.runtime.ops.oracle import BOTH_PRECISIONS, EXAMPLES, FLOATS, PER_OP, arrays, close

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


# ---- sorting -------------------------------------------------------------------------------------

@BOTH_PRECISIONS
@EXAMPLES
@given(hnp.array_shapes(min_dims=1, max_dims=3, max_side=6), st.booleans(), st.data())
def test_topk_and_argsort_match_torch(run_mil, dtype, shape, ascending, data):
    x = data.draw(hnp.arrays(dtype, shape, elements=st.integers(-200, 200).map(float), unique=True))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    k = data.draw(st.integers(1, shape[axis]) | st.just(-1))
    values, indices, only_values, order = run_mil(lambda x: [
        *mb.topk(x=x, k=k, axis=axis, ascending=ascending), mb.topk(x=x, k=k, axis=axis, return_indices=False),
        mb.argsort(x=x, axis=axis, ascending=ascending)], {"x": x}, opset="iOS16")
    t = torch.from_numpy(x.astype(np.float64))
    count = shape[axis] if k == -1 else k
    ref_values, ref_indices = torch.topk(t, count, dim=axis, largest=not ascending)
    assert np.array_equal(values, ref_values.numpy()) and indices.dtype == np.int32
    assert np.array_equal(indices, ref_indices.numpy())
    assert np.array_equal(only_values, torch.topk(t, count, dim=axis).values.numpy())
    assert order.dtype == np.int32
    assert np.array_equal(order, torch.argsort(t, dim=axis, descending=not ascending).numpy())


def test_sorting_keeps_equal_values_in_order(run_mil):
    x = np.array([[2.0, 1.0, 2.0, 1.0]], np.float32)
    order_down, order_up = run_mil(lambda x: [mb.argsort(x=x), mb.argsort(x=x, ascending=True)], {"x": x})
    assert order_down.tolist() == [[0, 2, 1, 3]] and order_up.tolist() == [[1, 3, 0, 2]]
