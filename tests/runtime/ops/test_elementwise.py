"""Element-wise ops on the executor, against independent formulas (numpy float64 or torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil.mil import Builder as mb
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.runtime.ops.oracle import EXAMPLES, FLOATS, PER_OP, arrays, close

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "maximum": np.maximum, "minimum": np.minimum,
    "real_div": lambda x, y: x / np.where(np.abs(y) < 0.25, 0.25, y), "pow": np.power,
}


@pytest.mark.parametrize("op", sorted(BINARY))
@PER_OP
@given(FLOATS, hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=4), st.data())
def test_binary_broadcasts_like_numpy(run_mil, op, dtype, shapes, data):
    x = data.draw(arrays(shapes.input_shapes[0], dtype, 0.25 if op == "pow" else -3.0, 3.0))
    y = data.draw(arrays(shapes.input_shapes[1], dtype, -2.0 if op == "pow" else -3.0, 2.0 if op == "pow" else 3.0))
    if op == "real_div":
        y = np.where(np.abs(y) < 0.25, 0.25, y).astype(dtype)
    (out,) = run_mil(lambda x, y: getattr(mb, op)(x=x, y=y), {"x": x, "y": y})
    assert out.shape == shapes.result_shape
    expected = BINARY[op](x.astype(np.float64), y.astype(np.float64))
    close(out, expected.astype(dtype).astype(np.float64) if dtype == np.float16 else expected)


@EXAMPLES
@given(st.sampled_from(["equal", "not_equal", "less", "less_equal", "greater", "greater_equal"]),
       hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=3), st.data())
def test_comparisons(run_mil, op, shapes, data):
    x = data.draw(hnp.arrays(np.int32, shapes.input_shapes[0], elements=st.integers(-2, 2)))
    y = data.draw(hnp.arrays(np.int32, shapes.input_shapes[1], elements=st.integers(-2, 2)))
    (out,) = run_mil(lambda x, y: getattr(mb, op)(x=x, y=y), {"x": x, "y": y})
    expected = {"equal": x == y, "not_equal": x != y, "less": x < y, "less_equal": x <= y,
                "greater": x > y, "greater_equal": x >= y}[op]
    assert out.dtype == np.bool_ and np.array_equal(out, expected)


@EXAMPLES
@given(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=3), st.data())
def test_logical_ops(run_mil, shapes, data):
    x = data.draw(hnp.arrays(np.bool_, shapes.input_shapes[0]))
    y = data.draw(hnp.arrays(np.bool_, shapes.input_shapes[1]))
    both, either, one, negated = run_mil(lambda x, y: [mb.logical_and(x=x, y=y), mb.logical_or(x=x, y=y),
                                                       mb.logical_xor(x=x, y=y), mb.logical_not(x=x)], {"x": x, "y": y})
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    for out, ref in zip([both, either, one, negated], [tx & ty, tx | ty, tx ^ ty, ~tx], strict=True):
        assert out.dtype == np.bool_ and np.array_equal(out, ref.numpy())


@EXAMPLES
@given(hnp.arrays(np.int32, (7,), elements=st.integers(-50, 50)),
       hnp.arrays(np.int32, (7,), elements=st.integers(1, 9) | st.integers(-9, -1)))
def test_floor_div_and_mod_round_toward_negative_infinity(run_mil, x, y):
    div, mod = run_mil(lambda x, y: [mb.floor_div(x=x, y=y), mb.mod(x=x, y=y)], {"x": x, "y": y})
    assert np.array_equal(div, [a // b for a, b in zip(x.tolist(), y.tolist(), strict=True)])
    assert np.array_equal(mod, [a % b for a, b in zip(x.tolist(), y.tolist(), strict=True)])


UNARY = {
    "abs": (np.abs, -3, 3), "ceil": (np.ceil, -3, 3), "floor": (np.floor, -3, 3), "cos": (np.cos, -3, 3),
    "sin": (np.sin, -3, 3), "exp": (np.exp, -3, 3), "sqrt": (np.sqrt, 0, 3), "tanh": (np.tanh, -3, 3),
    "sign": (np.sign, -3, 3), "square": (np.square, -3, 3), "relu": (lambda v: np.maximum(v, 0), -3, 3),
    "sigmoid": (lambda v: 1 / (1 + np.exp(-v)), -3, 3), "silu": (lambda v: v / (1 + np.exp(-v)), -3, 3),
    "relu6": (lambda v: np.minimum(np.maximum(v, 0), 6), -8, 8), "atan": (np.arctan, -3, 3),
    "erf": (lambda v: torch.erf(torch.from_numpy(v)).numpy(), -3, 3),
    "softplus": (lambda v: np.log1p(np.exp(v)), -3, 3), "softsign": (lambda v: v / (1 + np.abs(v)), -3, 3),
    "acos": (np.arccos, -0.875, 0.875), "asin": (np.arcsin, -0.875, 0.875), "atanh": (np.arctanh, -0.875, 0.875),
    "cosh": (np.cosh, -3, 3), "sinh": (np.sinh, -3, 3), "tan": (np.tan, -1.25, 1.25), "exp2": (np.exp2, -3, 3),
    "round": (lambda v: torch.round(torch.from_numpy(v)).numpy(), -3, 3), "identity": (lambda v: v, -3, 3),
}


@pytest.mark.parametrize("op", sorted(UNARY))
@PER_OP
@given(FLOATS, hnp.array_shapes(max_dims=3), st.data())
def test_unary(run_mil, op, dtype, shape, data):
    fn, low, high = UNARY[op]
    x = data.draw(arrays(shape, dtype, low, high))
    (out,) = run_mil(lambda x: getattr(mb, op)(x=x), {"x": x})
    close(out, fn(x.astype(np.float64)))


@EXAMPLES
@given(FLOATS, st.floats(1e-6, 1e-2), st.data())
def test_epsilon_ops(run_mil, dtype, epsilon, data):
    x = data.draw(arrays((5,), dtype, 0.5, 3))
    eps = np.dtype(dtype).type(epsilon)
    log, rsqrt, inverse = run_mil(
        lambda x: [mb.log(x=x, epsilon=eps), mb.rsqrt(x=x, epsilon=eps), mb.inverse(x=x, epsilon=eps)], {"x": x})
    x64 = x.astype(np.float64) + float(eps)
    close(log, np.log(x64))
    close(rsqrt, 1 / np.sqrt(x64))
    close(inverse, 1 / x64)


@EXAMPLES
@given(FLOATS, st.floats(0.05, 0.5), st.floats(0.5, 2.0), st.data())
def test_parametric_activations(run_mil, dtype, alpha, beta, data):
    x = data.draw(arrays((2, 3, 4), dtype))
    a, b = np.dtype(dtype).type(alpha), np.dtype(dtype).type(beta)
    slopes = data.draw(arrays((3,), dtype, 0.125, 2.0))  # per channel (axis 1)
    t = torch.from_numpy(x.astype(np.float64))
    per_channel = torch.from_numpy(slopes.astype(np.float64)).reshape(1, 3, 1, 1)
    t4 = t[..., None]
    outs = run_mil(lambda x: [
        mb.leaky_relu(x=x, alpha=a), mb.elu(x=x, alpha=a), mb.clip(x=x, alpha=-b, beta=b),
        mb.gelu(x=x, mode="EXACT"), mb.gelu(x=x, mode="TANH_APPROXIMATION"),
        mb.sigmoid_hard(x=x, alpha=a, beta=b), mb.thresholded_relu(x=x, alpha=a), mb.threshold(x=x, alpha=a),
        mb.gelu(x=x, mode="SIGMOID_APPROXIMATION"), mb.clamped_relu(x=x, alpha=a, beta=b),
        mb.linear_activation(x=x, alpha=a, beta=b), mb.scaled_tanh(x=x, alpha=a, beta=b),
        mb.prelu(x=mb.expand_dims(x=x, axes=[-1]), alpha=slopes),
        mb.softplus_parametric(x=mb.expand_dims(x=x, axes=[-1]), alpha=slopes, beta=slopes),
    ], {"x": x})  # prelu and softplus_parametric take rank-4 (N, C, H, W) inputs
    expected = [F.leaky_relu(t, float(a)), F.elu(t, float(a)), torch.clamp(t, -float(b), float(b)),
                F.gelu(t), F.gelu(t, approximate="tanh"), torch.clamp(float(a) * t + float(b), 0, 1),
                torch.where(t >= float(a), t, 0.0), torch.clamp(t, min=float(a)), t * torch.sigmoid(1.702 * t),
                torch.clamp(torch.where(t >= 0, t, float(a) * t), max=float(b)), float(a) * t + float(b),
                float(a) * torch.tanh(float(b) * t), torch.where(t4 >= 0, t4, per_channel * t4),
                per_channel * F.softplus(per_channel * t4)]
    for out, ref in zip(outs, expected, strict=True):
        close(out, ref.numpy())


@pytest.mark.parametrize("alpha", [np.float16(2.0), np.float32(2.0)], ids=["fp16-alpha", "fp32-alpha"])
def test_thresholded_relu_keeps_values_equal_to_alpha_whatever_its_dtype(run_mil, alpha):
    """iOS17 lets alpha's dtype differ from the input's; x == alpha is kept (x >= alpha), as in
    Apple's op test ``test_builder_to_backend_numerical_alpha``."""
    x = np.array([[[-1, 2, -3], [4, -5, 6]]], np.float32)
    (out,) = run_mil(lambda x: mb.thresholded_relu(x=x, alpha=alpha), {"x": x})
    np.testing.assert_array_equal(out, [[[0, 2, 0], [4, 0, 6]]])


@EXAMPLES
@given(FLOATS, hnp.array_shapes(min_dims=1, max_dims=4, max_side=6), st.data())
def test_softmax(run_mil, dtype, shape, data):
    x = data.draw(arrays(shape, dtype, -20, 20))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    (out,) = run_mil(lambda x: mb.softmax(x=x, axis=axis), {"x": x})
    close(out, torch.softmax(torch.from_numpy(x.astype(np.float64)), axis).numpy())


def test_select_and_cast_follow_declared_types(run_mil):
    cond = np.array([True, False, True])
    a = np.array([1.5, -2.5, 70000.0], np.float32)
    b = np.array([0.0, 3.7, 1.0], np.float32)
    picked, as_int, as_half = run_mil(lambda c, a, b: [mb.select(cond=c, a=a, b=b), mb.cast(x=b, dtype="int32"),
                                                       mb.cast(x=a, dtype="fp16")], {"c": cond, "a": a, "b": b})
    assert np.array_equal(picked, np.array([1.5, 3.7, 70000.0], np.float32))
    assert as_int.dtype == np.int32 and np.array_equal(as_int, [0, 3, 1])  # truncates toward zero
    assert as_half.dtype == np.float16 and np.isinf(as_half[2])  # beyond fp16's range
