"""Kernels for MIL operations, written from the MIL operation specification in numpy.

Each kernel takes the op's inputs by their MIL parameter names and returns its outputs; the
executor casts every output to the type the program declares. A kernel's signature is the list
of parameters it implements: an op that carries any other parameter is refused at load time, and
a parameter value a kernel does not implement raises ``Unsupported`` naming it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import special

KERNELS: dict[str, Callable] = {}


class Unsupported(Exception):
    """A parameter value this executor does not implement; the executor adds the op's identity."""

    def __init__(self, param: str, detail: str):
        super().__init__(f"parameter {param!r}: {detail}")
        self.param = param


def kernel(*names: str):
    def register(fn):
        for name in names:
            KERNELS[name] = fn
        return fn

    return register


def _axis(axis, rank: int) -> int:
    axis = int(axis)
    return axis + rank if axis < 0 else axis


def _axes(axes, rank: int) -> tuple[int, ...] | None:
    return None if axes is None else tuple(sorted(_axis(a, rank) for a in np.ravel(axes)))


# ---- elementwise ----------------------------------------------------------------------------

_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.true_divide,
    "maximum": np.maximum, "minimum": np.minimum, "mod": np.mod, "pow": np.power,
    "equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
    "greater": np.greater, "greater_equal": np.greater_equal,
    "logical_and": np.logical_and, "logical_or": np.logical_or, "logical_xor": np.logical_xor,
}
for _name, _fn in _BINARY.items():
    kernel(_name)(lambda x, y, _fn=_fn: _fn(x, y))


@kernel("floor_div")
def floor_div(x, y):
    if np.issubdtype(np.result_type(x, y), np.integer):
        return np.floor_divide(x, y)
    return np.floor(np.true_divide(x, y))


_UNARY = {
    "abs": np.abs, "acos": np.arccos, "asin": np.arcsin, "atan": np.arctan, "atanh": np.arctanh,
    "ceil": np.ceil, "cos": np.cos, "cosh": np.cosh, "erf": special.erf, "exp": np.exp,
    "exp2": np.exp2, "floor": np.floor, "logical_not": np.logical_not, "round": np.round,
    "sign": np.sign, "sin": np.sin, "sinh": np.sinh, "sqrt": np.sqrt, "square": np.square,
    "tan": np.tan, "tanh": np.tanh, "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6), "sigmoid": special.expit, "silu": lambda x: x * special.expit(x),
    "softsign": lambda x: x / (1 + np.abs(x)), "softplus": lambda x: np.logaddexp(x, 0),
    "identity": lambda x: x,
}
for _name, _fn in _UNARY.items():
    kernel(_name)(lambda x, _fn=_fn: _fn(x))


@kernel("log")
def log(x, epsilon=1e-45):
    return np.log(x + epsilon)


@kernel("inverse")
def inverse(x, epsilon=1e-4):
    return 1.0 / (x + epsilon)


@kernel("rsqrt")
def rsqrt(x, epsilon=1e-12):
    return 1.0 / np.sqrt(x + epsilon)


@kernel("clip")
def clip(x, alpha, beta):
    return np.minimum(np.maximum(x, alpha), beta)


@kernel("threshold")
def threshold(x, alpha):
    return np.maximum(x, alpha)


@kernel("cast")
def cast(x, dtype):
    return x  # the executor casts to the declared output type


@kernel("clamped_relu")
def clamped_relu(x, alpha, beta):
    return np.minimum(np.where(x >= 0, x, alpha * x), beta)


@kernel("elu")
def elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * (np.exp(x) - 1))


@kernel("leaky_relu")
def leaky_relu(x, alpha=0.01):
    return np.where(x >= 0, x, alpha * x)


@kernel("linear_activation")
def linear_activation(x, alpha, beta=0.0):
    return alpha * x + beta


@kernel("prelu")
def prelu(x, alpha):
    slope = np.reshape(alpha, (1, -1) + (1,) * (x.ndim - 2))
    return np.where(x >= 0, x, slope * x)


@kernel("scaled_tanh")
def scaled_tanh(x, alpha=1.0, beta=1.0):
    return alpha * np.tanh(beta * x)


@kernel("sigmoid_hard")
def sigmoid_hard(x, alpha=0.2, beta=0.5):
    return np.clip(alpha * x + beta, 0, 1)


