"""Reductions over axes, arg-reductions and sorting."""

from __future__ import annotations

import numpy as np
from scipy import special

from runtimes.mil.ops.base import kernel, norm_axes, norm_axis

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
                  _fn(x, axis=norm_axes(axes, x.ndim), keepdims=bool(keep_dims)))


def _arg_reduce(fn, x, axis, keep_dims):
    axis = norm_axis(axis, x.ndim)
    y = fn(x, axis=axis)
    return np.expand_dims(y, axis) if keep_dims else y


@kernel("reduce_argmax")
def reduce_argmax(x, axis=-1, keep_dims=False, output_dtype="int32"):
    return _arg_reduce(np.argmax, x, axis, keep_dims)


@kernel("reduce_argmin")
def reduce_argmin(x, axis=-1, keep_dims=False, output_dtype="int32"):
    return _arg_reduce(np.argmin, x, axis, keep_dims)


def _sort_order(x, axis, ascending):
    """Indices that sort ``x`` along ``axis``; equal values keep their order in either direction."""
    if ascending:
        return np.argsort(x, axis=axis, kind="stable")
    if x.dtype == np.bool_ or np.issubdtype(x.dtype, np.unsignedinteger):
        x = x.astype(np.int64)
    return np.argsort(-x, axis=axis, kind="stable")


@kernel("argsort")
def argsort(x, axis=-1, ascending=False):
    return _sort_order(x, norm_axis(axis, x.ndim), bool(ascending))


@kernel("topk")
def topk(x, k=1, axis=-1, ascending=False, sort=True, return_indices=True, output_indices_dtype="int32"):
    """The ``k`` largest (smallest when ``ascending``) along ``axis``, sorted: an unsorted result
    may come in any order, so sorted is one valid answer."""
    axis = norm_axis(axis, x.ndim)
    k = x.shape[axis] if int(k) == -1 else int(k)
    order = np.take(_sort_order(x, axis, bool(ascending)), np.arange(k), axis=axis)
    values = np.take_along_axis(x, order, axis=axis)
    return (values, order) if return_indices else values
