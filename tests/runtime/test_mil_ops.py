"""Each MIL op on the executor against an independent formula (numpy or torch), over shapes,
parameters and dtypes drawn by hypothesis.

fp32 programs must agree with a float64 oracle to fp32 rounding; fp16 programs with the oracle
computed from the same fp16 inputs and rounded to fp16, within one fp16 ulp (the executor
accumulates in fp32, whose summation order may flip a last-bit rounding).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil.mil import Builder as mb
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtimes.mil import UnsupportedOperation
from runtimes.mil.ops import KERNELS

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
EXAMPLES = settings(max_examples=25, deadline=None)
PER_OP = settings(max_examples=8, deadline=None)  # for tests parametrized over a table of ops
FLOATS = st.sampled_from([np.float32, np.float16])


def tolerance(dtype):
    """(rtol, atol) for comparing an output of ``dtype`` with its float64 oracle."""
    return (2e-5, 1e-6) if np.dtype(dtype) == np.float32 else (2**-10, 2**-14)


def close(actual, expected, dtype=None, scale=1.0):
    dtype = dtype or actual.dtype
    rtol, atol = tolerance(dtype)
    expected = np.asarray(expected, np.float64)
    assert actual.dtype == np.dtype(dtype)
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol, atol=atol * scale)


def arrays(shape, dtype, low=-3.0, high=3.0):
    return hnp.arrays(dtype, shape, elements=st.floats(low, high, width=16))


# ---- elementwise -----------------------------------------------------------------------------

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
    assert np.array_equal(div, [a // b for a, b in zip(x.tolist(), y.tolist())])
    assert np.array_equal(mod, [a % b for a, b in zip(x.tolist(), y.tolist())])


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
                torch.where(t > float(a), t, 0.0), torch.clamp(t, min=float(a)), t * torch.sigmoid(1.702 * t),
                torch.clamp(torch.where(t >= 0, t, float(a) * t), max=float(b)), float(a) * t + float(b),
                float(a) * torch.tanh(float(b) * t), torch.where(t4 >= 0, t4, per_channel * t4),
                per_channel * F.softplus(per_channel * t4)]
    for out, ref in zip(outs, expected, strict=True):
        close(out, ref.numpy())


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


# ---- linear algebra, convolution, pooling -----------------------------------------------------

@EXAMPLES
@given(FLOATS, st.integers(1, 3), st.integers(1, 8), st.integers(1, 8), st.integers(1, 8), st.booleans(),
       st.booleans(), st.data())
def test_matmul_transposes(run_mil, dtype, batch, m, k, n, tx, ty, data):
    x = data.draw(arrays((batch, k, m) if tx else (batch, m, k), dtype))
    y = data.draw(arrays((n, k) if ty else (k, n), dtype))
    (out,) = run_mil(lambda x, y: mb.matmul(x=x, y=y, transpose_x=tx, transpose_y=ty), {"x": x, "y": y})
    tx_, ty_ = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(y.astype(np.float64))
    ref = torch.matmul(tx_.transpose(-1, -2) if tx else tx_, ty_.T if ty else ty_)
    close(out, ref.numpy(), scale=k)


@EXAMPLES
@given(FLOATS, st.integers(1, 6), st.integers(1, 6), st.booleans(), st.data())
def test_linear(run_mil, dtype, d_in, d_out, with_bias, data):
    x = data.draw(arrays((2, 3, d_in), dtype))
    w = data.draw(arrays((d_out, d_in), dtype))
    b = data.draw(arrays((d_out,), dtype)) if with_bias else None
    (out,) = run_mil(lambda x: mb.linear(x=x, weight=w, bias=b) if with_bias else mb.linear(x=x, weight=w),
                            {"x": x})
    ref = F.linear(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w.astype(np.float64)),
                   None if b is None else torch.from_numpy(b.astype(np.float64)))
    close(out, ref.numpy(), scale=d_in)


def _torch_conv(x, w, b, strides, dilations, groups, pads):
    """Reference conv: explicit (begin, end) padding, then torch's unpadded conv."""
    flat = [p for pair in reversed(pads) for p in pair]
    x = F.pad(torch.from_numpy(x.astype(np.float64)), flat)
    conv = {1: F.conv1d, 2: F.conv2d}[x.dim() - 2]
    return conv(x, torch.from_numpy(w.astype(np.float64)), None if b is None else torch.from_numpy(
        b.astype(np.float64)), stride=strides, dilation=dilations, groups=groups).numpy()


