"""The latency suite's session: threads, the cases to time, and the report they feed."""

from __future__ import annotations

import os

import pytest
import torch
from threadpoolctl import threadpool_limits

from reports.latency import LatencyReport
from reports.plugin import LATENCY_REPORT
from runtimes.base import BackendUnavailable
from runtimes.loader import load_predictor
from validation.audio import synthetic_speech
from validation.timing import all_cases, environment


@pytest.fixture(scope="session", autouse=True)
def latency_threads(pytestconfig):
    """Torch's threads and the executor's BLAS threads, set for the session and recorded."""
    threads = pytestconfig.option.threads or os.cpu_count() or 1
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    with threadpool_limits(limits=threads):
        yield threads
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def latency_packages(session_exporters, pytestconfig):
    return {e.name: e for e in session_exporters[pytestconfig.option.compute_precision].export_all()}


@pytest.fixture(scope="session")
def latency_report(pytestconfig, latency_packages, session_exporters, backend, dims, export_cache, latency_threads):
    opt = pytestconfig.option
    exporter = session_exporters[opt.compute_precision]
    clip = synthetic_speech(export_cache, dims)
    report = LatencyReport(exporter.metadata(list(latency_packages.values())),
                           environment(backend, opt.compute_units, opt.compute_precision),
                           clip.length / dims.sample_rate, opt.latency_rounds, opt.latency_warmup)
    pytestconfig.stash[LATENCY_REPORT] = report
    return report


@pytest.fixture(scope="session")
def latency_cases(torch_model, dims, latency_packages, predictor, backend, pytestconfig, export_cache):
    """Case id -> ``validation.timing.Case`` on the synthetic speech clip."""
    def fresh(package):
        try:
            return load_predictor(package, backend, pytestconfig.option.compute_units)
        except BackendUnavailable as error:
            pytest.skip(f"backend {backend!r} unavailable: {error}")

    packages = {name: e.package for name, e in latency_packages.items()}
    clip = synthetic_speech(export_cache, dims)
    return {case.id: case for case in all_cases(torch_model, dims, packages, predictor, fresh, clip)}
