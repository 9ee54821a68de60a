"""The executor's profile: where one prediction's time goes, by op type."""

from __future__ import annotations

import time

import coremltools as ct
import numpy as np
from coremltools.converters.mil import Builder as mb

from runtimes.mil import MILModel


def test_the_profile_times_every_op_type_of_the_program_once(tmp_path):
    weight = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(64, 256))], opset_version=ct.target.iOS17)
    def program(x):
        return mb.softmax(x=mb.relu(x=mb.linear(x=x, weight=weight)), axis=-1)

    path = tmp_path / "p.mlpackage"
    ct.convert(program, minimum_deployment_target=ct.target.iOS17, convert_to="mlprogram").save(str(path))
    model = MILModel(path)
    x = {"x": np.ones((64, 256), np.float32)}
    start = time.perf_counter()
    spent = model.profile(x)
    wall = time.perf_counter() - start
    assert set(spent) == {step.op_type for step in model.steps}
    assert {"linear", "relu", "softmax"} <= set(spent)
    assert all(seconds >= 0 for seconds in spent.values()) and sum(spent.values()) <= wall
    assert list(spent.values()) == sorted(spent.values(), reverse=True)
