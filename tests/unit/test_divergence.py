"""Locating the first ops where an export departs from Torch."""

from __future__ import annotations

import copy

import pytest
import torch

from exporters.components import COMPONENTS, example_inputs
from exporters.wrappers import wrapper
from runtimes.mil import MILModel
from validation.divergence import compare_modules, first_divergences

PERTURBED = "encoder.layers.1.feed_forward2.linear2"


@pytest.fixture(scope="module")
def encoder_export(session_exporters):
    exported = session_exporters["float32"].export(COMPONENTS["encoder"])
    return MILModel(exported.package), exported.op_origins()


def _run(encoder_export, module, dims, threshold=None):
    program, origins = encoder_export
    component = COMPONENTS["encoder"]
    inputs = example_inputs(component, dims)
    order = [s.name for s in component.inputs(dims)]
    if threshold is None:
        return compare_modules(program, origins, module, inputs, order)
    return first_divergences(program, origins, module, inputs, order, threshold)


def test_every_layer_is_matched_and_agrees_at_fp32(encoder_export, torch_model, dims):
    matched = _run(encoder_export, wrapper("encoder", torch_model), dims)
    modules = {d.module for d in matched}
    assert PERTURBED in modules and "encoder.pre_encode.out" in modules
    assert len(modules) >= 20, sorted(modules)
    worst = max(matched, key=lambda d: d.relative)
    assert worst.relative < 1e-5, str(worst)


def test_a_changed_layer_is_reported_first(encoder_export, torch_model, dims):
    perturbed = copy.deepcopy(wrapper("encoder", torch_model))
    with torch.no_grad():
        perturbed.get_submodule(PERTURBED).weight.mul_(1.5)
    found = _run(encoder_export, perturbed, dims, threshold=1e-3)
    assert found, "the changed layer went unnoticed"
    assert found[0].module == PERTURBED and found[0].op_type == "linear", [str(d) for d in found]
    upstream = ("encoder.pre_encode", "encoder.layers.0.", "encoder.layers.1.feed_forward1")
    assert not any(d.module.startswith(upstream) for d in found)
