"""Reshapes, slices, joins, rearrangements, gathers, scatters, padding and fills on the executor, against
independent formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil.mil import Builder as mb
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.runtime.ops.oracle import EXAMPLES, PER_OP, arrays, close

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
                     {"x": x, "i": indices}, opset="iOS16")  # negative indices count from the end before iOS17
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


# ---- reordering, rearranging, windows ----------------------------------------------------------

@EXAMPLES
@given(hnp.array_shapes(min_dims=1, max_dims=4, max_side=5), st.data())
def test_reverse_and_reverse_sequence(run_mil, shape, data):
    x = data.draw(hnp.arrays(np.int32, shape, elements=st.integers(-50, 50)))
    axes = data.draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True))
    seq_axis = data.draw(st.integers(0, len(shape) - 1))
    batch_axis = data.draw(st.integers(0, len(shape) - 1).filter(lambda a: a != seq_axis)) if len(shape) > 1 else 0
    lengths = np.array([data.draw(st.integers(0, shape[seq_axis])) for _ in range(shape[batch_axis])], np.int32)
    build = [lambda x: mb.reverse(x=x, axes=axes)]
    if len(shape) > 1:
        build.append(lambda x: mb.reverse_sequence(x=x, lengths=lengths, seq_axis=seq_axis, batch_axis=batch_axis))
    outs = run_mil(lambda x: [b(x) for b in build], {"x": x})
    assert np.array_equal(outs[0], torch.flip(torch.from_numpy(x), axes).numpy())
    if len(shape) > 1:
        expected = x.copy()
        for index in np.ndindex(*shape):
            b, t = index[batch_axis], index[seq_axis]
            if t < lengths[b]:
                source = list(index)
                source[seq_axis] = lengths[b] - 1 - t
                expected[index] = x[tuple(source)]
        assert np.array_equal(outs[1], expected)


@EXAMPLES
@given(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7), st.data())
def test_sliding_windows_match_torch_unfold(run_mil, shape, data):
    x = data.draw(hnp.arrays(np.int32, shape, elements=st.integers(-9, 9)))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    size = data.draw(st.integers(1, shape[axis]))
    stride = data.draw(st.integers(1, 3))
    (out,) = run_mil(lambda x: mb.sliding_windows(x=x, axis=axis, size=size, stride=stride), {"x": x})
    ref = torch.from_numpy(x).unfold(axis % len(shape), size, stride)  # windows last
    assert np.array_equal(out, torch.movedim(ref, -1, axis % len(shape) + 1).numpy())


def test_flatten2d_and_reshape_like_follow_their_documented_shapes(run_mil):
    """flatten2d's documented examples, and reshape_like taking dims from two references."""
    cases = {(3,): [(-1, (1, 3)), (1, (3, 1))], (4, 3): [(-1, (4, 3))], (2, 3, 2): [(-1, (6, 2))],
             (5, 5, 2): [(1, (5, 10))]}
    for shape, checks in cases.items():
        x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        outs = run_mil(lambda x, checks=checks: [mb.flatten2d(x=x, axis=axis) for axis, _ in checks], {"x": x})
        for out, (_, want) in zip(outs, checks, strict=True):
            assert out.shape == want and np.array_equal(out.ravel(), x.ravel())
    x = np.arange(24, dtype=np.float32)
    a, b = np.zeros((2, 3, 5), np.float32), np.zeros((7, 4), np.float32)
    (out,) = run_mil(lambda x, a, b: mb.reshape_like(x=x, ref_tensors=(a, b), begins=(0, 1), ends=(2, 0),
                                                     end_masks=(False, True)), {"x": x, "a": a, "b": b})
    assert out.shape == (2, 3, 4) and np.array_equal(out.ravel(), x)


