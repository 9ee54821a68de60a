"""Normalizations over axes, channels or neighbourhoods."""

from __future__ import annotations

import numpy as np

from runtimes.mil.ops.base import kernel, norm_axes


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