@kernel("softplus_parametric")
def softplus_parametric(x, alpha, beta):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return np.reshape(alpha, shape) * np.logaddexp(np.reshape(beta, shape) * x, 0)


@kernel("thresholded_relu")
def thresholded_relu(x, alpha=1.0):
    return np.where(x > alpha, x, 0)


@kernel("gelu")
def gelu(x, mode="EXACT"):
    if mode == "EXACT":
        return 0.5 * x * (1 + special.erf(x / np.sqrt(2)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * special.expit(1.702 * x)
    raise Unsupported("mode", f"{mode!r} is not a gelu mode")


@kernel("softmax")
def softmax(x, axis=-1):
    shifted = x - np.max(x, axis=int(axis), keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=int(axis), keepdims=True)


@kernel("select")
def select(cond, a, b):
    return np.where(cond, a, b)


# ---- linear algebra, convolution, pooling -----------------------------------------------------

@kernel("linear")
def linear(x, weight, bias=None):
    y = np.matmul(x, weight.T)
    return y if bias is None else y + bias


@kernel("matmul")
def matmul(x, y, transpose_x=False, transpose_y=False):
    if transpose_x and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if transpose_y and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


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
    n_spatial = x.ndim - 2
    kernel_size = weight.shape[2:]
    strides = [1] * n_spatial if strides is None else [int(s) for s in strides]
    dilations = [1] * n_spatial if dilations is None else [int(d) for d in dilations]
    pads = _spatial_padding(pad_type, pad, x.shape[2:], kernel_size, strides, dilations)
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    groups = int(groups)
    batch, c_in = x.shape[:2]
    c_out = weight.shape[0]
    if c_in % groups or c_out % groups or weight.shape[1] != c_in // groups:
        raise Unsupported("groups", f"{groups} groups do not fit {c_in} input and {c_out} output channels "
                                    f"with weight shape {list(weight.shape)}")
    out_size = [(x.shape[2 + d] - ((kernel_size[d] - 1) * dilations[d] + 1)) // strides[d] + 1
                for d in range(n_spatial)]
    if groups == 1:
        # im2col as a strided view, then one matrix product over (C_in, kernel)
        window = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilations)]
        view = sliding_window_view(x, window, axis=tuple(range(2, x.ndim)))
        index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) \
            + tuple(slice(None, None, d) for d in dilations)
        patches = view[index]  # N, C_in, *out, *kernel
        y = np.tensordot(patches, weight, axes=([1] + list(range(2 + n_spatial, 2 + 2 * n_spatial)),
                                                list(range(1, 2 + n_spatial))))
        y = np.moveaxis(y, -1, 1)
    else:
        # accumulate one kernel tap at a time; depthwise taps are broadcast multiplies
        xg = x.reshape(batch, groups, c_in // groups, *x.shape[2:])
        wg = weight.reshape(groups, c_out // groups, c_in // groups, *kernel_size)
        y = np.zeros((batch, groups, c_out // groups, *out_size), dtype=np.result_type(x, weight))
        for tap in itertools.product(*(range(k) for k in kernel_size)):
            region = tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                           for t, d, o, s in zip(tap, dilations, out_size, strides))
            xs = xg[(slice(None), slice(None), slice(None)) + region]
            w = wg[(slice(None), slice(None), slice(None)) + tap]
            if w.shape[1:] == (1, 1):
                y += w.reshape((1, groups, 1) + (1,) * n_spatial) * xs
            else:
                flat = xs.reshape(batch, groups, c_in // groups, -1)
                y += np.matmul(w[None], flat).reshape(y.shape)
        y = y.reshape(batch, c_out, *out_size)
    if bias is not None:
        y = y + np.reshape(bias, (1, -1) + (1,) * n_spatial)
    return y


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


# ---- normalization ---------------------------------------------------------------------------

def _scale_shift(y, gamma, beta, shape):
    """A normalization's optional affine part, with gamma and beta reshaped to ``shape``."""
    if gamma is not None:
        y = y * np.reshape(gamma, shape)
    if beta is not None:
        y = y + np.reshape(beta, shape)
    return y


@kernel("layer_norm")
def layer_norm(x, axes=None, gamma=None, beta=None, epsilon=1e-5):
    axes = tuple(range(x.ndim)) if axes is None else _axes(axes, x.ndim)
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean(np.square(x - mean), axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + epsilon)
    return _scale_shift(y, gamma, beta, [x.shape[a] if a in axes else 1 for a in range(x.ndim)])


@kernel("batch_norm")
def batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - np.reshape(mean, shape)) / np.sqrt(np.reshape(variance, shape) + epsilon)
    return _scale_shift(y, gamma, beta, shape)


@kernel("l2_norm")
def l2_norm(x, epsilon=1e-6):
    """Over the last three dims; leading dims are batch."""
    return x / np.sqrt(np.sum(np.square(x), axis=(-3, -2, -1), keepdims=True) + epsilon)


# ---- reductions ------------------------------------------------------------------------------

_REDUCTIONS = {
    "reduce_sum": np.sum, "reduce_mean": np.mean, "reduce_max": np.max, "reduce_min": np.min,
    "reduce_prod": np.prod,
    "reduce_l1_norm": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "reduce_l2_norm": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)),
    "reduce_sum_square": lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims),
    "reduce_log_sum": lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)),
    "reduce_log_sum_exp": lambda x, axis, keepdims: special.logsumexp(x, axis=axis, keepdims=keepdims),
}
for _name, _fn in _REDUCTIONS.items():
    kernel(_name)(lambda x, axes=None, keep_dims=False, _fn=_fn:
                  _fn(x, axis=_axes(axes, x.ndim), keepdims=bool(keep_dims)))


