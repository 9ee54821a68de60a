"""Matrix products, convolutions and pooling."""

from __future__ import annotations

import itertools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from runtimes.mil.ops.base import Unsupported, inner_product, kernel, matrix_product, torch_float32


def _floats(*arrays) -> bool:
    return all(np.issubdtype(np.asarray(a).dtype, np.floating) for a in arrays)


@kernel("linear")
def linear(x, weight, bias=None):
    if not _floats(x, weight) or (bias is not None and not _floats(bias)):
        y = np.matmul(x, weight.T)
        return y if bias is None else y + bias
    return inner_product(torch_float32(x), torch_float32(weight), None if bias is None else torch_float32(bias)).numpy()


@kernel("matmul")
def matmul(x, y, transpose_x=False, transpose_y=False):
    if transpose_x and np.ndim(x) >= 2:
        x = np.swapaxes(x, -1, -2)
    if transpose_y and np.ndim(y) >= 2:
        y = np.swapaxes(y, -1, -2)
    return matrix_product(x, y)


def _spatial_padding(pad_type, pad, size, kernel_size, strides, dilations):
    """(begin, end) padding per spatial dim, from MIL's pad_type rules."""
    n = len(size)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        pad = np.zeros(2 * n, dtype=int) if pad is None else np.asarray(pad, dtype=int)
        return [(int(pad[2 * i]), int(pad[2 * i + 1])) for i in range(n)]
    if pad_type in ("same", "same_lower"):
        pads = []
        for d in range(n):
            effective = (kernel_size[d] - 1) * dilations[d] + 1
            out = -(-size[d] // strides[d])
            total = max((out - 1) * strides[d] + effective - size[d], 0)
            small = total // 2
            pads.append((small, total - small) if pad_type == "same" else (total - small, small))
        return pads
    raise Unsupported("pad_type", f"{pad_type!r} is not one of valid, same, same_lower, custom")


@kernel("conv")
def conv(x, weight, pad_type="valid", strides=None, dilations=None, pad=None, groups=1, bias=None):
    """Padding by MIL's rules, then torch's convolution in fp32 (even padding and the bias inside
    it: one pass less over a large input, and oneDNN's faster path)."""
    import torch.nn.functional as F  # lazy: as torch_float32

    n_spatial = x.ndim - 2
    if n_spatial not in (1, 2, 3):
        raise Unsupported("x", f"rank {x.ndim}: convolutions take 1 to 3 spatial dimensions")
    kernel_size = weight.shape[2:]
    strides = [1] * n_spatial if strides is None else [int(s) for s in strides]
    dilations = [1] * n_spatial if dilations is None else [int(d) for d in dilations]
    pads = _spatial_padding(pad_type, pad, x.shape[2:], kernel_size, strides, dilations)
    groups = int(groups)
    c_in, c_out = x.shape[1], weight.shape[0]
    if c_in % groups or c_out % groups or weight.shape[1] != c_in // groups:
        raise Unsupported("groups", f"{groups} groups do not fit {c_in} input and {c_out} output channels "
                                    f"with weight shape {list(weight.shape)}")
    padded, padding = torch_float32(x), [begin for begin, _ in pads]
    if any(begin != end for begin, end in pads):  # uneven: torch's convolutions pad both sides alike
        padded, padding = F.pad(padded, [p for pair in reversed(pads) for p in pair]), 0
    convolve = (F.conv1d, F.conv2d, F.conv3d)[n_spatial - 1]
    bias = None if bias is None else torch_float32(np.reshape(bias, (c_out,)))
    return convolve(padded, torch_float32(weight), bias, stride=strides, padding=padding, dilation=dilations,
                    groups=groups).numpy()


def _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, fill, reduce):
    if ceil_mode:
        raise Unsupported("ceil_mode", "True is not implemented")
    n_spatial = len(kernel_sizes)
    kernel_sizes = [int(k) for k in kernel_sizes]
    strides = [1] * n_spatial if strides is None else [int(s) for s in strides]
    pads = _spatial_padding(pad_type, pad, x.shape[-n_spatial:], kernel_sizes, strides, [1] * n_spatial)
    lead = [(0, 0)] * (x.ndim - n_spatial)
    padded = np.pad(x, lead + pads, constant_values=fill)
    valid = np.pad(np.ones(x.shape[-n_spatial:], dtype=bool), pads, constant_values=False)
    axes = tuple(range(x.ndim - n_spatial, x.ndim))
    step = (Ellipsis,) + tuple(slice(None, None, s) for s in strides) + (slice(None),) * n_spatial
    windows = sliding_window_view(padded, kernel_sizes, axis=axes)[step]
    counts = sliding_window_view(valid, kernel_sizes)[step[1:]]
    window_axes = tuple(range(-n_spatial, 0))
    return reduce(windows, window_axes, counts.sum(axis=window_axes))


@kernel("max_pool")
def max_pool(x, kernel_sizes, strides=None, pad_type="valid", pad=None, ceil_mode=False):
    return _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, -np.inf,
                 lambda w, axes, n: np.max(w, axis=axes))


@kernel("avg_pool")
def avg_pool(x, kernel_sizes, strides=None, pad_type="valid", pad=None,
             exclude_padding_from_average=False, ceil_mode=False):
    size = float(np.prod([int(k) for k in kernel_sizes]))
    return _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, 0.0,
                 lambda w, axes, n: np.sum(w, axis=axes) / (n if exclude_padding_from_average else size))


