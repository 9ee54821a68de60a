"""Kernels that move data: reshapes, slices, joins, gathers, scatters, padding and fills."""

from __future__ import annotations

import numpy as np

from runtimes.mil.ops.base import Unsupported, kernel, norm_axes, norm_axis, on_torch, torch_float32, torch_module


@kernel("reshape")
def reshape(x, shape, opset="iOS15"):
    """A 0 in ``shape`` copies a dimension of ``x``. Before iOS17 ``shape`` has the rank of ``x``
    and a 0 copies the dimension at its own position; from iOS17 on the two are aligned at their
    right ends (``shape[i]`` copies ``x.shape[rank - len(shape) + i]``), and a 0 with no dimension
    of ``x`` there becomes 1: [2, 50] reshaped to [1, 0, -1, 0] is [1, 1, 2, 50]."""
    shape = [int(s) for s in np.ravel(shape)]
    if 0 in shape and opset in ("iOS13", "iOS14", "iOS15", "iOS16") and len(shape) != x.ndim:
        raise ValueError(f"shape {shape} has a 0 but {len(shape)} dimensions for an input of rank {x.ndim}; "
                         "before iOS17 a shape with a 0 has the input's rank")
    offset = x.ndim - len(shape)
    copied = [(x.shape[offset + i] if offset + i >= 0 else 1) if s == 0 else s for i, s in enumerate(shape)]
    return np.reshape(x, copied)


@kernel("transpose")
def transpose(x, perm):
    return np.transpose(x, [int(p) for p in perm])


@kernel("expand_dims")
def expand_dims(x, axes):
    rank = x.ndim + len(np.ravel(axes))
    return np.expand_dims(x, tuple(sorted(norm_axis(a, rank) for a in np.ravel(axes))))


@kernel("squeeze")
def squeeze(x, axes=None):
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=norm_axes(axes, x.ndim))


@kernel("concat")
def concat(values, axis, interleave=False):
    # scalars join as one-element vectors: coremltools builds shape vectors this way (a flexible
    # input's length gathered from its shape, concatenated with the fixed dimensions)
    values = [np.reshape(v, (1,)) if np.ndim(v) == 0 else v for v in values]
    axis = norm_axis(axis, values[0].ndim)
    if not interleave:
        return np.concatenate(values, axis=axis)
    stacked = np.stack(values, axis=axis + 1)
    shape = list(values[0].shape)
    shape[axis] *= len(values)
    return stacked.reshape(shape)


@kernel("split")
def split(x, axis, num_splits=None, split_sizes=None):
    axis = norm_axis(axis, x.ndim)
    if split_sizes is not None:
        bounds = np.cumsum([int(s) for s in np.ravel(split_sizes)])[:-1]
    elif num_splits is not None:
        if x.shape[axis] % int(num_splits):
            raise Unsupported("num_splits", f"{num_splits} does not divide dimension {x.shape[axis]}")
        bounds = int(num_splits)
    else:
        raise Unsupported("split_sizes", "neither num_splits nor split_sizes is given")
    return tuple(np.split(x, bounds, axis=axis))


@kernel("stack")
def stack(values, axis):
    return np.stack(values, axis=norm_axis(axis, values[0].ndim + 1))


@kernel("tile")
def tile(x, reps):
    return np.tile(x, [int(r) for r in reps])


@kernel("slice_by_index")
def slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    return x[_slice_index(x.shape, begin, end, stride, begin_mask, end_mask, squeeze_mask)]


@kernel("slice_by_size")
def slice_by_size(x, begin, size):
    index = []
    for i, (b, s) in enumerate(zip(np.ravel(begin), np.ravel(size), strict=True)):
        b = int(b) + x.shape[i] if int(b) < 0 else int(b)
        index.append(slice(b, None if int(s) == -1 else b + int(s)))
    return x[tuple(index)]


def _checked_indices(indices, size, param="indices"):
    indices = np.asarray(indices).astype(np.int64)
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise IndexError(f"{param} out of range [{-size}, {size}): min {indices.min()}, max {indices.max()}")
    return np.where(indices < 0, indices + size, indices)


@kernel("gather")
def gather(x, indices, axis=0, batch_dims=0, validate_indices=False, opset="iOS15"):
    axis, batch_dims = norm_axis(axis, x.ndim), int(batch_dims)
    indices = _opset_indices(indices, x.shape[axis], opset)
    if batch_dims == 0:
        return np.take(x, indices, axis=axis)
    batch_shape = x.shape[:batch_dims]
    xs = x.reshape((-1,) + x.shape[batch_dims:])
    ids = indices.reshape((-1,) + indices.shape[batch_dims:])
    parts = [np.take(xs[i], ids[i], axis=axis - batch_dims) for i in range(xs.shape[0])]
    return np.stack(parts).reshape(batch_shape + parts[0].shape)