def _arg_reduce(fn, x, axis, keep_dims):
    axis = _axis(axis, x.ndim)
    y = fn(x, axis=axis)
    return np.expand_dims(y, axis) if keep_dims else y


@kernel("reduce_argmax")
def reduce_argmax(x, axis=-1, keep_dims=False, output_dtype="int32"):
    return _arg_reduce(np.argmax, x, axis, keep_dims)


@kernel("reduce_argmin")
def reduce_argmin(x, axis=-1, keep_dims=False, output_dtype="int32"):
    return _arg_reduce(np.argmin, x, axis, keep_dims)


# ---- shape and data movement -----------------------------------------------------------------

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
    return np.expand_dims(x, tuple(sorted(_axis(a, rank) for a in np.ravel(axes))))


@kernel("squeeze")
def squeeze(x, axes=None):
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=_axes(axes, x.ndim))


@kernel("concat")
def concat(values, axis, interleave=False):
    # scalars join as one-element vectors: coremltools builds shape vectors this way (a flexible
    # input's length gathered from its shape, concatenated with the fixed dimensions)
    values = [np.reshape(v, (1,)) if np.ndim(v) == 0 else v for v in values]
    axis = _axis(axis, values[0].ndim)
    if not interleave:
        return np.concatenate(values, axis=axis)
    stacked = np.stack(values, axis=axis + 1)
    shape = list(values[0].shape)
    shape[axis] *= len(values)
    return stacked.reshape(shape)


@kernel("split")
def split(x, axis, num_splits=None, split_sizes=None):
    axis = _axis(axis, x.ndim)
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
    return np.stack(values, axis=_axis(axis, values[0].ndim + 1))


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
    axis, batch_dims = _axis(axis, x.ndim), int(batch_dims)
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
    axis = _axis(axis, x.ndim)
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
    axis = _axis(axis, x.ndim)
    y = np.flip(x, axis) if reverse else x
    y = np.cumsum(y, axis=axis)
    if exclusive:
        y = np.concatenate([np.zeros_like(np.take(y, [0], axis=axis)), np.take(y, range(y.shape[axis] - 1), axis=axis)],
                           axis=axis)
    return np.flip(y, axis) if reverse else y


@kernel("dequantize")
def dequantize(input, scale, zero_point=None, axis=None):
    return _affine(input, scale, zero_point, axis)


# ---- recurrent ---------------------------------------------------------------------------------

_RECURRENT_ACTIVATIONS = {
    "sigmoid": special.expit, "tanh": np.tanh, "relu": lambda v: np.maximum(v, 0), "linear": lambda v: v,
}


def _activation(param, name):
    if name not in _RECURRENT_ACTIVATIONS:
        raise Unsupported(param, f"{name!r} is not implemented (implemented: {', '.join(_RECURRENT_ACTIVATIONS)})")
    return _RECURRENT_ACTIVATIONS[name]


