"""Kernels that move data: reshapes, slices, joins, gathers, scatters, padding and fills."""

from __future__ import annotations

import numpy as np

from runtimes.mil.ops.base import Unsupported, kernel, norm_axes, norm_axis


@kernel("reshape")
def reshape(x, shape):
    shape = [x.shape[i] if int(s) == 0 else int(s) for i, s in enumerate(np.ravel(shape))]
    return np.reshape(x, shape)


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
    rank = x.ndim
    stride = np.ones(rank, int) if stride is None else np.asarray(stride, int)
    begin_mask = np.zeros(rank, bool) if begin_mask is None else np.asarray(begin_mask, bool)
    end_mask = np.zeros(rank, bool) if end_mask is None else np.asarray(end_mask, bool)
    squeeze_mask = np.zeros(rank, bool) if squeeze_mask is None else np.asarray(squeeze_mask, bool)
    index = []
    for i in range(rank):
        dim = x.shape[i]
        b, e = int(begin[i]), int(end[i])
        b = b + dim if b < 0 else b
        e = e + dim if e < 0 else e
        if squeeze_mask[i]:
            index.append(b)
            continue
        index.append(slice(None if begin_mask[i] else b, None if end_mask[i] else e, int(stride[i])))
    return x[tuple(index)]


@kernel("slice_by_size")
def slice_by_size(x, begin, size):
    index = []
    for i, (b, s) in enumerate(zip(np.ravel(begin), np.ravel(size))):
        b = int(b) + x.shape[i] if int(b) < 0 else int(b)
        index.append(slice(b, None if int(s) == -1 else b + int(s)))
    return x[tuple(index)]


def _checked_indices(indices, size, param="indices"):
    indices = np.asarray(indices).astype(np.int64)
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise IndexError(f"{param} out of range [{-size}, {size}): min {indices.min()}, max {indices.max()}")
    return np.where(indices < 0, indices + size, indices)


@kernel("gather")
def gather(x, indices, axis=0, batch_dims=0, validate_indices=False):
    axis, batch_dims = norm_axis(axis, x.ndim), int(batch_dims)
    indices = _checked_indices(indices, x.shape[axis])
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