def _tf_depth_to_space(x, b):
    """TensorFlow's DepthToSpace on (n, C·b², H, W), by its index rule."""
    n, c, h, w = x.shape
    out = np.zeros((n, c // (b * b), h * b, w * b), x.dtype)
    for i, j in np.ndindex(b, b):
        for k in range(c // (b * b)):
            out[:, k, i::b, j::b] = x[:, (i * b + j) * (c // (b * b)) + k]
    return out


@EXAMPLES
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(2, 3), st.data())
def test_depth_space_and_pixel_shuffles(run_mil, n, c, h, w, block, data):
    deep = data.draw(hnp.arrays(np.int32, (n, c * block * block, h, w), elements=st.integers(-99, 99)))
    wide = data.draw(hnp.arrays(np.int32, (n, c, h * block, w * block), elements=st.integers(-99, 99)))
    to_space, to_depth, shuffled, unshuffled = run_mil(lambda d, s: [
        mb.depth_to_space(x=d, block_size=block), mb.space_to_depth(x=s, block_size=block),
        mb.pixel_shuffle(x=d, upscale_factor=block), mb.pixel_unshuffle(x=s, downscale_factor=np.uint32(block))],
        {"d": deep.astype(np.float32), "s": wide.astype(np.float32)}, opset="iOS16")
    assert np.array_equal(to_space, _tf_depth_to_space(deep, block))
    assert np.array_equal(_tf_depth_to_space(to_depth.astype(np.int32), block), wide)  # the inverse
    assert np.array_equal(shuffled, F.pixel_shuffle(torch.from_numpy(deep), block).numpy())
    assert np.array_equal(unshuffled, F.pixel_unshuffle(torch.from_numpy(wide), block).numpy())


def test_space_to_batch_and_back_worked_example(run_mil):
    """The specification tests' example: batch 2, 2x2 blocks, two columns of padding in front."""
    x = np.array([[[[1, 2, 3, 4], [5, 6, 7, 8]]], [[[9, 10, 11, 12], [13, 14, 15, 16]]]], np.float32)
    batched = np.array([[[[0, 1, 3]]], [[[0, 9, 11]]], [[[0, 2, 4]]], [[[0, 10, 12]]], [[[0, 5, 7]]],
                        [[[0, 13, 15]]], [[[0, 6, 8]]], [[[0, 14, 16]]]], np.float32)
    to_batch, back = run_mil(lambda x, y: [mb.space_to_batch(x=x, block_shape=[2, 2], paddings=[[0, 0], [2, 0]]),
                                           mb.batch_to_space(x=y, block_shape=[2, 2], crops=[[0, 0], [2, 0]])],
                             {"x": x, "y": batched})
    assert np.array_equal(to_batch, batched) and np.array_equal(back, x)


@EXAMPLES
@given(hnp.array_shapes(min_dims=3, max_dims=4, min_side=3, max_side=6), st.data())
def test_crop_and_band_part(run_mil, shape, data):
    x = data.draw(hnp.arrays(np.float32, shape, elements=st.integers(-9, 9).map(float)))
    top, bottom = data.draw(st.integers(0, 1)), data.draw(st.integers(0, 1))
    lower, upper = data.draw(st.integers(-1, 3)), data.draw(st.integers(-1, 3))
    cropped, band = run_mil(lambda x: [mb.crop(x=x, crop_height=[top, bottom], crop_width=[bottom, top]),
                                       mb.band_part(x=x, lower=lower, upper=upper)], {"x": x})
    assert np.array_equal(cropped, x[..., top:shape[-2] - bottom, bottom:shape[-1] - top])
    t = torch.from_numpy(x)
    kept = t if lower < 0 else torch.triu(t, -lower)
    kept = kept if upper < 0 else torch.tril(kept, upper)
    assert np.array_equal(band, kept.numpy())


@EXAMPLES
@given(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6), st.data())
def test_slice_update_writes_the_slice_slice_by_index_reads(run_mil, shape, data):
    x = data.draw(hnp.arrays(np.float32, shape, elements=st.integers(-9, 9).map(float)))
    begin = [data.draw(st.integers(0, d - 1)) for d in shape]
    end = [data.draw(st.integers(b + 1, d)) for b, d in zip(begin, shape, strict=True)]
    stride = [data.draw(st.integers(1, 2)) for _ in shape]
    index = tuple(slice(b, e, s) for b, e, s in zip(begin, end, stride, strict=True))
    update = np.full(x[index].shape, 100.0, np.float32)
    (out,) = run_mil(lambda x, u: mb.slice_update(x=x, update=u, begin=begin, end=end, stride=stride),
                     {"x": x, "u": update}, opset="iOS18")
    expected = x.copy()
    expected[index] = 100.0
    assert np.array_equal(out, expected)


@EXAMPLES
@given(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), st.integers(1, 5), st.data())
def test_one_hot_non_zero_and_fill_like(run_mil, shape, depth, data):
    indices = data.draw(hnp.arrays(np.int32, shape, elements=st.integers(0, depth - 1)))
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    sparse = data.draw(hnp.arrays(np.float32, shape, elements=st.sampled_from([0.0, 1.5, -2.0])))
    hot, where, filled = run_mil(lambda i, s: [
        mb.one_hot(indices=i, one_hot_vector_size=depth, axis=axis, on_value=np.float32(2), off_value=np.float32(-1)),
        mb.non_zero(x=s), mb.fill_like(ref_tensor=s, value=np.float32(7))], {"i": indices, "s": sparse}, opset="iOS16")
    ref = F.one_hot(torch.from_numpy(indices).long(), depth).numpy() * 3.0 - 1.0
    assert np.array_equal(hot, np.moveaxis(ref, -1, axis % (len(shape) + 1)))
    assert where.dtype == np.int32 and np.array_equal(where, torch.nonzero(torch.from_numpy(sparse)).numpy())
    assert np.array_equal(filled, np.full(shape, 7, np.float32))


# ---- scatters ------------------------------------------------------------------------------------

MODES = {"update": None, "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
         "max": np.maximum, "min": np.minimum}


def _applied(data, positions, updates, mode):
    """The scatter rule written out: each update combined into its place, in order."""
    out = data.astype(np.float64)
    for at, value in zip(positions, updates, strict=True):
        out[at] = value if mode == "update" else MODES[mode](out[at], value)
    return out


@pytest.mark.parametrize("mode", sorted(MODES))
@PER_OP
@given(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4), st.data())
def test_scatter_family(run_mil, mode, shape, data):
    x = data.draw(arrays(shape, np.float32, 0.5, 2.0))
    axis = data.draw(st.integers(0, len(shape) - 1))
    unique = mode == "update"  # repeated places under "update" keep an unspecified one of the updates
    count = data.draw(st.integers(1, shape[axis]))
    indices = np.array(data.draw(st.lists(st.integers(0, shape[axis] - 1), min_size=count, max_size=count,
                                          unique=unique)), np.int32)
    scatter_updates = data.draw(arrays(shape[:axis] + (count,) + shape[axis + 1:], np.float32, 0.5, 2.0))
    along = data.draw(hnp.arrays(np.int32, shape, elements=st.integers(0, shape[axis] - 1)))
    if unique:
        along = np.argsort(data.draw(arrays(shape, np.float32)), axis=axis, kind="stable").astype(np.int32)
    along_updates = data.draw(arrays(shape, np.float32, 0.5, 2.0))
    depth = data.draw(st.integers(1, len(shape)))
    points = data.draw(st.lists(st.tuples(*[st.integers(0, d - 1) for d in shape[:depth]]), min_size=1, max_size=4,
                                unique=unique))
    nd_indices = np.array(points, np.int32)
    nd_updates = data.draw(arrays((len(points),) + shape[depth:], np.float32, 0.5, 2.0))
    outs = run_mil(lambda x, u1, i2, u2, u3: [
        mb.scatter(data=x, indices=indices, updates=u1, axis=axis, mode=mode),
        mb.scatter_along_axis(data=x, indices=i2, updates=u2, axis=axis, mode=mode),
        mb.scatter_nd(data=x, indices=nd_indices, updates=u3, mode=mode)],
        {"x": x, "u1": scatter_updates, "i2": along, "u2": along_updates, "u3": nd_updates})
    grid = list(np.ndindex(*scatter_updates.shape))
    by_index = [tuple(indices[p[axis]] if a == axis else p[a] for a in range(len(shape))) for p in grid]
    close(outs[0], _applied(x, by_index, [scatter_updates[p] for p in grid], mode))
    grid = list(np.ndindex(*shape))
    by_along = [tuple(along[p] if a == axis else p[a] for a in range(len(shape))) for p in grid]
    close(outs[1], _applied(x, by_along, [along_updates[p] for p in grid], mode))
    close(outs[2], _applied(x, [tuple(p) for p in points], list(nd_updates), mode))


@pytest.mark.parametrize("build", [
    lambda x, i, **check: mb.scatter(data=x, indices=i, updates=np.ones(1, np.float32), mode="add", **check),
    lambda x, i, **check: mb.gather(x=x, indices=i, **check),
], ids=["scatter", "gather"])
def test_negative_indices_count_from_the_end_before_iOS17_only(run_mil, build):
    """Indices given at predict time, as Core ML validates them (constant ones fail when the program is built)."""
    x, index = np.arange(3, dtype=np.float32), {"i": np.array([-1], np.int32)}
    (out,) = run_mil(build, {"x": x, **index}, opset="iOS15")
    assert out.tolist() in ([0, 1, 3], [2])  # scatter adds to, gather reads, the last element
    with pytest.raises(RuntimeError, match=r"^Unable to compute the prediction using ML Program: "
                                           r"(scatter|gather) \(opset iOS17\).*indices must be in \[0, 3\) from iOS17"):
        run_mil(lambda x, i: build(x, i, validate_indices=True), {"x": x, **index}, opset="iOS17")


def _scatter(op, d, i, u, **validate):
    if op == "scatter":
        return mb.scatter(data=d, indices=i, updates=u, mode="update", **validate)
    if op == "scatter_along_axis":  # on the first column
        column = [0, 0], [2, 1]
        return mb.scatter_along_axis(data=mb.slice_by_size(x=d, begin=column[0], size=column[1]),
                                     indices=mb.expand_dims(x=i, axes=[1]),
                                     updates=mb.slice_by_size(x=u, begin=column[0], size=column[1]), axis=0,
                                     mode="update", **validate)
    return mb.scatter_nd(data=d, indices=mb.expand_dims(x=i, axes=[1]), updates=u, mode="update", **validate)


SCATTERS = ["scatter", "scatter_along_axis", "scatter_nd"]


@pytest.mark.parametrize("op", SCATTERS)
@pytest.mark.parametrize("opset, bad", [("iOS15", 5), ("iOS15", -3), ("iOS17", -1), ("iOS17", 5), ("iOS18", 5)])
def test_scatter_with_an_index_out_of_range(run_mil, op, opset, bad):
    """Before iOS17 the specification requires indices in range, and iOS17's ``validate_indices``
    asks for the check: an error at predict time, as Core ML's predict raises one. With
    ``validate_indices=False`` the specification leaves the result undefined but memory safe: the
    executor writes nothing for the bad index and makes the other updates."""
    data = np.zeros((2, 3), np.float32)
    updates = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    inputs = {"d": data, "i": np.array([bad, 0], np.int32), "u": updates}
    checked = {} if opset == "iOS15" else {"validate_indices": True}
    failure = rf"^Unable to compute the prediction using ML Program: {op} \(opset {opset}\)"
    with pytest.raises(RuntimeError, match=failure):
        run_mil(lambda d, i, u: _scatter(op, d, i, u, **checked), inputs, opset=opset)
    if opset == "iOS15":
        return
    (out,) = run_mil(lambda d, i, u: _scatter(op, d, i, u, validate_indices=False), inputs, opset=opset)
    expected = np.zeros((2, 3), np.float32)
    expected[0] = updates[1]  # the good index's update; the bad one's is dropped
    if op == "scatter_along_axis":
        expected = expected[:, :1]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("shape, expected", [
    ([1, 0, -1, 0], (1, 1, 2, 50)),  # the specification's example: zeros aligned from the right, the extra one is 1
    ([0, -1, 0, 0], (1, 1, 2, 50)),  # a leading 0 with no dimension of x under it
    ([0, 0], (2, 50)),  # the rank of x: iOS15's rule and iOS17's agree
    ([1, 0, 0], (1, 2, 50)),  # aligned from the left (iOS15's rule) the zeros would copy 50 and nothing
])
def test_ios17_reshape_aligns_zeros_with_the_input_from_the_right(run_mil, shape, expected):
    x = np.arange(100, dtype=np.float32).reshape(2, 50)
    static, dynamic = run_mil(lambda x, s: [mb.reshape(x=x, shape=np.array(shape, np.int32)), mb.reshape(x=x, shape=s)],
                              {"x": x, "s": np.array(shape, np.int32)})
    for out in (static, dynamic):
        assert out.shape == expected
        np.testing.assert_array_equal(out.ravel(), x.ravel())