@kernel("gather_along_axis")
def gather_along_axis(x, indices, axis=0, validate_indices=False):
    axis = norm_axis(axis, x.ndim)
    return np.take_along_axis(x, _checked_indices(indices, x.shape[axis]), axis=axis)


@kernel("gather_nd")
def gather_nd(x, indices, batch_dims=0, validate_indices=False):
    batch_dims = int(batch_dims)
    depth = indices.shape[-1]
    batch_shape = x.shape[:batch_dims]
    xs = x.reshape((-1,) + x.shape[batch_dims:])
    ids = np.asarray(indices).reshape((xs.shape[0], -1, depth)).astype(np.int64)
    for d in range(depth):
        ids[..., d] = _checked_indices(ids[..., d], xs.shape[1 + d])
    parts = [xs[b][tuple(ids[b, :, d] for d in range(depth))] for b in range(xs.shape[0])]
    return np.stack(parts).reshape(batch_shape + indices.shape[batch_dims:-1] + x.shape[batch_dims + depth:])


@kernel("pad")
def pad(x, pad, mode="constant", constant_val=0.0):
    pad = np.asarray(pad, int).reshape(-1, 2)
    widths = [(0, 0)] * (x.ndim - len(pad)) + [tuple(p) for p in pad]
    if mode == "constant":
        if on_torch(x) and all(before >= 0 and after >= 0 for before, after in widths):  # a copy: the same bits
            flat = [int(w) for before, after in reversed(widths) for w in (before, after)]
            return torch_module().nn.functional.pad(torch_float32(x), flat, value=float(constant_val)).numpy()
        return np.pad(x, widths, constant_values=constant_val)
    if mode == "reflect":
        return np.pad(x, widths, mode="reflect")
    if mode == "replicate":
        return np.pad(x, widths, mode="edge")
    raise Unsupported("mode", f"{mode!r} is not one of constant, reflect, replicate")


@kernel("fill")
def fill(shape, value=0.0):
    return np.full([int(s) for s in np.ravel(shape)], value)


@kernel("range_1d")
def range_1d(end, start, step):
    return np.arange(start, end, step)


@kernel("shape")
def shape(x):
    return np.asarray(x.shape, dtype=np.int32)


@kernel("cumsum")
def cumsum(x, axis=0, exclusive=False, reverse=False):
    axis = norm_axis(axis, x.ndim)
    y = np.flip(x, axis) if reverse else x
    y = np.cumsum(y, axis=axis)
    if exclusive:
        y = np.concatenate([np.zeros_like(np.take(y, [0], axis=axis)), np.take(y, range(y.shape[axis] - 1), axis=axis)],
                           axis=axis)
    return np.flip(y, axis) if reverse else y


@kernel("reverse")
def reverse(x, axes=None):
    return np.flip(x, axis=norm_axes(axes, x.ndim))


@kernel("reverse_sequence")
def reverse_sequence(x, lengths, seq_axis=0, batch_axis=0):
    """The first ``lengths[b]`` steps of each batch entry reversed, the rest kept."""
    seq_axis, batch_axis = norm_axis(seq_axis, x.ndim), norm_axis(batch_axis, x.ndim)
    y = np.array(x, copy=True)
    for b, length in enumerate(np.ravel(lengths).astype(int)):
        entry = np.take(x, [b], axis=batch_axis)
        head = np.flip(np.take(entry, np.arange(length), axis=seq_axis), axis=seq_axis)
        index = [slice(None)] * x.ndim
        index[batch_axis], index[seq_axis] = slice(b, b + 1), slice(0, length)
        y[tuple(index)] = head
    return y


@kernel("sliding_windows")
def sliding_windows(x, axis, size, stride=1):
    axis = norm_axis(axis, x.ndim)
    windows = np.lib.stride_tricks.sliding_window_view(x, int(size), axis=axis)[
        (slice(None),) * axis + (slice(None, None, int(stride)),)]
    return np.moveaxis(windows, -1, axis + 1)


@kernel("reshape_like")
def reshape_like(x, ref_tensors, begins, ends, end_masks):
    shape = []
    for ref, begin, end, to_end in zip(ref_tensors, np.ravel(begins), np.ravel(ends), np.ravel(end_masks), strict=True):
        shape += list(ref.shape[int(begin):] if to_end else ref.shape[int(begin):int(end)])
    return np.reshape(x, shape)


@kernel("flatten2d")
def flatten2d(x, axis=1):
    axis = norm_axis(axis, x.ndim) if int(axis) >= -x.ndim else 0
    return np.reshape(x, (int(np.prod(x.shape[:axis])), -1))


