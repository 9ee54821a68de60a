"""The executor's profile: where one prediction's time goes, by op type."""

from __future__ import annotations

import time

import coremltools as ct
import numpy as np
from coremltools.converters.mil import Builder as mb

from runtimes.mil import MILModel


def _linear_relu_softmax(tmp_path) -> MILModel:
    weight = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(64, 256))], opset_version=ct.target.iOS17)
    def program(x):
        return mb.softmax(x=mb.relu(x=mb.linear(x=x, weight=weight)), axis=-1)

    path = tmp_path / "p.mlpackage"
    ct.convert(program, minimum_deployment_target=ct.target.iOS17, convert_to="mlprogram").save(str(path))
    return MILModel(path)


X = {"x": np.ones((64, 256), np.float32)}


def test_the_profile_times_every_op_type_of_the_program_once(tmp_path):
    model = _linear_relu_softmax(tmp_path)
    start = time.perf_counter()
    spent = model.profile(X)
    wall = time.perf_counter() - start
    assert set(spent) == {step.op_type for step in model.steps}
    assert {"linear", "relu", "softmax"} <= set(spent)
    assert all(seconds >= 0 for seconds in spent.values()) and sum(spent.values()) <= wall
    assert list(spent.values()) == sorted(spent.values(), reverse=True)


def test_kernels_only_leaves_out_the_executors_own_work_around_each_kernel(tmp_path, monkeypatch):
    """A linear whose kernel takes 50 ms and whose result the executor then takes 50 ms to
    declare: the whole profile counts both, the kernels' profile only the first."""
    model = _linear_relu_softmax(tmp_path)
    linear = next(step for step in model.steps if step.op_type == "linear")
    kernel, declare = linear.kernel, model._as_declared

    def slow_kernel(**args):
        time.sleep(0.05)
        return kernel(**args)

    def slow_declare(value, dtype, op_type, args):
        if op_type == "linear":
            time.sleep(0.05)
        return declare(value, dtype, op_type, args)

    monkeypatch.setattr(linear, "kernel", slow_kernel)
    monkeypatch.setattr(model, "_as_declared", slow_declare)
    whole, kernels = model.profile(X), model.profile(X, kernels_only=True)
    assert whole["linear"] >= 0.1
    assert 0.05 <= kernels["linear"] < 0.1, kernels
    assert set(kernels) == set(whole)
    assert model._kernel_clock is None  # the clock is off again: predictions run untimed
