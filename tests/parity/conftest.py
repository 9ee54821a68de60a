"""The parity suite's session: clips, one runner per precision, and the report it feeds."""

from __future__ import annotations

import pytest

from reports.parity import ParityReport, parity_context
from reports.plugin import PARITY_REPORT
from validation.audio import parity_clip_names, parity_clips
from validation.checks import ParityRunner


def pytest_generate_tests(metafunc):
    if "clip_name" in metafunc.fixturenames:
        metafunc.parametrize("clip_name", parity_clip_names(metafunc.config.option.audio))


@pytest.fixture(scope="session")
def clips(pytestconfig, export_cache, dims):
    return {clip.name: clip for clip in parity_clips(export_cache, dims, pytestconfig.option.audio)}


@pytest.fixture(scope="session")
def parity_report(pytestconfig, session_exporters, backend, tolerances):
    opt = pytestconfig.option
    precision = opt.compute_precision
    exporter = session_exporters[precision]
    context = parity_context(opt.backend, backend, precision, opt.compute_units, tolerances)
    report = ParityReport(exporter.metadata(exporter.export_all()), context, precision,
                          parity_clip_names(pytestconfig.option.audio)[0])
    pytestconfig.stash[PARITY_REPORT] = report
    return report


@pytest.fixture(scope="session")
def parity(session_exporters, torch_model, dims, predictor, backend, tolerances, clips, parity_report):
    """``parity(precision, clip_name)``: every check of that clip, run once per session."""
    runners, done = {}, {}

    def run(precision, clip_name):
        if (precision, clip_name) not in done:
            if precision not in runners:
                exported = {e.name: e for e in session_exporters[precision].export_all()}
                runners[precision] = ParityRunner(
                    torch_model, dims, {name: e.package for name, e in exported.items()}, predictor, tolerances,
                    backend, precision, origins=lambda name: exported[name].op_origins())
            run_ = done[(precision, clip_name)] = runners[precision].run(clips[clip_name])
            parity_report.add(precision, run_)
        return done[(precision, clip_name)]

    return run
