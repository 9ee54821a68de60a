"""What the op tests share: float64 oracles' tolerances and hypothesis strategies.

fp32 programs must agree with a float64 oracle to fp32 rounding; fp16 programs with the oracle
computed from the same fp16 inputs and rounded to fp16, within one fp16 ulp (the executor
accumulates in fp32, whose summation order may flip a last-bit rounding).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

EXAMPLES = settings(max_examples=25, deadline=None)
PER_OP = settings(max_examples=8, deadline=None)  # for tests parametrized over a table of ops
FLOATS = st.sampled_from([np.float32, np.float16])


def tolerance(dtype):
    """(rtol, atol) for comparing an output of ``dtype`` with its float64 oracle."""
    return (2e-5, 1e-6) if np.dtype(dtype) == np.float32 else (2**-10, 2**-14)


def close(actual, expected, dtype=None, scale=1.0):
    dtype = dtype or actual.dtype
    rtol, atol = tolerance(dtype)
    expected = np.asarray(expected, np.float64)
    assert actual.dtype == np.dtype(dtype)
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol, atol=atol * scale)


def arrays(shape, dtype, low=-3.0, high=3.0):
    return hnp.arrays(dtype, shape, elements=st.floats(low, high, width=16))


# the new op families' tests run each case at both precisions, so their pass rate splits by id
BOTH_PRECISIONS = pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])


def expected_at(dtype, values):
    """A float64 oracle seen through the program's precision: fp16 programs round their result."""
    values = np.asarray(values, np.float64)
    return values.astype(dtype).astype(np.float64) if np.dtype(dtype) == np.float16 else values
