"""``LoadedPredictors``: each package loaded once, the least recently used dropped past the
memory budget (a full-size quantization sweep held every variant's encoders and reached 21 GB
before it did)."""

from __future__ import annotations

import gc
import os
import warnings
import weakref

import numpy as np
import pytest

from exporters.components import COMPONENTS
from runtimes.loader import LoadedPredictors
from runtimes.mil import MILModel


class Weighted:
    def __init__(self, name, nbytes):
        self.name, self.nbytes = name, nbytes


def cache_of(sizes: dict[str, int], budget: int):
    loads = []

    def load(package):
        loads.append(package)
        return Weighted(package, sizes[package])

    return LoadedPredictors(budget_bytes=budget, load=load), loads


def test_a_package_is_loaded_once_while_it_fits():
    loaded, loads = cache_of({"a": 10, "b": 10}, budget=20)
    assert loaded("a") is loaded("a")
    loaded("b")
    loaded("a")
    assert loads == ["a", "b"]
    assert loaded.held_bytes == 20


def test_past_the_budget_the_least_recently_used_goes():
    loaded, loads = cache_of({"a": 10, "b": 10, "c": 10}, budget=20)
    loaded("a"), loaded("b"), loaded("a")  # b is now the least recently used
    loaded("c")
    assert "a" in loaded and "c" in loaded and "b" not in loaded
    assert loaded.held_bytes == 20
    loaded("b")  # reloaded, and a (used before c) goes
    assert loads == ["a", "b", "c", "b"]
    assert "a" not in loaded


def test_a_predictor_larger_than_the_budget_is_kept_alone():
    loaded, _ = cache_of({"small": 5, "huge": 100}, budget=20)
    loaded("small")
    huge = loaded("huge")
    assert "huge" in loaded and "small" not in loaded
    assert loaded("huge") is huge


def test_an_evicted_predictor_is_freed():
    loaded, _ = cache_of({"a": 10, "b": 10}, budget=15)
    first = weakref.ref(loaded("a"))
    loaded("b")
    gc.collect()
    assert first() is None, "the cache still references an evicted predictor"


def test_released_predictors_are_freed_and_loaded_again_when_asked_for():
    loaded, loads = cache_of({"a": 10, "b": 10}, budget=100)
    first = weakref.ref(loaded("a"))
    loaded("b")
    loaded.release()
    gc.collect()
    assert first() is None and loaded.held_bytes == 0
    loaded("a")
    assert loads == ["a", "b", "a"]


def test_only_a_package_with_weights_left_fp16_costs_a_full_collection(session_exporters, monkeypatch):
    """A full collection takes 0.5 s in a process holding NeMo: loading a small package (all its
    weights widened at load) must not run one; a large one runs one, to free the weights widening
    replaces."""
    collections = []
    monkeypatch.setattr(gc, "collect", lambda *args: collections.append(args) or 0)
    package = session_exporters["float16"].export(COMPONENTS["joint"]).package
    MILModel(package)
    assert collections == []
    monkeypatch.setattr(MILModel, "widen_at_load_bytes", 0)  # as if the joint were large
    MILModel(package)
    assert len(collections) == 1


def test_the_default_budget_is_a_share_of_the_host_memory():
    budget = LoadedPredictors(load=lambda package: None).budget_bytes
    assert 0 < budget < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_an_executor_widens_at_load_no_more_than_its_allowance(session_exporters, monkeypatch):
    """A small package's fp16 weights are all widened at load (twice the file); past the
    allowance, the rest stay fp16 and are widened where an op reads them, and the outputs are
    the same either way."""
    fp16 = session_exporters["float16"].export(COMPONENTS["joint"])
    weights = sum(f.stat().st_size for f in fp16.package.rglob("weight.bin"))
    widened = MILModel(fp16.package)
    assert widened.nbytes == pytest.approx(2 * weights, rel=0.05)
    monkeypatch.setattr(MILModel, "widen_at_load_bytes", weights // 2)
    half_widened = MILModel(fp16.package)
    assert weights * 0.95 <= half_widened.nbytes <= weights * 1.5 * 1.05
    monkeypatch.setattr(MILModel, "widen_at_load_bytes", 0)  # as if the joint were large
    kept = MILModel(fp16.package)
    assert kept.nbytes == pytest.approx(weights, rel=0.05)
    inputs = {s.name: np.random.default_rng(0).standard_normal(s.shape).astype(s.dtype) for s in kept.input_specs}
    with warnings.catch_warnings():  # the loaded weights are read-only arrays: widening must not complain
        warnings.simplefilter("error")
        at_use = kept.predict(inputs)
    for name, value in widened.predict(inputs).items():
        np.testing.assert_array_equal(at_use[name], value)
        np.testing.assert_array_equal(half_widened.predict(inputs)[name], value)
