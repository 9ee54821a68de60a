"""Matrix products, convolutions and pooling on the executor, against independent formulas (numpy float64 or torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil.mil import Builder as mb
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.runtime.ops.oracle import EXAMPLES, FLOATS, arrays, close

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


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
