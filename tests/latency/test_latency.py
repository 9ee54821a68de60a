"""Latency of every component, fused package and the whole decode: Torch against the exported
packages on the same 15 s clip, timed by pytest-benchmark (``pytest --benchmark-only``).

Each test times one side of one case with the other side run between its rounds (A/B/A/B, so
both see the same load); the report plugin turns the paired rounds into the ``latency`` block of
metadata.json and the plots. Nothing here asserts a speed: the numbers are recorded.
What is asserted is that each timed call did its job, so a benchmark of a broken call fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from exporters.components import COMPONENTS
from runtimes.base import BackendUnavailable
from runtimes.coreml import compile_and_place
from validation.greedy import Transcript
from validation.timing import TIMED, Partner, first_call, load_average

pytestmark = pytest.mark.latency


def _check_result(case, side, result, dims):
    """The timed call returned what its side produces, in the contract's shapes."""
    if case.kind == "end_to_end":
        assert isinstance(result, Transcript)
        if side == "backend":  # the host loop made its decisions (NeMo's hypothesis does not count them)
            assert result.decisions > 0 and result.decisions >= len(result.tokens), result
    elif side == "torch":
        outputs = result if isinstance(result, tuple) else (result,)
        assert len(outputs) == len(COMPONENTS[case.name].outputs(dims))
    elif case.kind == "fused" and side == "separate" and case.name == "joint_decision":
        assert result[0].shape == (1, dims.encoder_frames, 1)  # token ids decided on the host
    else:
        name = case.name
        specs = COMPONENTS[name].outputs(dims) if side != "separate" else COMPONENTS["encoder"].outputs(dims)
        for spec in specs:
            assert result[spec.name].shape == spec.shape, (spec.name, result[spec.name].shape)
            assert np.all(np.isfinite(result[spec.name])), f"{spec.name} has NaN/Inf"


@pytest.mark.parametrize("case_id, side", TIMED, ids=[f"{c}-{s}" for c, s in TIMED])
def test_latency(benchmark, latency_cases, latency_report, latency_packages, backend, dims, pytestconfig, case_id,
                 side):
    case = latency_cases[case_id]
    call = case.calls[side]
    partner = Partner(case.calls[next(s for s in case.sides if s != side)])
    opt = pytestconfig.option
    first = first_call(case) if side == case.sides[1] else None
    if first is not None and backend == "coreml" and case.kind == "component":
        first.update(compile_and_place(latency_packages[case.name].package, opt.compute_units))
    benchmark.group = case_id
    benchmark.extra_info.update({"side": side, "kind": case.kind, "backend": latency_report.environment["backend"],
                                 "values_from": latency_report.environment["values_from"]
                                 if side in ("backend", "fused", "separate") else "Torch CPU (NeMo)",
                                 **(first or {})})
    before = load_average()
    result = benchmark.pedantic(call, setup=partner, rounds=opt.latency_rounds, warmup_rounds=opt.latency_warmup,
                                iterations=1)
    _check_result(case, side, result, dims)
    if benchmark.disabled:  # --benchmark-disable, or xdist: the call ran once, untimed
        return
    samples = [t * 1e3 for t in benchmark.stats.stats.data]
    assert len(samples) == opt.latency_rounds
    paired = partner.rounds(opt.latency_warmup, opt.latency_rounds)
    assert len(paired) == opt.latency_rounds, "the other side ran once before each round"
    latency_report.add(case, side, samples, paired, first, (before, load_average()))


def test_coreml_compile_time_and_placement(latency_packages, pytestconfig):
    """Core ML compiles the package and plans every operation onto a device (macOS only)."""
    package = latency_packages["joint"]
    try:
        found = compile_and_place(package.package, pytestconfig.option.compute_units)
    except BackendUnavailable as error:
        pytest.skip(f"needs Core ML: {error}")
    assert found["compile_ms"] > 0
    if found["placement"] is None:
        pytest.skip(f"this macOS has no MLComputePlan: {found['placement_error']}")
    assert sum(found["placement"].values()) > 0
    assert set(found["placement"]) <= {"CPU", "GPU", "NeuralEngine", "none (constants)"}, found
