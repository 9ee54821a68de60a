"""The pytest plugin: at the end of a session, the suites' results go into ``metadata.json``
and plots under ``--report-dir``.

Suites hand their results to the plugin through ``config.stash[PARITY_REPORT]`` and
``config.stash[LATENCY_REPORT]``; a session that ran neither suite writes nothing. The latency
block also goes into pytest-benchmark's own JSON through its hooks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporters.components import ExportError
from exporters.publish import publish, staged_output
from reports.evaluation import EVALUATION_DIR, write_evaluation
from reports.quantization import write_quantization
from validation.evaluation import BadInput, Evaluation
from validation.tolerances import load_gates

PARITY_REPORT = pytest.StashKey["object"]()
LATENCY_REPORT = pytest.StashKey["object"]()
# {"context": dict, "results": {variant: VariantResult}}, and the held-out transcription's summary
QUANTIZATION_REPORT = pytest.StashKey[dict]()
HELD_OUT = pytest.StashKey[dict]()
_WRITTEN = pytest.StashKey[list]()
EVALUATION = pytest.StashKey["EvaluationRecords"]()


def pytest_addoption(parser):
    group = parser.getgroup("parakeet-reports", "Parakeet-TDT reports")
    group.addoption("--report-dir", dest="report_dir", type=Path, default=Path("parakeet_coreml"),
                    help="where metadata.json and plots/ are written (default parakeet_coreml, the directory "
                         "the README's convert writes); a metadata.json there must describe the tested model")
    group.addoption("--quantized-dir", dest="quantized_dir", type=Path, default=Path("parakeet_coreml_quantized"),
                    help="where the quantization suite writes its variants, quantization_summary.json and "
                         "plots/quantize/ (default parakeet_coreml_quantized, as the quantize command)")


class EvaluationRecords:
    """What the utterances' tests sent (``tests/parity/test_evaluation.py``), gathered from their
    reports: with ``-n`` on the controller, from every worker."""

    def __init__(self):
        self.records: dict[str, dict] = {}
        self.bad: list[str] = []
        self.context: dict | None = None

    def pytest_runtest_logreport(self, report):
        properties = dict(report.user_properties)
        if report.when != "call" or "evaluation_context" not in properties:
            return
        self.context = properties["evaluation_context"]
        if "evaluation" in properties:
            self.records[properties["evaluation"]["key"]] = properties["evaluation"]
        if "evaluation_bad" in properties:
            self.bad.append(properties["evaluation_bad"])


def pytest_configure(config):
    config.stash[EVALUATION] = EvaluationRecords()
    config.pluginmanager.register(config.stash[EVALUATION], "parakeet-evaluation-records")


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    lines = config.stash.setdefault(_WRITTEN, [])
    if hasattr(config, "workerinput"):  # an xdist worker: the controller writes every report
        return
    gathered = config.stash[EVALUATION]
    if gathered.context is not None:
        line, passed = _write_evaluation(config, gathered)
        lines.append(line)
        if not passed:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    for kind, key, block in (("parity", PARITY_REPORT, "validation"), ("latency", LATENCY_REPORT, "latency")):
        report = config.stash.get(key, None)
        if report is None or not report.ready():
            continue
        try:
            path, plots = report.write(config.option.report_dir)
        except (ExportError, ValueError) as e:
            lines.append(f"{kind} report not written: {e}")
            continue
        lines.append(f"{kind} report: {block} block in {path}; {len(plots)} plot(s) in "
                     f"{plots[0].parent if plots else 'none'}")
    quantization = config.stash.get(QUANTIZATION_REPORT, None)
    if quantization and quantization["results"]:
        try:
            lines.append(_write_quantization(config, quantization))
        except ExportError as e:
            lines.append(f"quantization report not written: {e}")


def _write_evaluation(config, gathered: EvaluationRecords) -> tuple[str, bool]:
    """The evaluation block and plots from the utterances' records, and the set's verdict."""
    context = dict(gathered.context)
    description = context.pop("description")
    records = sorted(gathered.records.values(), key=lambda r: r["key"])
    result = Evaluation(["export"], context.pop("normalizer"), context.pop("max_wer_difference_points") / 100,
                        ["export"] if context["compute_precision"] == "float32" else [], records,
                        [BadInput(*line.split(": ", 1)) for line in sorted(gathered.bad)])
    block = result.block(context)
    passed = block["status"] == "passed"
    verdict = "passed" if passed else "FAILED: " + "; ".join(block["failures"])
    try:
        path, plots, _ = write_evaluation(config.option.report_dir, description, block, records)
    except ExportError as e:
        return f"evaluation {verdict}; its report not written: {e}", passed
    return (f"evaluation of {len(records)} utterance(s) {verdict}; evaluation block in {path}, {len(plots)} plot(s) "
            f"in {path.parent / EVALUATION_DIR}"), passed


def _write_quantization(config, report: dict) -> str:
    results = list(report["results"].values())
    held_out = config.stash.get(HELD_OUT, None)
    for result in results:
        if held_out and result.variant.name in held_out["wer"]:
            name = result.variant.name
            result.held_out = {"utterances": held_out["utterances"], "wer": held_out["wer"][name]["wer"],
                               "wer_nemo": held_out["wer"]["nemo_windowed"]["wer"],
                               "wer_difference_to_nemo": held_out["decomposition_points"]["export"][name] / 100}
    root = config.option.quantized_dir
    with staged_output(root, "--quantized-dir") as staging:
        path, plots, skipped = write_quantization(staging, results, report["context"],
                                                  load_gates(config.rootpath / "pyproject.toml", config.option.gates))
        publish(staging, root)
    notes = "".join(f"; not drawn: {line}" for line in skipped)
    return f"quantization report: {root / path.name}; {len(plots)} plot(s){notes}"


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config, benchmarks, output_json):
    """pytest-benchmark's own JSON (--benchmark-json, --benchmark-save) carries the latency block too."""
    report = config.stash.get(LATENCY_REPORT, None)
    if report is not None and report.ready():
        output_json["parakeet_coreml"] = {"model": report.description["model"], "latency": report.block()}


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    """What the timings depend on beyond the CPU: the backend and the library versions."""
    report = config.stash.get(LATENCY_REPORT, None)
    if report is not None:
        env = report.environment
        machine_info["parakeet_coreml"] = {k: env[k] for k in ("backend", "values_from", "compute_units",
                                                                "compute_precision", "threads", "versions")}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for line in config.stash.get(_WRITTEN, []):
        terminalreporter.write_line(line)
