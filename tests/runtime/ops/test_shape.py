"""Reshapes, slices, joins, gathers, padding and fills on the executor, against independent formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil.mil import Builder as mb
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.runtime.ops.oracle import EXAMPLES, arrays

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


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
