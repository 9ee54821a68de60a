"""The quantization suite's session: every variant built from this session's exports once and
weighed against them; the report the plugin writes."""

from __future__ import annotations

import pytest

from exporters.convert import ExportOptions
from exporters.export import Exporter
from exporters.quantize import variant_table
from reports.plugin import QUANTIZATION_REPORT
from runtimes.base import describe_backend
from validation.audio import synthetic_speech
from validation.quantization import reference_of, sweep_variant
from validation.tolerances import load_gates


def pytest_generate_tests(metafunc):
    config = metafunc.config
    pyproject = config.rootpath / "pyproject.toml"
    if "variant_name" in metafunc.fixturenames:
        metafunc.parametrize("variant_name", list(variant_table(pyproject)))
    if "gate" in metafunc.fixturenames:
        gates = load_gates(pyproject, config.option.gates)
        cases = [(variant, metric, minimum) for variant, metrics in gates.items() for metric, minimum in metrics.items()]
        metafunc.parametrize("gate", cases, ids=[f"{v}-{m}" for v, m, _ in cases])


@pytest.fixture(scope="session")
def quantization_sweep(model_source, export_cache, exporters, torch_model, dims, predictor, backend, pytestconfig):
    """Variant name -> ``VariantResult``, each variant swept once per session."""
    opt = pytestconfig.option
    table = variant_table(pytestconfig.rootpath / "pyproject.toml")
    clip = synthetic_speech(export_cache, dims)
    bases, results = {}, {}

    def sweep(name):
        if name not in results:
            variant = table[name]
            target = variant.minimum_deployment_target
            if target not in bases:
                exporter = exporters[opt.compute_precision]
                if target != exporter.options.minimum_deployment_target:
                    exporter = Exporter(model_source, ExportOptions(opt.compute_precision, opt.compute_units, target),
                                        export_cache, progress=lambda message: None)
                exports = {e.name: e for e in exporter.export_all()}
                reference = reference_of({n: e.package for n, e in exports.items()}, predictor, dims, clip)
                bases[target] = exports, reference
            results[name] = sweep_variant(variant, *bases[target], export_cache, predictor, dims, clip,
                                          backend=backend, compute_units=opt.compute_units,
                                          runs=opt.quantization_runs, warmup=1 if opt.quantization_runs else 0)
            context = {"model": exporters[opt.compute_precision].metadata([])["model"], "backend": backend,
                       "values_from": describe_backend(backend), "compute_units": opt.compute_units,
                       "compute_precision": opt.compute_precision, "clip": clip.name, "runs": opt.quantization_runs,
                       "warmup": 1 if opt.quantization_runs else 0}
            report = pytestconfig.stash.setdefault(QUANTIZATION_REPORT, {"context": context, "results": {}})
            report["results"][name] = results[name]
        return results[name]

    return sweep
