"""Normalizations on the executor, against independent formulas (numpy float64 or torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil.mil import Builder as mb
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.runtime.ops.oracle import BOTH_PRECISIONS, EXAMPLES, FLOATS, arrays, close

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@EXAMPLES
@given(FLOATS, hnp.array_shapes(min_dims=2, max_dims=4, min_side=2, max_side=6), st.integers(1, 2), st.data())
def test_layer_norm_over_trailing_axes(run_mil, dtype, shape, n_axes, data):
    n_axes = min(n_axes, len(shape))
    x = data.draw(arrays(shape, dtype))
    normalized = shape[-n_axes:]
    gamma, beta = data.draw(arrays(normalized, dtype)), data.draw(arrays(normalized, dtype))
    axes = list(range(len(shape) - n_axes, len(shape)))
    (out,) = run_mil(lambda x: mb.layer_norm(x=x, axes=axes, gamma=gamma, beta=beta,
                                                    epsilon=np.dtype(dtype).type(1e-5)), {"x": x})
    x64 = x.astype(np.float64)  # numpy: the kernel runs on torch
    mean = x64.mean(axis=tuple(axes), keepdims=True)
    variance = np.square(x64 - mean).mean(axis=tuple(axes), keepdims=True)
    ref = (x64 - mean) / np.sqrt(variance + float(np.dtype(dtype).type(1e-5))) * gamma.astype(np.float64) \
        + beta.astype(np.float64)
    # fp32 rounds the mean relative to |x| but the output is scaled by 1/std: a group of nearly
    # equal values (hypothesis found 17 equal and one outlier: 4.4e-5 relative) loses that ratio
    # of precision in any fp32 implementation, so the bound grows with max|x| / std.
    std = np.sqrt(np.var(x64, axis=tuple(axes)) + 1e-5)
    conditioning = max(1.0, float(np.max(np.abs(x64)) / np.min(std)))
    close(out, ref, scale=8 * conditioning * max(1.0, float(np.max(np.abs(gamma)))))


@EXAMPLES
@given(FLOATS, hnp.array_shapes(min_dims=3, max_dims=5, max_side=4), st.data())
def test_l2_norm_over_the_last_three_dims(run_mil, dtype, shape, data):
    x = data.draw(arrays(shape, dtype, -2.0, 2.0))
    eps = np.dtype(dtype).type(1e-6)
    (out,) = run_mil(lambda x: mb.l2_norm(x=x, epsilon=eps), {"x": x})
    t = torch.from_numpy(x.astype(np.float64))
    norm = torch.sqrt((t * t).flatten(start_dim=-3).sum(-1) + float(eps))
    close(out, (t / norm[..., None, None, None]).numpy())


def test_batch_norm(run_mil):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5)).astype(np.float32)
    mean, var, gamma, beta = (rng.normal(size=3).astype(np.float32) for _ in range(4))
    var = np.abs(var) + 0.1
    (out,) = run_mil(lambda x: mb.batch_norm(x=x, mean=mean, variance=var, gamma=gamma, beta=beta, epsilon=1e-3),
                     {"x": x})
    ref = F.batch_norm(torch.from_numpy(x), torch.from_numpy(mean), torch.from_numpy(var), torch.from_numpy(gamma),
                       torch.from_numpy(beta), eps=1e-3)
    close(out, ref.numpy())


@BOTH_PRECISIONS
@EXAMPLES
@given(st.integers(1, 2), st.integers(1, 4), hnp.array_shapes(min_dims=1, max_dims=2, min_side=2, max_side=6),
       st.data())
def test_instance_norm_matches_torch(run_mil, dtype, n, c, spatial, data):
    x = data.draw(arrays((n, c, *spatial), dtype))
    gamma, beta = data.draw(arrays((c,), dtype)), data.draw(arrays((c,), dtype))
    eps = np.dtype(dtype).type(1e-3)
    (out,) = run_mil(lambda x: mb.instance_norm(x=x, gamma=gamma, beta=beta, epsilon=eps), {"x": x})
    ref = F.instance_norm(torch.from_numpy(x.astype(np.float64)), weight=torch.from_numpy(gamma.astype(np.float64)),
                          bias=torch.from_numpy(beta.astype(np.float64)), eps=float(eps))
    # a flat group has a tiny variance: the bound grows with max|x| / std, as for layer_norm
    x64 = x.astype(np.float64)
    std = np.sqrt(np.var(x64, axis=tuple(range(2, x.ndim))) + float(eps))
    conditioning = max(1.0, float(np.max(np.abs(x64)) / np.min(std)))
    close(out, ref.numpy(), scale=8 * conditioning * max(1.0, float(np.max(np.abs(gamma)))))


@BOTH_PRECISIONS
@EXAMPLES
@given(st.integers(1, 6), st.integers(1, 7), st.data())
def test_local_response_norm_matches_torch(run_mil, dtype, channels, size, data):
    x = data.draw(arrays((2, channels, 3), dtype))
    alpha, beta, k = np.dtype(dtype).type(0.5), np.dtype(dtype).type(0.75), np.dtype(dtype).type(1.5)
    (out,) = run_mil(lambda x: mb.local_response_norm(x=x, size=size, alpha=alpha, beta=beta, k=k), {"x": x})
    ref = torch.nn.LocalResponseNorm(size, float(alpha), float(beta), float(k))(torch.from_numpy(x.astype(np.float64)))
    close(out, ref.numpy())
