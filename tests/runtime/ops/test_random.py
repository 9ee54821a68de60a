"""Random ops on the executor: their draws follow the named distribution, and a seed repeats them.
The values themselves are not Core ML's: only the distribution is specified."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil import Function, Program, types
from scipy import stats

from runtimes.mil import MILModel
from tests.runtime.ops.oracle import BOTH_PRECISIONS

SHAPE = np.array([4000], np.int32)
LEVEL = 1e-4  # the chance that a correct sampler fails any one distribution test here


@BOTH_PRECISIONS
def test_uniform_and_normal_draws_fit_their_distributions(run_mil, dtype):
    x = np.zeros((1,), dtype)  # an input the draws do not read: a program needs one
    uniform, normal = run_mil(lambda x: [mb.random_uniform(shape=SHAPE, low=dtype(-2), high=dtype(3), seed=1),
                                         mb.random_normal(shape=SHAPE, mean=dtype(1.5), stddev=dtype(0.5), seed=2)],
                              {"x": x})
    assert uniform.dtype == dtype and normal.dtype == dtype
    assert uniform.min() >= -2 and uniform.max() <= 3
    assert stats.kstest(uniform.astype(np.float64), stats.uniform(loc=-2, scale=5).cdf).pvalue > LEVEL
    assert stats.kstest(normal.astype(np.float64), stats.norm(loc=1.5, scale=0.5).cdf).pvalue > LEVEL


@pytest.mark.parametrize("prob", [0.1, 0.5, 0.9])
def test_bernoulli_draws_ones_at_the_given_rate(run_mil, prob):
    x = np.zeros((1,), np.float32)
    (out,) = run_mil(lambda x: mb.random_bernoulli(shape=SHAPE, prob=np.float32(prob), seed=3), {"x": x})
    assert set(np.unique(out)) <= {0.0, 1.0}
    assert stats.binomtest(int(out.sum()), out.size, prob).pvalue > LEVEL


@pytest.mark.parametrize("mode", ["logits", "probs"])
def test_categorical_draws_classes_at_their_probabilities(run_mil, mode):
    probs = np.array([[0.1, 0.2, 0.7], [0.5, 0.5, 0.0]], np.float32)
    x = np.log(np.maximum(probs, 1e-30)).astype(np.float32) if mode == "logits" else probs
    (out,) = run_mil(lambda x: mb.random_categorical(x=x, mode=mode, size=3000, seed=4), {"x": x})
    assert out.shape == (2, 3000)
    for row, p in zip(out.astype(int), probs, strict=True):
        counts = np.bincount(row, minlength=3)
        assert counts[p == 0].sum() == 0
        expected = p[p > 0] * row.size
        assert stats.chisquare(counts[p > 0], expected).pvalue > LEVEL


def test_a_seed_repeats_its_draws_and_no_seed_does_not():
    with Function({"x": mb.placeholder(shape=(1,), dtype=types.fp32)}, ct.target.iOS17) as function:
        seeded = mb.random_normal(shape=SHAPE, seed=7)
        fresh = mb.random_normal(shape=SHAPE)
        function.set_outputs([seeded, fresh])
    program = Program()
    program.add_function("main", function)
    model = MILModel(program)
    first, second = (model.predict({"x": np.zeros(1, np.float32)}) for _ in range(2))
    np.testing.assert_array_equal(first[seeded.name], second[seeded.name])
    assert not np.array_equal(first[fresh.name], second[fresh.name])