def _same_padding(size, kernel, stride, dilation, lower):
    effective = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + effective - size, 0)
    return (total - total // 2, total // 2) if lower else (total // 2, total - total // 2)


@settings(max_examples=40, deadline=None)
@given(FLOATS, st.integers(1, 2), st.sampled_from([1, 2, 3]), st.integers(1, 3), st.integers(1, 3),
       st.sampled_from(["valid", "same", "same_lower", "custom"]), st.booleans(), st.data())
def test_conv(run_mil, dtype, rank, groups, kernel, stride, pad_type, with_bias, data):
    c_in, c_out = groups * data.draw(st.integers(1, 2)), groups * data.draw(st.integers(1, 2))
    dilation = data.draw(st.integers(1, 2))
    size = data.draw(st.lists(st.integers((kernel - 1) * dilation + 1, 9), min_size=rank, max_size=rank))
    x = data.draw(arrays((2, c_in, *size), dtype))
    w = data.draw(arrays((c_out, c_in // groups) + (kernel,) * rank, dtype))
    b = data.draw(arrays((c_out,), dtype)) if with_bias else None
    custom = [data.draw(st.integers(0, 2)) for _ in range(2 * rank)]
    if pad_type == "custom":
        pads = [(custom[2 * i], custom[2 * i + 1]) for i in range(rank)]
    elif pad_type == "valid":
        pads = [(0, 0)] * rank
    else:
        pads = [_same_padding(s, kernel, stride, dilation, pad_type == "same_lower") for s in size]
    kwargs = dict(weight=w, strides=[stride] * rank, dilations=[dilation] * rank, groups=groups,
                  pad_type=pad_type, **({"pad": custom} if pad_type == "custom" else {}),
                  **({"bias": b} if with_bias else {}))
    (out,) = run_mil(lambda x: mb.conv(x=x, **kwargs), {"x": x})
    ref = _torch_conv(x, w, b, [stride] * rank, [dilation] * rank, groups, pads)
    close(out, ref, scale=c_in * kernel**rank)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["max_pool", "avg_pool", "l2_pool"]), st.integers(1, 2), st.integers(1, 3), st.integers(1, 2),
       st.booleans(), st.data())
def test_pools(run_mil, op, rank, kernel, stride, exclude_padding, data):
    size = data.draw(st.lists(st.integers(kernel, 8), min_size=rank, max_size=rank))
    x = data.draw(arrays((1, 2, *size), np.float32))
    pad = [data.draw(st.integers(0, kernel - 1)) for _ in range(rank) for _ in range(2)]
    kwargs = dict(kernel_sizes=[kernel] * rank, strides=[stride] * rank, pad_type="custom", pad=pad)
    if op == "avg_pool":
        kwargs["exclude_padding_from_average"] = exclude_padding
    (out,) = run_mil(lambda x: getattr(mb, op)(x=x, **kwargs), {"x": x})
    flat = [p for i in reversed(range(rank)) for p in (pad[2 * i], pad[2 * i + 1])]
    t = torch.from_numpy(x.astype(np.float64))
    if op == "max_pool":
        ref = {1: F.max_pool1d, 2: F.max_pool2d}[rank](F.pad(t, flat, value=-np.inf), kernel, stride)
    elif op == "l2_pool":
        ref = {1: F.lp_pool1d, 2: F.lp_pool2d}[rank](F.pad(t, flat), 2, kernel, stride)
    else:
        summed = {1: F.avg_pool1d, 2: F.avg_pool2d}[rank](F.pad(t, flat), kernel, stride) * kernel**rank
        ones = F.pad(torch.ones_like(t), flat)
        count = {1: F.avg_pool1d, 2: F.avg_pool2d}[rank](ones, kernel, stride) * kernel**rank
        ref = summed / (count if exclude_padding else kernel**rank)
    close(out, ref.numpy())


# ---- normalization and reductions -------------------------------------------------------------

@EXAMPLES
@given(FLOATS, hnp.array_shapes(min_dims=2, max_dims=4, min_side=2, max_side=6), st.integers(1, 2), st.data())
def test_layer_norm_over_trailing_axes(run_mil, dtype, shape, n_axes, data):
    n_axes = min(n_axes, len(shape))
    x = data.draw(arrays(shape, dtype))
    normalized = shape[-n_axes:]
    gamma, beta = data.draw(arrays(normalized, dtype)), data.draw(arrays(normalized, dtype))
    axes = list(range(len(shape) - n_axes, len(shape)))
    (out,) = run_mil(lambda x: mb.layer_norm(x=x, axes=axes, gamma=gamma, beta=beta,
                                                    epsilon=np.dtype(dtype).type(1e-5)), {"x": x})
    ref = F.layer_norm(torch.from_numpy(x.astype(np.float64)), normalized, torch.from_numpy(gamma.astype(np.float64)),
                       torch.from_numpy(beta.astype(np.float64)), eps=float(np.dtype(dtype).type(1e-5)))
    # fp32 rounds the mean relative to |x| but the output is scaled by 1/std: a group of nearly
    # equal values (hypothesis found 17 equal and one outlier: 4.4e-5 relative) loses that ratio
    # of precision in any fp32 implementation, so the bound grows with max|x| / std.
    x64 = x.astype(np.float64)
    std = np.sqrt(np.var(x64, axis=tuple(axes)) + 1e-5)
    conditioning = max(1.0, float(np.max(np.abs(x64)) / np.min(std)))
    close(out, ref.numpy(), scale=8 * conditioning * max(1.0, float(np.max(np.abs(gamma)))))


@EXAMPLES
@given(FLOATS, hnp.array_shapes(min_dims=3, max_dims=5, max_side=4), st.data())
def test_l2_norm_over_the_last_three_dims(run_mil, dtype, shape, data):
    x = data.draw(arrays(shape, dtype, -2.0, 2.0))
    eps = np.dtype(dtype).type(1e-6)
    (out,) = run_mil(lambda x: mb.l2_norm(x=x, epsilon=eps), {"x": x})
    t = torch.from_numpy(x.astype(np.float64))
    norm = torch.sqrt((t * t).flatten(start_dim=-3).sum(-1) + float(eps))
    close(out, (t / norm[..., None, None, None]).numpy())


def test_batch_norm(run_mil):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5)).astype(np.float32)
    mean, var, gamma, beta = (rng.normal(size=3).astype(np.float32) for _ in range(4))
    var = np.abs(var) + 0.1
    (out,) = run_mil(lambda x: mb.batch_norm(x=x, mean=mean, variance=var, gamma=gamma, beta=beta, epsilon=1e-3),
                     {"x": x})
    ref = F.batch_norm(torch.from_numpy(x), torch.from_numpy(mean), torch.from_numpy(var), torch.from_numpy(gamma),
                       torch.from_numpy(beta), eps=1e-3)
    close(out, ref.numpy())


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


