"""A pytest plugin that runs the op tests Apple ships inside coremltools with the MIL executor
standing in for Core ML's ``predict``, on any OS:

    .venv/bin/python -m pytest -p tests.runtime.apple_op_tests -p no:randomly -q \\
        --pyargs coremltools.converters.mil.mil.ops.tests.iOS17

Those tests build a program, convert it and, on macOS only, compare Core ML's prediction with the
expected values. Here every ``MLModel.predict`` (and ``make_state``) of an ML Program runs on
``runtimes.mil.MILModel`` instead, and the summary counts, per opset of the programs predicted,
the tests that predicted: passed, failed (a program the executor cannot load included), and those
Apple marks as expected failures of Core ML itself. Tests that never predict (builder and
value-inference checks) are left out of the counts, and a test that predicts a neural network
skips: only ML Program targets run (``PYMIL_TEST_TARGETS=mlprogram``), some tests convert to a
neural network all the same, and the executor reads ML Programs only.
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


OPSETS = {"CoreML5": "iOS15", "CoreML6": "iOS16", "CoreML7": "iOS17", "CoreML8": "iOS18"}  # the proto's names


def _predict(self, data, state=None):
    spec = self.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        pytest.skip("a neural network: the MIL executor runs ML Programs only")
    function = spec.mlProgram.functions[spec.description.defaultFunctionName or "main"]
    _opsets_predicted.add(OPSETS.get(function.opset, function.opset))  # before loading: a failed load counts
    return _executor(self).predict(data, state=state)


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
