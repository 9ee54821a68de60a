"""The kernel registry and the helpers every family of kernels shares."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

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


def norm_axis(axis, rank: int) -> int:
    axis = int(axis)
    return axis + rank if axis < 0 else axis


def norm_axes(axes, rank: int) -> tuple[int, ...] | None:
    return None if axes is None else tuple(sorted(norm_axis(a, rank) for a in np.ravel(axes)))


def torch_float32(array):
    """``array`` as a float32 torch tensor sharing its memory where it can: the heavy kernels
    (matrix products, convolutions) run on torch's CPU kernels, in fp32."""
    import torch  # lazy: only programs with such ops need it

    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():  # read-only constants: torch only reads them here
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)
