"""The checks can fail, and say why: a Torch reference changed under a passing export must be
caught with the metric, the tolerance, the worst element and the first diverging module."""

from __future__ import annotations

import pytest
import torch

from runtimes.mil import MILModel
from validation.checks import ParityRunner

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
    # what the joint does not feed is unaffected
    assert run.results["encoder.encoder"].passed and run.results["decoder.h_out"].passed
    # the fused packages still agree with the exported joint: both are the unchanged export
    assert run.results["fused.joint_decision"].passed


def test_the_same_runner_passes_once_restored(runner, clips):
    run = runner.run(clips["speech_1s"])
    assert not run.failed(), [r.message() for r in run.failed()]