# ---- shape and data movement ------------------------------------------------------------------

@EXAMPLES
@given(hnp.array_shapes(min_dims=1, max_dims=4, max_side=5), st.data())
def test_slice_by_index_with_masks(run_mil, shape, data):
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    begin, end, stride, begin_mask, end_mask, squeeze_mask, index = [], [], [], [], [], [], []
    for dim in shape:
        kind = data.draw(st.sampled_from(["range", "squeeze"]))
        if kind == "squeeze":
            b = data.draw(st.integers(-dim, dim - 1))
            begin.append(b), end.append(b + 1 if b != -1 else dim), stride.append(1)
            begin_mask.append(False), end_mask.append(False), squeeze_mask.append(True)
            index.append(b)
            continue
        b, e = data.draw(st.integers(-dim, dim - 1)), data.draw(st.integers(-dim, dim))
        s = data.draw(st.sampled_from([1, 2, -1, -2]))
        bm, em = data.draw(st.booleans()), data.draw(st.booleans())
        begin.append(b), end.append(e), stride.append(s)
        begin_mask.append(bm), end_mask.append(em), squeeze_mask.append(False)
        # python slicing is the oracle: negative begin and end count from the end, as in MIL
        index.append(slice(None if bm else b, None if em else e, s))
    if all(squeeze_mask):
        squeeze_mask[0], index[0] = False, slice(begin[0], end[0], 1)
    assume(x[tuple(index)].size > 0)  # Core ML has no empty tensors
    (out,) = run_mil(lambda x: mb.slice_by_index(
        x=x, begin=np.array(begin, np.int32), end=np.array(end, np.int32), stride=np.array(stride, np.int32),
        begin_mask=begin_mask, end_mask=end_mask, squeeze_mask=squeeze_mask), {"x": x})
    assert np.array_equal(out, x[tuple(index)])


