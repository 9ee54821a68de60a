"""Large float32 operands take faster paths (torch's elementwise kernels, a short last axis summed
slice by slice): each must give what the plain numpy path gives, bit for bit where every result
is one IEEE rounding, and within the float64 oracle's tolerance where it is not (softmax's exp).
The op tests' hypothesis shapes are far below the size that switches, so these are the tests of
those paths."""

from __future__ import annotations

import numpy as np
import pytest
from coremltools.converters.mil.mil import Builder as mb

from runtimes.mil.ops.base import TORCH_ELEMENTWISE, on_torch
from tests.runtime.ops.oracle import close

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SHAPE = (2, 8, 96, 48)  # 73,728 values: above the switch
SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-42, -1e-42, 65504.0, 3.4e38, -3.4e38], np.float32)


def _operand(seed: int, shape=SHAPE) -> np.ndarray:
    """Normal values of every magnitude, with signed zeros, infinities, NaN and subnormals among them."""
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal(shape) * np.exp2(rng.integers(-30, 30, shape))).astype(np.float32)
    flat = values.reshape(-1)
    if flat.size > 1000:
        flat[rng.choice(flat.size, 200, replace=False)] = np.resize(SPECIAL, 200)
    return values


def _same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes(), f"{np.sum(actual.view(np.int32) != expected.view(np.int32))} differ"


def test_the_operands_here_take_the_fast_path():
    assert np.prod(SHAPE) >= TORCH_ELEMENTWISE and on_torch(_operand(0), _operand(1)[:, :1])
    assert not on_torch(_operand(0).astype(np.float64)) and not on_torch(_operand(0)[:1, :1])


@pytest.mark.parametrize("op, plain", [("add", np.add), ("sub", np.subtract), ("mul", np.multiply),
                                       ("real_div", np.true_divide)])
@pytest.mark.parametrize("y_shape", [SHAPE, (1, 8, 1, 48), (1,)], ids=["same", "broadcast", "scalar"])
def test_exact_arithmetic_gives_numpy_bits(run_mil, op, plain, y_shape):
    x, y = _operand(1), _operand(2, y_shape)
    (out,) = run_mil(lambda x, y: getattr(mb, op)(x=x, y=y), {"x": x, "y": y})
    with np.errstate(all="ignore"):
        _same_bits(out, plain(x, y))


def test_relu_gives_numpy_bits_signed_zeros_included(run_mil):
    x = _operand(3)
    (out,) = run_mil(lambda x: mb.relu(x=x), {"x": x})
    _same_bits(out, np.maximum(x, np.float32(0)))  # numpy's max(-0, 0) is +0; torch's relu keeps -0


def test_select_gives_numpy_bits(run_mil):
    x, y = _operand(4), _operand(5, (1, 8, 1, 48))
    cond = _operand(6) > 0
    (out,) = run_mil(lambda c, x, y: mb.select(cond=c, a=x, b=y), {"c": cond, "x": x, "y": y})
    _same_bits(out, np.where(cond, x, y))


def test_constant_pad_gives_numpy_bits(run_mil):
    x = _operand(7)
    (out,) = run_mil(lambda x: mb.pad(x=x, pad=np.array([0, 0, 2, 1, 0, 3], np.int32), mode="constant",
                                      constant_val=-1.5), {"x": x})
    _same_bits(out, np.pad(x, [(0, 0), (0, 0), (2, 1), (0, 3)], constant_values=-1.5))


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_softmax_on_large_scores_meets_the_oracle(run_mil, dtype):
    x = (np.random.default_rng(8).standard_normal(SHAPE) * 4).astype(dtype)
    (out,) = run_mil(lambda x: mb.softmax(x=x, axis=-1), {"x": x})
    wide = x.astype(np.float64)
    e = np.exp(wide - wide.max(axis=-1, keepdims=True))
    expected = e / e.sum(axis=-1, keepdims=True)
    close(out, expected.astype(dtype).astype(np.float64) if dtype == np.float16 else expected)


@pytest.mark.parametrize("length", range(1, 9))
@pytest.mark.parametrize("keep_dims", [False, True])
@pytest.mark.parametrize("op, plain", [("reduce_sum", np.sum), ("reduce_mean", np.mean)])
def test_a_short_last_axis_sums_to_numpy_bits(run_mil, op, plain, length, keep_dims):
    """A spectrogram's (..., 2) real and imaginary parts, and every other row under 8 values
    (8 is numpy's own pairwise path, kept): rows of signed zeros sum to +0, as numpy's do."""
    x = _operand(9, (3, 40, 50, length))
    x[0, 0] = -0.0
    (out,) = run_mil(lambda x: getattr(mb, op)(x=x, axes=[-1], keep_dims=keep_dims), {"x": x})
    with np.errstate(all="ignore"):
        _same_bits(out, plain(x, axis=-1, keepdims=keep_dims))
