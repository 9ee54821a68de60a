"""The quantization suite's session: every variant built from this session's exports once and
weighed against them; the report the plugin writes."""

from __future__ import annotations

import pytest

from cli.options import WARMUP_CALLS
from exporters.quantize import variant_table
from reports.kinds import QuantizationContext, VariantReport
from reports.plugin import send
from validation.audio import synthetic_speech
from validation.quantization import QuantizationSweep
from validation.sensitivity import profile_variant
from validation.tolerances import load_gates


def pytest_generate_tests(metafunc):
    config = metafunc.config
    pyproject = config.rootpath / "pyproject.toml"
    if "variant_name" in metafunc.fixturenames:
        metafunc.parametrize("variant_name", list(variant_table(pyproject)))
    if "gate" in metafunc.fixturenames:
        gates = load_gates(pyproject, config.option.gates)
        cases = [(variant, metric, minimum) for variant, metrics in gates.items()
                 for metric, minimum in metrics.items()]
        metafunc.parametrize("gate", cases, ids=[f"{v}-{m}" for v, m, _ in cases])


@pytest.fixture(scope="session")
def quantization_sweep(export_cache, session_exporters, dims, predictor, backend, pytestconfig):
    """Variant name -> ``VariantResult``, each variant swept once per session; every result also
    goes to the report the plugin writes."""
    opt = pytestconfig.option
    session_exporter = session_exporters[opt.compute_precision]
    runs, warmup = opt.quantization_runs, WARMUP_CALLS if opt.quantization_runs else 0  # as quantize warms up
    clip = synthetic_speech(export_cache, dims)
    sweep = QuantizationSweep(variant_table(pytestconfig.rootpath / "pyproject.toml"), session_exporter, None,
                              export_cache, predictor, dims, clip, backend=backend, compute_units=opt.compute_units,
                              runs=runs, warmup=warmup)
    context = QuantizationContext.of(backend, opt.compute_units, opt.compute_precision,
                                     model=session_exporter.metadata([])["model"], clip=clip.name, runs=runs,
                                     warmup=warmup)
    send(pytestconfig, context)

    def run(name):
        if name not in sweep.results:
            send(pytestconfig, VariantReport(**sweep(name).record()))
        return sweep(name)

    run.sweep = sweep
    return run


PROFILED_VARIANT = "palettize_4bit"  # the table's most sensitive: its profile tells the groups apart


@pytest.fixture(scope="session")
def profiled(quantization_sweep, pytestconfig):
    """``PROFILED_VARIANT``'s result with its sensitivity profile, sent to the report."""
    quantization_sweep(PROFILED_VARIANT)
    profile_variant(quantization_sweep.sweep, PROFILED_VARIANT)
    result = quantization_sweep(PROFILED_VARIANT)
    send(pytestconfig, VariantReport(**result.record()))
    return result