@EXAMPLES
@given(hnp.array_shapes(min_dims=1, max_dims=4, max_side=5), st.integers(0, 1), st.data())
def test_gather_with_batch_dims(run_mil, shape, batch_dims, data):
    batch_dims = min(batch_dims, len(shape) - 1)
    axis = data.draw(st.integers(batch_dims, len(shape) - 1))
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    index_shape = shape[:batch_dims] + tuple(data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    indices = data.draw(hnp.arrays(np.int32, index_shape, elements=st.integers(-shape[axis], shape[axis] - 1)))
    (out,) = run_mil(lambda x, i: mb.gather(x=x, indices=i, axis=axis, batch_dims=batch_dims),
                            {"x": x, "i": indices})
    wrapped = np.where(indices < 0, indices + shape[axis], indices)
    if batch_dims == 0:
        expected = np.take(x, wrapped, axis=axis)
    else:
        expected = np.stack([np.take(x[b], wrapped[b], axis=axis - 1) for b in range(shape[0])])
    assert np.array_equal(out, expected)


def test_gather_along_axis_and_gather_nd(run_mil):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    along = np.array([[[0, 2, 1, 2]], [[2, 2, 0, 1]]], np.int32)
    nd = np.array([[0, 1], [1, 2], [1, 0]], np.int32)
    a, n = run_mil(lambda x, a, n: [mb.gather_along_axis(x=x, indices=a, axis=1),
                                    mb.gather_nd(x=x, indices=n)], {"x": x, "a": along, "n": nd})
    assert np.array_equal(a, torch.gather(torch.from_numpy(x), 1, torch.from_numpy(along).long()).numpy())
    assert np.array_equal(n, np.stack([x[0, 1], x[1, 2], x[1, 0]]))


@EXAMPLES
@given(hnp.array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=5), st.sampled_from(
    ["constant", "reflect", "replicate"]), st.data())
def test_pad_modes(run_mil, shape, mode, data):
    x = data.draw(arrays(shape, np.float32))
    n = data.draw(st.integers(1, len(shape)))
    widths = [data.draw(st.integers(0, s - 1)) for s in shape[-n:] for _ in range(2)]
    (out,) = run_mil(lambda x: mb.pad(x=x, pad=np.array(widths, np.int32), mode=mode, constant_val=1.5),
                            {"x": x})
    torch_mode = {"constant": "constant", "reflect": "reflect", "replicate": "replicate"}[mode]
    flat = [w for i in reversed(range(n)) for w in widths[2 * i: 2 * i + 2]]
    t = torch.from_numpy(x).reshape((-1, 1) + shape[len(shape) - n:])  # torch pads (N, C, *spatial)
    ref = F.pad(t, flat, mode=torch_mode, **({"value": 1.5} if mode == "constant" else {}))
    assert np.array_equal(out, ref.reshape(out.shape).numpy())


def test_concat_of_scalars_makes_a_vector(run_mil):
    """As coremltools emits for a flexible input's shape: its length (a scalar, from ``shape``
    and ``gather``) joined with a fixed dimension; coremltools' own type inference says (2,)."""
    x = np.zeros((1, 37), np.float32)

    def build(x):
        length = mb.gather(x=mb.shape(x=x), indices=1, axis=0)
        joined = mb.concat(values=[np.int32(3), length], axis=0)
        assert joined.shape == (2,)
        return joined

    (out,) = run_mil(build, {"x": x})
    assert out.tolist() == [3, 37] and out.dtype == np.int32


def test_shape_ops(run_mil):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    y = -x
    outs = run_mil(lambda x, y: [
        mb.reshape(x=x, shape=[4, -1]), mb.transpose(x=x, perm=[2, 0, 1]), mb.expand_dims(x=x, axes=[0, -1]),
        mb.squeeze(x=mb.expand_dims(x=x, axes=[1]), axes=[1]), mb.concat(values=[x, y], axis=1),
        mb.concat(values=[x, y], axis=2, interleave=True), mb.stack(values=[x, y], axis=-1),
        mb.tile(x=x, reps=[1, 2, 1]), mb.slice_by_size(x=x, begin=[1, 0, 2], size=[1, -1, 2]),
        mb.cumsum(x=x, axis=2, exclusive=True, reverse=True),
    ] + list(mb.split(x=x, split_sizes=[1, 3], axis=2)), {"x": x, "y": y})
    t, u = torch.from_numpy(x), torch.from_numpy(y)
    rev = torch.flip(torch.cumsum(torch.flip(t, [2]), 2), [2]) - t
    expected = [t.reshape(4, -1), t.permute(2, 0, 1), t[None, ..., None], t, torch.cat([t, u], 1),
                torch.stack([t, u], 3).reshape(2, 3, 8), torch.stack([t, u], -1), t.repeat(1, 2, 1),
                t[1:2, :, 2:4], rev, t[:, :, :1], t[:, :, 1:]]
    for out, ref in zip(outs, expected, strict=True):
        assert np.array_equal(out, ref.numpy())


