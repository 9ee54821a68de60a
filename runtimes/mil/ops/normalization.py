"""Normalizations over axes, channels or neighbourhoods."""

from __future__ import annotations

import numpy as np

from runtimes.mil.ops.base import kernel, norm_axes, torch_float32


def _scale_shift(y, gamma, beta, shape):
    """A normalization's optional affine part, with gamma and beta reshaped to ``shape``."""
    if gamma is not None:
        y = y * np.reshape(gamma, shape)
    if beta is not None:
        y = y + np.reshape(beta, shape)
    return y


@kernel("layer_norm")
def layer_norm(x, axes=None, gamma=None, beta=None, epsilon=1e-5):
    axes = tuple(range(x.ndim)) if axes is None else norm_axes(axes, x.ndim)
    trailing = axes == tuple(range(x.ndim - len(axes), x.ndim))
    if trailing and np.asarray(x).dtype.kind == "f" and len(axes):  # a transformer's: torch's fused kernel
        import torch.nn.functional as F  # lazy: as torch_float32

        shape = x.shape[x.ndim - len(axes):]

        def full(v):
            if v is None:
                return None
            v = np.asarray(v)  # a transformer's gamma and beta have the shape already: no copy
            return torch_float32(v if v.shape == shape else np.ascontiguousarray(np.broadcast_to(v, shape)))

        return F.layer_norm(torch_float32(x), shape, full(gamma), full(beta), float(epsilon)).numpy()
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


@kernel("instance_norm")
def instance_norm(x, gamma=None, beta=None, epsilon=1e-5):
    """Each (sample, channel) over its spatial dims."""
    axes = tuple(range(2, x.ndim))
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean(np.square(x - mean), axis=axes, keepdims=True)
    return _scale_shift((x - mean) / np.sqrt(var + epsilon), gamma, beta, (1, -1) + (1,) * (x.ndim - 2))


@kernel("local_response_norm")
def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Over a window of ``size`` neighbouring channels around each one (the larger half before it
    when ``size`` is even, as PyTorch's LocalResponseNorm), zero beyond the edges."""
    size = int(size)
    before = size // 2
    squares = np.pad(np.square(x), [(0, 0), (before, size - 1 - before)] + [(0, 0)] * (x.ndim - 2))
    window_sum = sum(squares[:, i:i + x.shape[1]] for i in range(size))
    return x / np.power(k + alpha / size * window_sum, beta)
