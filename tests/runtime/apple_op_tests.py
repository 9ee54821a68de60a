"""A pytest plugin that runs the op tests Apple ships inside coremltools with the MIL executor
standing in for Core ML's ``predict``, on any OS:

    .venv/bin/python -m pytest -p tests.runtime.apple_op_tests -p no:randomly -q \\
        --pyargs coremltools.converters.mil.mil.ops.tests.iOS17

Those tests build a program, convert it and, on macOS only, compare Core ML's prediction with the
expected values. Here every ``MLModel.predict`` (and ``make_state``) of an ML Program runs on
``runtimes.mil.MILModel`` instead, and the summary counts, per opset of the programs predicted,
the tests that predicted: passed, failed, and those Apple marks as expected failures of Core ML
itself. Tests that never predict (builder and value-inference checks) are left out of the counts.
Only ML Program targets run (``PYMIL_TEST_TARGETS=mlprogram``): the executor reads no neural networks.
"""

from __future__ import annotations

import os
from collections import defaultdict

os.environ.setdefault("PYMIL_TEST_TARGETS", "mlprogram")  # before coremltools' test modules read it

import coremltools as ct  # noqa: E402 (after the variable above)
import coremltools.converters.mil.testing_utils as ct_testing  # noqa: E402
import coremltools.models.utils as ct_utils  # noqa: E402
import pytest  # noqa: E402

from runtimes.mil import MILModel  # noqa: E402

PREDICTED = "apple_op_tests_predicted_opsets"
_opsets_predicted: set[str] = set()  # by the test now running (in this process)
_verdicts: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))  # opset -> verdict -> tests


def _executor(mlmodel) -> MILModel:
    if getattr(mlmodel, "_mil_executor", None) is None:
        mlmodel._mil_executor = MILModel(mlmodel)
    return mlmodel._mil_executor


def _predict(self, data, state=None):
    executor = _executor(self)
    _opsets_predicted.add(executor.opset)
    return executor.predict(data, state=state)


def _make_state(self):
    return _executor(self).make_state()


def pytest_configure(config):
    """Core ML as far as the tests can tell: macOS 15 (every opset runs), predictions by the executor."""
    ct_testing._IS_MACOS = True
    ct_utils._is_macos = lambda: True
    ct_utils._macos_version = lambda: (15, 0)
    ct.models.MLModel.predict = _predict
    ct.models.MLModel.make_state = _make_state


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    if call.when == "setup":
        _opsets_predicted.clear()
    outcome = yield
    if call.when == "call" or (call.when == "setup" and outcome.get_result().outcome != "passed"):
        outcome.get_result().user_properties.append((PREDICTED, sorted(_opsets_predicted)))


def pytest_runtest_logreport(report):
    """Counted where the reports arrive (the controller under xdist): the opset is the newest the test predicted."""
    opsets = dict(report.user_properties).get(PREDICTED)
    if not opsets:
        return
    verdict = ("xfailed" if hasattr(report, "wasxfail") and report.skipped
               else "passed" if report.passed else "failed" if report.failed else "skipped")
    _verdicts[max(opsets)][verdict].append(report.nodeid)


def pytest_terminal_summary(terminalreporter, config):
    counts = _verdicts
    terminalreporter.section("Apple's op tests on the MIL executor (tests that predicted)")
    for opset in sorted(counts):
        by = counts[opset]
        ran = len(by["passed"]) + len(by["failed"])
        share = 100 * len(by["passed"]) / ran if ran else 0.0
        terminalreporter.write_line(
            f"{opset}: {len(by['passed'])} of {ran} passed ({share:.1f} %); {len(by['xfailed'])} expected failures "
            f"of Core ML itself (Apple's xfail); {len(by['skipped'])} skipped")
        for nodeid in by["failed"][:50]:
            terminalreporter.write_line(f"  failed: {nodeid}")
