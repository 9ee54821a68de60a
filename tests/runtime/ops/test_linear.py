"""Matrix products, convolutions and pooling on the executor, against independent formulas: numpy
float64 for the ops whose kernels run on torch (linear, matmul, conv), torch where they do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil.mil import Builder as mb
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtimes.mil.ops import base
from tests.runtime.ops.oracle import BOTH_PRECISIONS, EXAMPLES, FLOATS, arrays, close

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@EXAMPLES
@given(FLOATS, st.integers(1, 3), st.integers(1, 8), st.integers(1, 8), st.integers(1, 8), st.booleans(),
       st.booleans(), st.data())
def test_matmul_transposes(run_mil, dtype, batch, m, k, n, tx, ty, data):
    x = data.draw(arrays((batch, k, m) if tx else (batch, m, k), dtype))
    y = data.draw(arrays((n, k) if ty else (k, n), dtype))
    (out,) = run_mil(lambda x, y: mb.matmul(x=x, y=y, transpose_x=tx, transpose_y=ty), {"x": x, "y": y})
    x64, y64 = x.astype(np.float64), y.astype(np.float64)  # numpy: the kernel runs on torch
    ref = np.matmul(np.swapaxes(x64, -1, -2) if tx else x64, y64.T if ty else y64)
    close(out, ref, scale=k)


@EXAMPLES
@given(FLOATS, st.integers(1, 6), st.integers(1, 6), st.booleans(), st.data())
def test_linear(run_mil, dtype, d_in, d_out, with_bias, data):
    x = data.draw(arrays((2, 3, d_in), dtype))
    w = data.draw(arrays((d_out, d_in), dtype))
    b = data.draw(arrays((d_out,), dtype)) if with_bias else None
    (out,) = run_mil(lambda x: mb.linear(x=x, weight=w, bias=b) if with_bias else mb.linear(x=x, weight=w),
                            {"x": x})
    ref = x.astype(np.float64) @ w.astype(np.float64).T + (0 if b is None else b.astype(np.float64))
    close(out, ref, scale=d_in)


def _numpy_conv(x, w, b, strides, dilations, groups, pads):
    """Reference conv in float64 numpy, independent of the kernel's torch: explicit (begin, end)
    padding, then each output position as the sum over its window, channel group by group."""
    x = np.pad(x.astype(np.float64), [(0, 0), (0, 0), *pads])
    w = w.astype(np.float64)
    n_spatial, (batch, c_in), c_out = x.ndim - 2, x.shape[:2], w.shape[0]
    kernel = w.shape[2:]
    out_size = [(x.shape[2 + d] - (kernel[d] - 1) * dilations[d] - 1) // strides[d] + 1 for d in range(n_spatial)]
    y = np.zeros((batch, c_out, *out_size))
    per_in, per_out = c_in // groups, c_out // groups
    for position in np.ndindex(*out_size):
        window = tuple(slice(p * s, p * s + (k - 1) * d + 1, d)
                       for p, s, k, d in zip(position, strides, kernel, dilations, strict=True))
        for g in range(groups):
            patch = x[(slice(None), slice(g * per_in, (g + 1) * per_in)) + window]  # N, C_in/g, *kernel
            taps = w[g * per_out:(g + 1) * per_out]  # C_out/g, C_in/g, *kernel
            y[(slice(None), slice(g * per_out, (g + 1) * per_out)) + position] = np.tensordot(
                patch, taps, axes=(list(range(1, patch.ndim)), list(range(1, taps.ndim))))
    return y if b is None else y + b.astype(np.float64).reshape((1, -1) + (1,) * n_spatial)


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
    ref = _numpy_conv(x, w, b, [stride] * rank, [dilation] * rank, groups, pads)
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


@BOTH_PRECISIONS
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2), st.sampled_from([1, 2]), st.integers(1, 3), st.integers(1, 3), st.integers(1, 2),
       st.sampled_from(["valid", "custom", "output_shape"]), st.booleans(), st.data())
def test_conv_transpose_matches_torch(run_mil, dtype, rank, groups, kernel, stride, dilation, padding, with_bias,
                                      data):
    c_in, c_out = 2 * groups, groups * data.draw(st.integers(1, 2))
    spatial = tuple(data.draw(st.integers(1, 4)) for _ in range(rank))
    x = data.draw(arrays((1, c_in) + spatial, dtype))
    w = data.draw(arrays((c_in, c_out // groups) + (kernel,) * rank, dtype))
    b = data.draw(arrays((c_out,), dtype)) if with_bias else None
    full = [(n - 1) * stride + (kernel - 1) * dilation + 1 for n in spatial]
    pads = [data.draw(st.integers(0, min((kernel - 1) * dilation, (f - 1) // 2))) for f in full] \
        if padding == "custom" else [0] * rank
    extra = [data.draw(st.integers(0, stride - 1)) for _ in range(rank)] if padding == "output_shape" else [0] * rank
    options = dict(strides=[stride] * rank, dilations=[dilation] * rank, groups=groups)
    if padding == "custom":
        options.update(pad_type="custom", pad=[p for p in pads for _ in range(2)])
    elif padding == "output_shape":
        options.update(pad_type="valid", output_shape=[1, c_out] + [f + e for f, e in zip(full, extra, strict=True)])
    if with_bias:
        options["bias"] = b
    (out,) = run_mil(lambda x: mb.conv_transpose(x=x, weight=w, **options), {"x": x})
    transpose = {1: F.conv_transpose1d, 2: F.conv_transpose2d}[rank]
    ref = transpose(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w.astype(np.float64)),
                    None if b is None else torch.from_numpy(b.astype(np.float64)), stride=stride, padding=pads,
                    output_padding=extra, groups=groups, dilation=dilation)
    close(out, ref.numpy(), scale=c_in * kernel**rank)


def test_conv_transpose_same_padding_multiplies_the_size_by_the_stride(run_mil):
    x = np.arange(1, 4, dtype=np.float32).reshape(1, 1, 3)
    (out,) = run_mil(lambda x: mb.conv_transpose(x=x, weight=np.ones((1, 1, 3), np.float32), pad_type="same",
                                                 strides=[2]), {"x": x})
    # full result [1, 1, 3, 2, 5, 3, 3] (length 7); "same" keeps 6, cutting one from the end
    assert out.ravel().tolist() == [1, 1, 3, 2, 5, 3]


def test_conv_quantized_dequantizes_its_weights_linearly(run_mil):
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    quantized = np.array([[[0, 2]], [[4, 255]]], np.uint8).reshape(2, 1, 2)
    (out,) = run_mil(lambda x: mb.conv_quantized(x=x, weight=quantized, quantization_type="linear", nbits=8,
                                                 quant_scale=np.float32(0.5), quant_bias=np.float32(-1),
                                                 groups=2), {"x": x}, opset="iOS15")
    dense = quantized.astype(np.float64) * 0.5 - 1  # the op's W_float = W_q * scale + bias
    ref = F.conv1d(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(dense), groups=2)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-6)


@pytest.mark.parametrize("equation, shapes", [
    ("nchw,nwhu->nchu", [(2, 3, 4, 5), (2, 5, 4, 6)]),
    ("nchw,nwhu->nchu", [(1, 3, 4, 5), (2, 5, 1, 6)]),  # batch and height broadcast
    ("chw,whr->chr", [(3, 4, 5), (5, 4, 2)]),
    ("abc,cbd->abd", [(3, 1, 5), (5, 4, 2)]),
])
@BOTH_PRECISIONS
def test_einsum_matches_numpy(run_mil, dtype, equation, shapes):
    rng = np.random.default_rng(0)
    a, b = (rng.uniform(-2, 2, s).astype(dtype) for s in shapes)
    (out,) = run_mil(lambda a, b: mb.einsum(values=(a, b), equation=equation), {"a": a, "b": b})
    inputs = equation.split("->")[0].split(",")
    size = {label: max(n for labels, s in zip(inputs, shapes, strict=True)
                       for la, n in zip(labels, s, strict=True) if la == label)
            for label in set("".join(inputs))}
    wide = [np.broadcast_to(v.astype(np.float64), [size[la] for la in labels])
            for v, labels in zip((a, b), inputs, strict=True)]
    close(out, np.einsum(equation, *wide), scale=8)


@pytest.mark.parametrize("mask", [None, "bool", "float"])
@BOTH_PRECISIONS
@EXAMPLES
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5), st.integers(1, 4), st.data())
def test_scaled_dot_product_attention_matches_torch(run_mil, dtype, mask, heads, target, source, dim, data):
    q = data.draw(arrays((1, heads, target, dim), dtype))
    k = data.draw(arrays((1, heads, source, dim), dtype))
    v = data.draw(arrays((1, heads, source, dim), dtype))
    inputs = {"q": q, "k": k, "v": v}
    torch_mask = None
    if mask == "bool":
        m = data.draw(hnp.arrays(np.bool_, (target, source)))
        m[:, 0] = True  # every query sees at least one key
        inputs["m"] = m
        torch_mask = torch.from_numpy(m)
    elif mask == "float":
        m = data.draw(arrays((target, source), dtype))
        inputs["m"] = m
        torch_mask = torch.from_numpy(m.astype(np.float64))
    (out,) = run_mil(lambda q, k, v, m=None: mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=m),
                     inputs, opset="iOS18")
    ref = F.scaled_dot_product_attention(*(torch.from_numpy(a.astype(np.float64)) for a in (q, k, v)),
                                         attn_mask=torch_mask)
    close(out, ref.numpy(), scale=4 * dim)


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "torch-linear"])
@pytest.mark.parametrize("x_shape", [(5,), (3, 5), (2, 3, 5), (0, 5)], ids=["1d", "2d", "3d", "no-rows"])
def test_inner_product_paths_match_numpy(monkeypatch, onednn, x_shape):
    """Both ways the executor computes a linear: oneDNN's inner product where torch has it, and
    ``F.linear`` where it does not, against numpy float64."""
    if onednn and base._onednn_inner_product() is None:
        pytest.skip("this torch has no oneDNN inner product")
    if not onednn:
        monkeypatch.setattr(base, "_onednn_inner_product", lambda: None)
    rng = np.random.default_rng(0)
    x, w, b = (rng.uniform(-2, 2, s).astype(np.float32) for s in (x_shape, (7, 5), (7,)))
    for bias in (b, None):
        out = base.inner_product(torch.from_numpy(x), torch.from_numpy(w),
                                 None if bias is None else torch.from_numpy(bias)).numpy()
        ref = x.astype(np.float64) @ w.astype(np.float64).T + (0 if bias is None else bias.astype(np.float64))
        assert out.shape == ref.shape
        close(out, ref, scale=5)


def test_linear_runs_on_onednn_where_torch_has_it():
    """The fast path is the one this host takes (a torch built with oneDNN: Linux and macOS wheels)."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch is built without oneDNN")
    assert base._onednn_inner_product() is not None