def test_fill_range_shape_and_dequantize(run_mil):
    x = np.zeros((2, 5, 3), np.float32)
    q = np.array([[0, 128, 255], [10, 20, 30]], np.uint8)
    scale, zero = np.array([0.5, 2.0], np.float32), np.array([128, 10], np.uint8)
    filled, counted, shape, dequantized = run_mil(lambda x: [
        mb.fill(shape=np.array([2, 3], np.int32), value=np.float32(1.25)),
        mb.range_1d(end=np.int32(10), start=np.int32(1), step=np.int32(3)), mb.shape(x=x),
        mb.dequantize(input=q, scale=scale, zero_point=zero, axis=0)], {"x": x})
    assert np.array_equal(filled, np.full((2, 3), 1.25, np.float32))
    assert np.array_equal(counted, [1, 4, 7])
    assert shape.dtype == np.int32 and np.array_equal(shape, [2, 5, 3])
    assert np.array_equal(dequantized, [[-64.0, 0.0, 63.5], [0.0, 20.0, 40.0]])


def test_constexpr_cast_widens_an_fp16_constant(run_mil):
    weights = np.array([0.1, -2.5, 65504.0], np.float16)
    x = np.ones((3,), np.float32)
    (out,) = run_mil(lambda x: mb.mul(x=x, y=mb.constexpr_cast(source_val=weights, output_dtype="fp32")), {"x": x},
                     opset="iOS16")
    assert out.dtype == np.float32 and np.array_equal(out, weights.astype(np.float32))


# ---- recurrent ---------------------------------------------------------------------------------

def _mil_gates(w):
    """torch's LSTM gate order (i, f, g, o) as MIL's (i, f, o, z)."""
    i, f, g, o = np.split(w, 4)
    return np.concatenate([i, f, o, g])


@settings(max_examples=15, deadline=None)
@given(FLOATS, st.sampled_from(["forward", "reverse", "bidirectional"]), st.booleans(), st.integers(1, 5),
       st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.data())
def test_lstm_against_torch(run_mil, dtype, direction, output_sequence, steps, batch, d_in, hidden, data):
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    bidirectional = direction == "bidirectional"
    ref = torch.nn.LSTM(d_in, hidden, bidirectional=bidirectional).double()
    dirs = 2 if bidirectional else 1
    x = data.draw(arrays((steps, batch, d_in), dtype))
    h0 = data.draw(arrays((dirs, batch, hidden), dtype, -1, 1))
    c0 = data.draw(arrays((dirs, batch, hidden), dtype, -1, 1))
    params = {n: _mil_gates(p.detach().numpy()).astype(dtype) for n, p in ref.named_parameters()}
    for suffix in ("l0", "l0_reverse")[:dirs]:  # MIL holds one bias: b_ih + b_hh, in the program's dtype
        params[f"bias_ih_{suffix}"] = (params.pop(f"bias_ih_{suffix}") + params[f"bias_hh_{suffix}"]).astype(dtype)
        params[f"bias_hh_{suffix}"] = np.zeros_like(params[f"bias_hh_{suffix}"])
    with torch.no_grad():  # the reference sees the very weights the program holds
        for n, p in ref.named_parameters():
            i, f, o, g = np.split(params[n].astype(np.float64), 4)
            p.copy_(torch.from_numpy(np.concatenate([i, f, g, o])))
    weights = dict(weight_ih=params["weight_ih_l0"], weight_hh=params["weight_hh_l0"], bias=params["bias_ih_l0"])
    if bidirectional:
        weights.update(weight_ih_back=params["weight_ih_l0_reverse"], weight_hh_back=params["weight_hh_l0_reverse"],
                       bias_back=params["bias_ih_l0_reverse"])
    init_h = np.concatenate(list(h0), axis=-1)
    init_c = np.concatenate(list(c0), axis=-1)
    seq, h, c = run_mil(lambda x, h, c: list(mb.lstm(x=x, initial_h=h, initial_c=c, direction=direction,
                                                            output_sequence=output_sequence, **weights)),
                               {"x": x, "h": init_h, "c": init_c})
    t = torch.from_numpy(x.astype(np.float64))
    th0, tc0 = torch.from_numpy(h0.astype(np.float64)), torch.from_numpy(c0.astype(np.float64))
    with torch.no_grad():
        if direction == "reverse":
            out, (hn, cn) = ref(torch.flip(t, [0]), (th0, tc0))
            out = torch.flip(out, [0])
        else:
            out, (hn, cn) = ref(t, (th0, tc0))
    hn, cn = torch.cat(list(hn), -1), torch.cat(list(cn), -1)
    if not output_sequence:
        last = out[:1] if direction == "reverse" else out[-1:]
        out = torch.cat([out[-1:, :, :hidden], out[:1, :, hidden:]], -1) if bidirectional else last
    scale = steps * (d_in + hidden)
    close(seq, out.numpy(), scale=scale)
    close(h, hn.numpy(), scale=scale)
    close(c, cn.numpy(), scale=scale)