def _lstm_direction(x, h, c, w_ih, w_hh, bias, peephole, reverse, act_rec, act_cell, act_out):
    hidden = h.shape[-1]
    gates_x = np.matmul(x, w_ih.T) + (0 if bias is None else bias)  # (s, b, 4H): i, f, o, z
    p_i, p_f, p_o = (0, 0, 0) if peephole is None else np.split(peephole, 3)
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    outputs = np.empty((x.shape[0],) + h.shape, dtype=gates_x.dtype)
    for t in steps:
        g = gates_x[t] + h @ w_hh.T
        i = act_rec(g[:, :hidden] + p_i * c)
        f = act_rec(g[:, hidden:2 * hidden] + p_f * c)
        z = act_cell(g[:, 3 * hidden:])
        c = f * c + i * z
        o = act_rec(g[:, 2 * hidden:3 * hidden] + p_o * c)
        h = o * act_out(c)
        outputs[t] = h
    return outputs, h, c


@kernel("lstm")
def lstm(x, initial_h, initial_c, weight_ih, weight_hh, bias=None, peephole=None, weight_ih_back=None,
         weight_hh_back=None, bias_back=None, peephole_back=None, direction="forward", output_sequence=False,
         recurrent_activation="sigmoid", cell_activation="tanh", activation="tanh", clip=None):
    if clip is not None:
        raise Unsupported("clip", "cell clipping is not implemented")
    acts = (_activation("recurrent_activation", recurrent_activation),
            _activation("cell_activation", cell_activation), _activation("activation", activation))
    if direction in ("forward", "reverse"):
        seq, h, c = _lstm_direction(x, initial_h, initial_c, weight_ih, weight_hh, bias, peephole,
                                    direction == "reverse", *acts)
    elif direction == "bidirectional":
        hidden = weight_hh.shape[1]
        fwd = _lstm_direction(x, initial_h[:, :hidden], initial_c[:, :hidden], weight_ih, weight_hh, bias,
                              peephole, False, *acts)
        bwd = _lstm_direction(x, initial_h[:, hidden:], initial_c[:, hidden:], weight_ih_back, weight_hh_back,
                              bias_back, peephole_back, True, *acts)
        seq = np.concatenate([fwd[0], bwd[0]], axis=-1)
        h = np.concatenate([fwd[1], bwd[1]], axis=-1)
        c = np.concatenate([fwd[2], bwd[2]], axis=-1)
        if not output_sequence:
            # the final step of each direction: the last position forward, the first backward
            return np.concatenate([fwd[0][-1:], bwd[0][:1]], axis=-1), h, c
    else:
        raise Unsupported("direction", f"{direction!r} is not one of forward, reverse, bidirectional")
    if not output_sequence:
        seq = seq[:1] if direction == "reverse" else seq[-1:]
    return seq, h, c


# ---- weight decompression (constexpr ops, evaluated once at load) -----------------------------

def _affine(data, scale, offset, axis):
    """``scale * (data - offset)`` with per-tensor or per-``axis`` vectors."""
    data = data.astype(np.float32)
    scale = np.asarray(scale, np.float32)
    offset = np.zeros((), np.float32) if offset is None else np.asarray(offset, np.float32)
    if axis is not None and (scale.ndim == 1 or offset.ndim == 1):
        shape = [1] * data.ndim
        shape[_axis(axis, data.ndim)] = -1
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
    for axis, (n, size) in enumerate(zip(values.shape, shape)):
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
    blocks = [n // g for n, g in zip(indices.shape, groups)]
    group_index = np.ix_(*(np.arange(n) // b for n, b in zip(indices.shape, blocks)))
    values = lut[group_index + (indices.astype(np.int64),)]  # (*indices.shape, vector)
    if vector == 1:
        return values[..., 0]
    if vector_axis is None:
        raise Unsupported("vector_axis", "required when the LUT holds vectors")
    axis = _axis(vector_axis, indices.ndim)
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
        axis = _axis(vector_axis, mask.ndim)
        mask = np.repeat(mask, vector, axis=axis)
    return mask.astype(np.uint8), dense[mask]


@kernel("constexpr_sparse_blockwise_shift_scale")
def constexpr_sparse_blockwise_shift_scale(data_mask, nonzero_data, scale, offset=None):
    mask = data_mask.astype(bool)
    dense = np.zeros(mask.shape, dtype=np.float32)
    dense[mask] = nonzero_data
    return data_mask, constexpr_blockwise_shift_scale(dense, scale, offset)[mask]
