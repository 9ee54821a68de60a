"""The pytest plugin: at the end of a session, the suites' results go into ``metadata.json``
and plots under ``--report-dir``.

Suites hand their results to the plugin through ``config.stash[PARITY_REPORT]``; a session
that ran no parity test writes nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporters.components import ExportError

PARITY_REPORT = pytest.StashKey["object"]()
_WRITTEN = pytest.StashKey[list]()


def pytest_addoption(parser):
    group = parser.getgroup("parakeet-reports", "Parakeet-TDT reports")
    group.addoption("--report-dir", dest="report_dir", type=Path, default=Path("parakeet_coreml"),
                    help="where metadata.json and plots/ are written (default parakeet_coreml, the directory "
                         "the README's convert writes); a metadata.json there must describe the tested model")


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    report = config.stash.get(PARITY_REPORT, None)
    lines = config.stash.setdefault(_WRITTEN, [])
    if report is None or not report.runs:
        return
    try:
        path, plots = report.write(config.option.report_dir)
    except (ExportError, ValueError) as e:
        lines.append(f"parity report not written: {e}")
        return
    lines.append(f"parity report: validation block in {path}; {len(plots)} plot(s) in "
                 f"{plots[0].parent if plots else 'none'}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for line in config.stash.get(_WRITTEN, []):
        terminalreporter.write_line(line)