# ---- precision -----------------------------------------------------------------------------

def test_fp16_program_rounds_every_intermediate_to_fp16(run_mil):
    """(x + y) - x: fp16 rounding of the sum is visible in the result, fp32 would keep y."""
    x = np.array([1.0, 2048.0], np.float16)
    y = np.array([2**-12, 0.75], np.float16)
    (out,) = run_mil(lambda x, y: mb.sub(x=mb.add(x=x, y=y), y=x), {"x": x, "y": y})
    assert out.dtype == np.float16
    assert np.array_equal(out, (x + y) - x)  # numpy fp16 rounds after each op
    assert not np.array_equal(out, y)


def test_fp16_matmul_accumulates_in_fp32(run_mil):
    """A fp16-only accumulation of 4096 ones plus a tiny term stalls at 2048; fp32 accumulation does not."""
    x = np.ones((1, 4096), np.float16)
    w = np.ones((4096, 1), np.float16)
    (out,) = run_mil(lambda x, w: mb.matmul(x=x, y=w), {"x": x, "w": w})
    assert out.dtype == np.float16 and out[0, 0] == 4096


def test_nan_and_inf_propagate(run_mil):
    x = np.array([[np.nan, 1.0, np.inf, -np.inf]], np.float32)
    soft, summed, relu = run_mil(lambda x: [mb.softmax(x=x, axis=-1), mb.reduce_sum(x=x, axes=[1]), mb.relu(x=x)],
                                 {"x": x})
    assert np.isnan(soft).all()
    assert np.isnan(summed).all()
    assert np.isnan(relu[0, 0]) and relu[0, 2] == np.inf and relu[0, 3] == 0



# ---- what the executor refuses -----------------------------------------------------------------

def test_unimplemented_operation_is_named_with_its_opset(run_mil):
    x = np.ones((1, 2, 5), np.float32)
    with pytest.raises(UnsupportedOperation, match=r"conv_transpose \(opset iOS17\) .*not implemented"):
        run_mil(lambda x: mb.conv_transpose(x=x, weight=np.ones((2, 2, 3), np.float32)), {"x": x})


def test_unimplemented_parameter_value_is_named(run_mil):
    x, h = np.ones((2, 1, 3), np.float32), np.zeros((1, 4), np.float32)
    w_ih, w_hh = np.ones((16, 3), np.float32), np.ones((16, 4), np.float32)
    with pytest.raises(UnsupportedOperation, match=r"lstm \(opset iOS17\) .*parameter 'clip'"):
        run_mil(lambda x, h, c: list(mb.lstm(x=x, initial_h=h, initial_c=c, weight_ih=w_ih, weight_hh=w_hh,
                                             clip=np.float32(1.0))), {"x": x, "h": h, "c": h})


def test_unimplemented_parameter_is_refused_when_loading(run_mil, monkeypatch):
    monkeypatch.setitem(KERNELS, "relu", lambda data: data)  # a kernel that knows no 'x'
    with pytest.raises(UnsupportedOperation, match=r"relu \(opset iOS17\) .*parameter 'x' not implemented"):
        run_mil(lambda x: mb.relu(x=x), {"x": np.ones((3,), np.float32)})
