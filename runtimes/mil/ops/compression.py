"""Weight decompression (constexpr ops, evaluated once at load) and (de)quantization of activations."""

from __future__ import annotations

import numpy as np

from runtimes.mil.ops.base import Unsupported, kernel, norm_axis


def _affine(data, scale, offset, axis):
    """``scale * (data - offset)`` with per-tensor or per-``axis`` vectors."""
    data = data.astype(np.float32)
    scale = np.asarray(scale, np.float32)
    offset = np.zeros((), np.float32) if offset is None else np.asarray(offset, np.float32)
    if axis is not None and (scale.ndim == 1 or offset.ndim == 1):
        shape = [1] * data.ndim
        shape[norm_axis(axis, data.ndim)] = -1
        scale = scale.reshape(shape) if scale.ndim == 1 else scale
        offset = offset.reshape(shape) if offset.ndim == 1 else offset
    return scale * (data - offset)


def _unpack_bits(packed, n_bits: int, count: int) -> np.ndarray:
    """Row-major ``n_bits``-wide unsigned values packed little-endian into bytes."""
    bits = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")[: n_bits * count]
    weights = (1 << np.arange(n_bits)).astype(np.uint32)
    return (bits.reshape(count, n_bits) * weights).sum(axis=1)


def _block_repeat(values, shape):
    """Spread per-block values over ``shape``: block size per axis is shape / values.shape."""
    for axis, (n, size) in enumerate(zip(values.shape, shape, strict=True)):
        if size % n:
            raise Unsupported("scale", f"{n} blocks do not divide dimension {size} of axis {axis}")
        values = np.repeat(values, size // n, axis=axis)
    return values


@kernel("constexpr_affine_dequantize")
def constexpr_affine_dequantize(quantized_data, zero_point, scale, axis):
    return _affine(quantized_data, scale, zero_point, axis)


@kernel("constexpr_cast")
def constexpr_cast(source_val, output_dtype):
    return source_val


@kernel("constexpr_blockwise_shift_scale")
def constexpr_blockwise_shift_scale(data, scale, offset=None):
    scale = _block_repeat(np.asarray(scale, np.float32), data.shape)
    offset = 0 if offset is None else _block_repeat(np.asarray(offset, np.float32), data.shape)
    return scale * (data.astype(np.float32) - offset)


def _lut_lookup(indices, lut, vector_axis):
    """iOS18 LUT: ``lut`` is (*groups, palettes, vector) over ``indices`` of the groups' rank."""
    groups, vector = lut.shape[:-2], lut.shape[-1]
    blocks = [n // g for n, g in zip(indices.shape, groups, strict=True)]
    group_index = np.ix_(*(np.arange(n) // b for n, b in zip(indices.shape, blocks, strict=True)))
    values = lut[group_index + (indices.astype(np.int64),)]  # (*indices.shape, vector)
    if vector == 1:
        return values[..., 0]
    if vector_axis is None:
        raise Unsupported("vector_axis", "required when the LUT holds vectors")
    axis = norm_axis(vector_axis, indices.ndim)
    values = np.moveaxis(values, -1, axis + 1)
    shape = list(indices.shape)
    shape[axis] *= vector
    return values.reshape(shape)


@kernel("constexpr_lut_to_dense")
def constexpr_lut_to_dense(indices, lut, shape=None, vector_axis=None):
    if shape is not None:  # iOS16: flat LUT, indices packed into bytes
        shape = [int(s) for s in np.ravel(shape)]
        n_bits = int(np.log2(lut.size))
        return lut[_unpack_bits(indices, n_bits, int(np.prod(shape)))].reshape(shape)
    return _lut_lookup(indices, lut, vector_axis)


@kernel("constexpr_sparse_to_dense")
def constexpr_sparse_to_dense(nonzero_data, mask, shape=None):
    if shape is not None:  # iOS16: mask packed into bytes
        shape = [int(s) for s in np.ravel(shape)]
        mask = _unpack_bits(mask, 1, int(np.prod(shape))).reshape(shape)
    dense = np.zeros(mask.shape, dtype=nonzero_data.dtype)
    dense[mask.astype(bool)] = nonzero_data
    return dense


@kernel("constexpr_lut_to_sparse")
def constexpr_lut_to_sparse(indices_mask, indices_nonzero_data, lut, vector_axis=None):
    mask = indices_mask.astype(bool)
    groups, vector = lut.shape[:-2], lut.shape[-1]
    dense_indices = np.zeros(mask.shape, dtype=np.int64)
    dense_indices[mask] = indices_nonzero_data
    dense = _lut_lookup(dense_indices, lut.reshape(*groups, lut.shape[-2], vector), vector_axis)
    if vector > 1:
        axis = norm_axis(vector_axis, mask.ndim)
        mask = np.repeat(mask, vector, axis=axis)
    return mask.astype(np.uint8), dense[mask]


@kernel("constexpr_sparse_blockwise_shift_scale")
def constexpr_sparse_blockwise_shift_scale(data_mask, nonzero_data, scale, offset=None):
    mask = data_mask.astype(bool)
    dense = np.zeros(mask.shape, dtype=np.float32)
    dense[mask] = nonzero_data
    return data_mask, constexpr_blockwise_shift_scale(dense, scale, offset)[mask]


@kernel("dequantize")
def dequantize(input, scale, zero_point=None, axis=None):
    return _affine(input, scale, zero_point, axis)


@kernel("quantize")
def quantize(input, scale, output_dtype, zero_point=None, axis=None):
    """clip(round(input / scale) + zero_point) in the range of ``output_dtype``; halves round to even."""
    ranges = {"int8": (-128, 127), "uint8": (0, 255)}
    if output_dtype not in ranges:
        raise Unsupported("output_dtype", f"{output_dtype!r} is not one of int8, uint8")
    scale = np.asarray(scale, np.float32)
    offset = np.zeros((), np.float32) if zero_point is None else np.asarray(zero_point, np.float32)
    if axis is not None:
        shape = [1] * input.ndim
        shape[norm_axis(axis, input.ndim)] = -1
        scale = scale.reshape(shape) if scale.ndim == 1 else scale
        offset = offset.reshape(shape) if offset.ndim == 1 else offset
    return np.clip(np.round(input / scale) + offset, *ranges[output_dtype])