def _depth_to_space(x, block: int, channels_first_in_block: bool):
    """(n, C·b², H, W) -> (n, C, H·b, W·b); ``channels_first_in_block`` is PyTorch's PixelShuffle
    order (channel c·b² + i·b + j), otherwise TensorFlow's DepthToSpace order ((i·b + j)·C + c)."""
    n, c, h, w = x.shape
    c_out = c // (block * block)
    if channels_first_in_block:
        y = x.reshape(n, c_out, block, block, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        y = x.reshape(n, block, block, c_out, h, w).transpose(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c_out, h * block, w * block)


def _space_to_depth(x, block: int, channels_first_in_block: bool):
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // block, block, w // block, block)
    y = y.transpose(0, 1, 3, 5, 2, 4) if channels_first_in_block else y.transpose(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * block * block, h // block, w // block)


@kernel("depth_to_space")
def depth_to_space(x, block_size):
    return _depth_to_space(x, int(block_size), channels_first_in_block=False)


@kernel("space_to_depth")
def space_to_depth(x, block_size):
    return _space_to_depth(x, int(block_size), channels_first_in_block=False)


@kernel("pixel_shuffle")
def pixel_shuffle(x, upscale_factor):
    return _depth_to_space(x, int(upscale_factor), channels_first_in_block=True)


@kernel("pixel_unshuffle")
def pixel_unshuffle(x, downscale_factor):
    return _space_to_depth(x, int(downscale_factor), channels_first_in_block=True)


@kernel("space_to_batch")
def space_to_batch(x, block_shape, paddings):
    """TensorFlow's SpaceToBatchND on (n, C, H, W): block offsets lead the new batch."""
    bh, bw = (int(b) for b in np.ravel(block_shape))
    p = np.asarray(paddings, int).reshape(2, 2)
    x = np.pad(x, [(0, 0), (0, 0), tuple(p[0]), tuple(p[1])])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // bh, bh, w // bw, bw).transpose(3, 5, 0, 1, 2, 4)
    return y.reshape(bh * bw * n, c, h // bh, w // bw)


@kernel("batch_to_space")
def batch_to_space(x, block_shape, crops):
    bh, bw = (int(b) for b in np.ravel(block_shape))
    cr = np.asarray(crops, int).reshape(2, 2)
    nb, c, h, w = x.shape
    n = nb // (bh * bw)
    y = x.reshape(bh, bw, n, c, h, w).transpose(2, 3, 4, 0, 5, 1).reshape(n, c, h * bh, w * bw)
    return y[:, :, cr[0, 0]:h * bh - cr[0, 1], cr[1, 0]:w * bw - cr[1, 1]]


@kernel("crop")
def crop(x, crop_height, crop_width):
    (top, bottom), (left, right) = (int(v) for v in np.ravel(crop_height)), (int(v) for v in np.ravel(crop_width))
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


def _slice_index(shape, begin, end, stride, begin_mask, end_mask, squeeze_mask):
    rank = len(shape)
    stride = np.ones(rank, int) if stride is None else np.asarray(stride, int)
    begin_mask = np.zeros(rank, bool) if begin_mask is None else np.asarray(begin_mask, bool)
    end_mask = np.zeros(rank, bool) if end_mask is None else np.asarray(end_mask, bool)
    squeeze_mask = np.zeros(rank, bool) if squeeze_mask is None else np.asarray(squeeze_mask, bool)
    index = []
    for i in range(rank):
        b, e = int(begin[i]), int(end[i])
        b = b + shape[i] if b < 0 else b
        e = e + shape[i] if e < 0 else e
        if squeeze_mask[i]:
            index.append(b)
            continue
        index.append(slice(None if begin_mask[i] else b, None if end_mask[i] else e, int(stride[i])))
    return tuple(index)


@kernel("slice_update")
def slice_update(x, update, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    y = np.array(x, copy=True)
    index = _slice_index(x.shape, begin, end, stride, begin_mask, end_mask, squeeze_mask)
    if y[index].shape != np.shape(update):
        raise ValueError(f"update of shape {list(np.shape(update))} for a slice of shape {list(y[index].shape)}")
    y[index] = update
    return y


@kernel("band_part")
def band_part(x, lower=-1, upper=-1):
    m = np.arange(x.shape[-2])[:, None]
    n = np.arange(x.shape[-1])[None, :]
    keep = ((int(lower) < 0) | (m - n <= int(lower))) & ((int(upper) < 0) | (n - m <= int(upper)))
    return np.where(keep, x, np.zeros((), x.dtype))


@kernel("one_hot")
def one_hot(indices, one_hot_vector_size, axis=-1, on_value=1, off_value=0):
    depth = int(one_hot_vector_size)
    indices = np.asarray(indices, np.int64)
    axis = norm_axis(axis, indices.ndim + 1)
    hot = np.expand_dims(indices, axis) == np.arange(depth).reshape([-1 if a == axis else 1
                                                                     for a in range(indices.ndim + 1)])
    return np.where(hot, on_value, off_value)


@kernel("non_zero")
def non_zero(x):
    return np.argwhere(x)


@kernel("fill_like")
def fill_like(ref_tensor, value=0.0):
    return np.full(np.shape(ref_tensor), value)


_SCATTER_MODES = {
    "update": None, "add": np.add, "sub": np.subtract, "mul": np.multiply,
    "div": np.true_divide, "max": np.maximum, "min": np.minimum,
}


def _opset_indices(indices, size, opset):
    """Indices into an axis of ``size``; from iOS17 on, gather and the scatters take negative
    indices as out of range (``opset`` is filled in by the executor)."""
    indices = np.asarray(indices).astype(np.int64)
    if _negatives_out_of_range(opset) and indices.size and indices.min() < 0:
        raise IndexError(f"indices must be in [0, {size}) from iOS17 on: min {indices.min()}")
    return _checked_indices(indices, size)


def _negatives_out_of_range(opset) -> bool:
    return opset not in ("iOS13", "iOS14", "iOS15", "iOS16")


def _scatter_indices(indices, size, opset, validate):
    """A scatter's indices into an axis of ``size`` (negative ones counted from the end before
    iOS17), and which of them are in range. iOS17's ``validate_indices`` makes an index out of
    range an error at predict time; ``validate_indices=False`` leaves the result undefined but
    memory safe (the specification), and the executor writes nothing for such an index (the other
    updates are made). Before iOS17 (``validate`` None: the op has no such parameter) the
    specification requires indices in range, and one out of range is an error."""
    indices = np.asarray(indices).astype(np.int64)
    if validate is None or validate:
        return _opset_indices(indices, size, opset), None
    low = 0 if _negatives_out_of_range(opset) else -size
    valid = (indices >= low) & (indices < size)
    return np.where(valid, np.where(indices < 0, indices + size, indices), 0), valid


def _flag(value) -> bool | None:
    return None if value is None else bool(value)


def _scatter_into(data, positions, updates, mode, valid=None):
    """``data`` with ``updates`` combined at ``positions`` (an index tuple of equal-shaped
    arrays); repeated positions accumulate, and the last one wins under ``update``. Where
    ``valid`` (of the positions' shape) is False, nothing is written."""
    if mode not in _SCATTER_MODES:
        raise Unsupported("mode", f"{mode!r} is not one of {', '.join(_SCATTER_MODES)}")
    y = np.array(data, copy=True)
    updates = np.broadcast_to(updates, np.shape(positions[0])) if positions else updates
    if valid is not None:
        valid = np.broadcast_to(valid, np.shape(positions[0]))
        positions, updates = [p[valid] for p in positions], updates[valid]
    if mode == "update":
        y[tuple(positions)] = updates
    else:
        _SCATTER_MODES[mode].at(y, tuple(positions), updates)
    return y


@kernel("scatter")
def scatter(data, indices, updates, axis=0, mode="update", validate_indices=None, opset="iOS15"):
    axis = norm_axis(axis, data.ndim)
    indices, valid = _scatter_indices(indices, data.shape[axis], opset, _flag(validate_indices))
    along = [-1 if a == axis else 1 for a in range(data.ndim)]
    grid = list(np.indices(np.shape(updates), sparse=True))
    grid[axis] = indices.reshape(along)
    positions = np.broadcast_arrays(*grid)
    return _scatter_into(data, positions, updates, mode, None if valid is None else valid.reshape(along))


@kernel("scatter_along_axis")
def scatter_along_axis(data, indices, updates, axis=0, mode="add", validate_indices=None, opset="iOS15"):
    axis = norm_axis(axis, data.ndim)
    grid = list(np.broadcast_arrays(*np.indices(np.shape(indices), sparse=True)))
    grid[axis], valid = _scatter_indices(indices, data.shape[axis], opset, _flag(validate_indices))
    return _scatter_into(data, grid, updates, mode, valid)


@kernel("scatter_nd")
def scatter_nd(data, indices, updates, mode="add", validate_indices=None, opset="iOS15"):
    indices = np.asarray(indices).astype(np.int64)
    depth = indices.shape[-1]
    points = indices.reshape(-1, depth)
    checked = [_scatter_indices(points[:, d], data.shape[d], opset, _flag(validate_indices)) for d in range(depth)]
    tail = data.shape[depth:]
    rest = np.indices(tail).reshape(len(tail), -1) if tail else np.zeros((0, 1), np.int64)
    positions = [np.repeat(c, rest.shape[1]) for c, _ in checked] + [np.tile(r, len(points)) for r in rest]
    valid = None
    if _flag(validate_indices) is False:
        valid = np.repeat(np.logical_and.reduce([v for _, v in checked]) if checked else np.ones(len(points), bool),
                          rest.shape[1])
    return _scatter_into(data, positions, np.reshape(updates, -1), mode, valid)
