"""The checks can fail, and say why: a Torch reference changed under a passing export must be
caught with the metric, the tolerance, the worst element and the first diverging module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exporters.components import COMPONENTS, example_inputs
from runtimes.mil import MILModel
from validation.checks import ParityRunner
from validation.metrics import Tolerance

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def runner(session_exporters, torch_model, dims, tolerances):
    exported = {e.name: e for e in session_exporters["float32"].export_all()}
    loaded = {}

    def load(package):
        return loaded.setdefault(package, MILModel(package))

    return ParityRunner(torch_model, dims, {n: e.package for n, e in exported.items()}, load, tolerances, "mil",
                        "float32", origins=lambda name: exported[name].op_origins())


def test_a_changed_joint_fails_with_metric_tolerance_location_and_module(runner, torch_model, clips, tolerances):
    layer = torch_model.joint.joint_net[-1]
    original = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.mul_(1.2)
    try:
        run = runner.run(clips["speech"])
    finally:
        with torch.no_grad():
            layer.weight.copy_(original)
    joint = run.results["joint.logits"]
    assert not joint.passed
    message = joint.message()
    assert "joint.logits on speech:" in message
    tolerance = tolerances["joint.logits"]
    assert f"outside atol {tolerance.atol:g}, rtol {tolerance.rtol:g}" in message and "worst at index [0, " in message
    last = f"joint.joint_net.{len(torch_model.joint.joint_net) - 1}"  # the scaled layer (after ReLU and any dropout)
    assert "first diverging operations" in message and last in message, message
    assert not run.results["decoder.logits"].passed
    single = run.results["joint_decision_single_step.token_prob"]  # fed frame by frame: located on its first frame
    assert not single.passed and "could not locate" not in single.message() and last in single.message(), \
        single.message()
    # what the joint does not feed is unaffected
    assert run.results["encoder.encoder"].passed and run.results["decoder.h_out"].passed
    # the fused packages still agree with the exported joint: both are the unchanged export
    assert run.results["fused.joint_decision"].passed


def test_a_small_valued_output_still_locates_the_changed_module(runner, torch_model, dims):
    """Outputs far smaller than their atol (an untrained full-size model's token probabilities
    peak at 3.4e-4 against atol 0.1) still name the module that changed: the PSNR floor bounds
    the divergence threshold."""
    inputs = example_inputs(COMPONENTS["joint"], dims)
    layer = torch_model.joint.joint_net[-1]
    original = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.mul_(1.2)
    try:
        found = runner.divergences("joint", inputs, np.array([3.4e-4]), Tolerance(0.1, 1e-2))
    finally:
        with torch.no_grad():
            layer.weight.copy_(original)
    last = f"joint.joint_net.{len(torch_model.joint.joint_net) - 1}"
    assert found and last in found[0], found


def test_the_same_runner_passes_once_restored(runner, clips):
    run = runner.run(clips["speech_1s"])
    assert not run.failed(), [r.message() for r in run.failed()]


class _NaNFromItsThirdOp:
    """A joint package that computes NaN: its outputs are NaN, and its program says where."""

    def __init__(self, package):
        self.real = MILModel(package)
        self.input_specs = self.real.input_specs

    def predict(self, inputs):
        return {name: np.full_like(value, np.nan) for name, value in self.real.predict(inputs).items()}

    def first_non_finite(self, inputs):
        return "linear (opset iOS17) at 'joint_op_3' is the first op with a non-finite output"


def test_a_non_finite_output_says_which_op_first_went_non_finite(session_exporters, torch_model, dims, tolerances,
                                                                 clips):
    exported = {e.name: e for e in session_exporters["float32"].export_all(["decoder", "joint"])}
    packages = {n: e.package for n, e in exported.items()}
    loaded = {p: (_NaNFromItsThirdOp(p) if name == "joint" else MILModel(p)) for name, p in packages.items()}
    runner = ParityRunner(torch_model, dims, packages, loaded.__getitem__, tolerances, "mil", "float32",
                          origins=lambda name: exported[name].op_origins())
    joint = runner.run(clips["speech_1s"]).results["joint.logits"]
    assert not joint.passed
    assert joint.divergences[0] == ("non-finite output: linear (opset iOS17) at 'joint_op_3' is the first op with "
                                    "a non-finite output"), joint.divergences
