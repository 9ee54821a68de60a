"""Random ops: draws from the named distribution with numpy's generator.

A non-negative ``seed`` gives the same values on every call, as the specification asks ("a
reproducible sequence across multiple invokes"); the default seed (-1) draws fresh values each
call. The values differ from Core ML's own generator: only the distribution is the same.
"""

from __future__ import annotations

import numpy as np

from runtimes.mil.ops.base import Unsupported, kernel


def _generator(seed) -> np.random.Generator:
    seed = int(seed)
    return np.random.default_rng(seed if seed >= 0 else None)


def _shape(shape):
    return [int(s) for s in np.ravel(shape)]


@kernel("random_uniform")
def random_uniform(shape, low=0.0, high=1.0, seed=-1):
    return _generator(seed).uniform(float(low), float(high), _shape(shape))


@kernel("random_normal")
def random_normal(shape, mean=0.0, stddev=1.0, seed=-1):
    return _generator(seed).normal(float(mean), float(stddev), _shape(shape))


@kernel("random_bernoulli")
def random_bernoulli(shape, prob=0.5, seed=-1):
    return (_generator(seed).random(_shape(shape)) < float(prob)).astype(np.float32)


@kernel("random_categorical")
def random_categorical(x, mode="logits", size=1, seed=-1):
    """``size`` class indices per distribution (the last axis), drawn with replacement."""
    if mode == "logits":
        shifted = np.exp(x - np.max(x, axis=-1, keepdims=True))
        probs = shifted / np.sum(shifted, axis=-1, keepdims=True)
    elif mode == "probs":
        probs = x / np.sum(x, axis=-1, keepdims=True)
    else:
        raise Unsupported("mode", f"{mode!r} is not one of logits, probs")
    rng = _generator(seed)
    flat = probs.reshape(-1, probs.shape[-1]).astype(np.float64)
    draws = np.stack([rng.choice(flat.shape[1], size=int(size), p=p / p.sum()) for p in flat])
    return draws.reshape(probs.shape[:-1] + (int(size),))
