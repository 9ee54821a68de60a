"""The kernel registry and the helpers every family of kernels shares."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import numpy as np

from infra.compat import onednn_linear_pointwise

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


def torch_module():
    """torch, imported on first use: only programs with the ops that run on it (or fp16 tensors) need it."""
    import torch  # lazy: as the docstring says; `import runtimes.mil` stays free of torch

    return torch


def torch_tensor(array: np.ndarray):
    """A torch tensor sharing ``array``'s memory (read-only constants too: torch only reads them)."""
    torch = torch_module()
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def torch_float32(array):
    """``array`` as a float32 torch tensor sharing its memory where it can: the heavy kernels
    (matrix products, convolutions) run on torch's CPU kernels, in fp32."""
    array = np.asarray(array, dtype=np.float32)
    if any(stride < 0 or stride % 4 for stride in array.strides):  # torch takes other strided views as they are
        array = array.copy(order="C")  # (a fresh copy: even a length-1 axis keeps its negative stride in a view)
    return torch_tensor(array)


# elements: from this size a float32 elementwise op runs on torch (vectorized, on every thread);
# below it numpy's smaller cost per call wins
TORCH_ELEMENTWISE = 1 << 16
_FLOAT32 = np.dtype(np.float32)


def on_torch(*operands) -> bool:
    """Whether an elementwise op on these operands runs on torch: all float32 (arrays or
    scalars, where numpy and torch promote alike) and one of them large."""
    large = False
    for v in operands:  # (a loop, not generators: this runs before every elementwise op)
        if not isinstance(v, (np.ndarray, np.float32)) or v.dtype != _FLOAT32:
            return False
        large = large or v.size >= TORCH_ELEMENTWISE
    return large


def matrix_product(a, b):
    """``a @ b``: floats on torch's kernels in fp32, anything else in numpy. One BLAS for the whole
    executor: numpy's BLAS threads and torch's, used in turn on a few cores, wait on each other
    (a full-size decoder step took several times as long between calls of Torch's own model)."""
    if np.asarray(a).dtype.kind == "f" and np.asarray(b).dtype.kind == "f" and np.ndim(a) and np.ndim(b):
        return torch_float32(a).matmul(torch_float32(b)).numpy()
    return np.matmul(a, b)


@functools.cache
def _onednn_inner_product():
    """oneDNN's fp32 inner product (the kernel torch's compiler fuses linears into), or None where
    this torch has no oneDNN. Plain ``F.linear`` runs on MKL, which takes about twice as long on
    AMD processors (``tests/runtime/test_executor_benchmark.py`` measures the executor against
    Torch); both accumulate in fp32."""
    return onednn_linear_pointwise(torch_module())


def inner_product(x, weight, bias=None):
    """``x @ weight.T + bias`` for float32 torch tensors, on oneDNN where torch has it."""
    onednn = _onednn_inner_product()
    torch = torch_module()
    if onednn is None or x.numel() == 0 or weight.ndim != 2:
        return torch.nn.functional.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    y = onednn(rows, weight.contiguous(), bias, "none", [], "")
    return y.reshape(*x.shape[:-1], weight.shape[0])