@kernel("l2_pool")
def l2_pool(x, kernel_sizes, strides=None, pad_type="valid", pad=None, ceil_mode=False):
    return _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, 0.0,
                 lambda w, axes, n: np.sqrt(np.sum(w * w, axis=axes)))


@kernel("conv_quantized")
def conv_quantized(x, weight, quantization_type, quant_scale, quant_bias, nbits=8, bias=None, strides=None,
                   pad_type="valid", pad=None, dilations=None, groups=1):
    if quantization_type != "linear":
        raise Unsupported("quantization_type", f"{quantization_type!r}: the op specification defines only how "
                                               "'linear' weights dequantize (W_q * scale + bias)")
    dense = weight.astype(np.float32) * quant_scale + quant_bias
    return conv(x, dense, pad_type, strides, dilations, pad, groups, bias)


@kernel("conv_transpose")
def conv_transpose(x, weight, bias=None, pad=None, output_shape=None, pad_type="valid", strides=None,
                   dilations=None, groups=1):
    """Each input position spreads ``weight`` over the output, ``strides`` apart; the full result
    is then cropped by the padding (or to ``output_shape``)."""
    n_spatial = x.ndim - 2
    kernel_size = weight.shape[2:]
    strides = [1] * n_spatial if strides is None else [int(s) for s in strides]
    dilations = [1] * n_spatial if dilations is None else [int(d) for d in dilations]
    groups = int(groups)
    batch, c_in = x.shape[:2]
    if c_in % groups or weight.shape[0] != c_in:
        raise Unsupported("groups", f"{groups} groups do not fit {c_in} input channels with weight shape "
                                    f"{list(weight.shape)}")
    c_out_group = weight.shape[1]
    full = [(x.shape[2 + d] - 1) * strides[d] + (kernel_size[d] - 1) * dilations[d] + 1 for d in range(n_spatial)]
    y = np.zeros((batch, groups, c_out_group, *full), dtype=np.result_type(x, weight))
    xg = x.reshape(batch, groups, c_in // groups, -1)
    wg = weight.reshape(groups, c_in // groups, c_out_group, *kernel_size)
    for tap in itertools.product(*(range(k) for k in kernel_size)):
        contribution = matrix_product(np.swapaxes(wg[(slice(None),) * 3 + tap], 1, 2)[None], xg)
        region = tuple(slice(t * d, t * d + (n - 1) * s + 1, s)
                       for t, d, n, s in zip(tap, dilations, x.shape[2:], strides, strict=True))
        y[(slice(None),) * 3 + region] += contribution.reshape(batch, groups, c_out_group, *x.shape[2:])
    y = y.reshape(batch, groups * c_out_group, *full)
    if output_shape is not None:
        out = [int(s) for s in np.ravel(output_shape)][-n_spatial:]
    elif pad_type == "same":
        out = [x.shape[2 + d] * strides[d] for d in range(n_spatial)]
    elif pad_type in ("valid", "custom"):
        pads = np.zeros(2 * n_spatial, int) if pad is None or pad_type == "valid" else np.asarray(pad, int)
        out = [full[d] - pads[2 * d] - pads[2 * d + 1] for d in range(n_spatial)]
    else:
        raise Unsupported("pad_type", f"{pad_type!r} is not one of valid, same, custom")
    if pad_type == "custom" and pad is not None:
        begins = [int(p) for p in np.asarray(pad, int)[::2]]
    else:  # what is cut goes mostly from the end, as a convolution's "same" padding puts more there
        begins = [max(full[d] - out[d], 0) // 2 for d in range(n_spatial)]
    index = (slice(None), slice(None)) + tuple(slice(b, b + o) for b, o in zip(begins, out, strict=True))
    cropped = y[index]
    short = [(0, o - c) for o, c in zip(out, cropped.shape[2:], strict=True)]  # an output_shape past the full result
    y = np.pad(cropped, [(0, 0), (0, 0)] + short) if any(s[1] for s in short) else cropped
    if bias is not None:
        y = y + np.reshape(bias, (1, -1) + (1,) * n_spatial)
    return y


def _broadcast_labels(equation: str, values):
    """Operands of ``equation`` with each label's size-1 dimensions broadcast to the label's size."""
    inputs = equation.replace(" ", "").split("->")[0].split(",")
    sizes = {}
    for labels, value in zip(inputs, values, strict=True):
        for label, size in zip(labels, value.shape, strict=True):
            sizes[label] = max(sizes.get(label, 1), size)
    return [np.broadcast_to(value, [sizes[label] for label in labels])
            for labels, value in zip(inputs, values, strict=True)]


@kernel("einsum")
def einsum(values, equation):
    values = list(values)
    if "..." in equation:
        return np.einsum(equation, *values)
    return np.einsum(equation, *_broadcast_labels(equation, values))


@kernel("scaled_dot_product_attention")
def scaled_dot_product_attention(query, key, value, attn_mask=None):
    scores = matrix_product(query, np.swapaxes(key, -1, -2)) / np.sqrt(query.shape[-1])
    if attn_mask is not None:
        scores = np.where(attn_mask, scores, -np.inf) if attn_mask.dtype == np.bool_ else scores + attn_mask
    scores = scores - np.max(scores, axis=-1, keepdims=True)
    weights = np.exp(scores)
    return matrix_product(weights / np.sum(weights, axis=-1, keepdims=True), value)
