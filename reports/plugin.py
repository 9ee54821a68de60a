"""The pytest plugin: at the end of a session, the suites' results go into ``metadata.json``
and plots under ``--report-dir``.

Suites hand their results to the plugin with :func:`send`, one of ``reports.kinds`` each: they
travel in the test reports, so a run spread over xdist workers writes the same reports as one in
a single process. The latency
suite hands its report through ``config.stash[LATENCY_REPORT]`` (pytest-benchmark turns itself
off under xdist, so there is nothing to gather from workers); its block also goes into
pytest-benchmark's own JSON through its hooks. A session that ran no suite writes nothing.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest

from infra.errors import UserError
from infra.publish import publish, staged_output
from reports.evaluation import EVALUATION_DIR, write_evaluation, write_long_audio
from reports.kinds import BadLine, ParityRun, Sent, StreamingRun, UtteranceRecord, VariantReport, received
from reports.neural_engine import write_placement
from reports.parity import ParityReport
from reports.quantization import write_quantization
from reports.streaming import STREAMING_REPORT_DIR, streaming_block, write_streaming
from validation.evaluation import BadInput, Evaluation
from validation.neural_engine import Placement
from validation.quantization import held_out_entry
from validation.timing import flagged
from validation.tolerances import load_gates
from validation.windowing import STRATEGIES

# the suite's own folders: a user's convert and quantize results stay as they are
SUITE_REPORT_DIR = Path("test-report")
SUITE_QUANTIZED_DIR = "quantized"
LATENCY_REPORT = pytest.StashKey["object"]()
_OUTBOX = pytest.StashKey[list]()
_GATHERED = pytest.StashKey["Gathered"]()
_WRITTEN = pytest.StashKey[list]()
_MIRROR = pytest.StashKey[Path]()
MIRROR_INPUT = "parakeet_reports_mirror"  # xdist's workerinput: where the controller mirrors what it gathers
STALL_SECONDS = 30 * 60  # waiting for other tests: how long without one finishing before giving up


def send(config, result: Sent) -> None:
    """Hand a result (one of ``reports.kinds``) to the reports: it travels in the current test's
    report (``user_properties``), so the process that writes the reports (with ``-n``, xdist's
    controller) gathers it from every worker, and a run writes the same reports with and without
    ``-n``."""
    config.stash.setdefault(_OUTBOX, []).append((result.kind, result.as_dict()))


@pytest.fixture(autouse=True)
def _results_travel_with_the_test(request):
    """What the test (or a fixture it set up) sent goes into its teardown report."""
    yield
    outbox = request.config.stash.get(_OUTBOX, [])
    if outbox:
        request.node.user_properties.append(("parakeet_results", list(outbox)))
        outbox.clear()


class Gathered:
    """The results the tests sent (``reports.kinds``): the runs and records by their key, and of
    each other kind the latest."""

    def __init__(self):
        self.mirror: Path | None = None  # xdist's controller: every report's results also go there, for the workers
        self.finished: set[str] = set()  # the tests whose teardown was reported
        self.latest: dict[str, Sent] = {}
        self.parity: dict[str, dict[str, ParityRun]] = {}  # precision -> clip -> run
        self.variants: dict[str, VariantReport] = {}
        self.evaluation: dict[str, UtteranceRecord] = {}
        self.evaluation_bad: list[BadLine] = []
        self.streaming: dict[str, StreamingRun] = {}

    def pytest_runtest_logreport(self, report):
        sent = [result for name, results in report.user_properties if name == "parakeet_results"
                for result in results]
        if self.mirror is not None and (sent or report.when == "teardown"):
            with self.mirror.open("a", encoding="utf-8") as mirror:
                mirror.write(json.dumps({"nodeid": report.nodeid, "when": report.when, "results": sent}) + "\n")
        self.take(report.nodeid, report.when, sent)

    def take(self, nodeid: str, when: str, sent: list) -> None:
        if when == "teardown":
            self.finished.add(nodeid)
        for kind, payload in sent:
            result = received(kind, payload)
            if isinstance(result, ParityRun):
                self.parity.setdefault(result.precision, {})[result.record["clip"]["name"]] = result
            elif isinstance(result, VariantReport):
                self.variants[result.name] = result
            elif isinstance(result, UtteranceRecord):
                self.evaluation[result.record["key"]] = result
            elif isinstance(result, BadLine):
                self.evaluation_bad.append(result)
            elif isinstance(result, StreamingRun):
                self.streaming[result.precision] = result
            else:
                self.latest[kind] = result

    def evaluation_block(self) -> tuple[dict, list[dict]]:
        """The evaluation block of the utterances gathered, and their records in key order."""
        sent = self.latest["evaluation_context"]
        records = [r.record for r in sorted(self.evaluation.values(), key=lambda r: r.record["key"])]
        result = Evaluation(["export"], sent.normalizer, sent.max_wer_difference_points / 100,
                            ["export"] if sent.compute_precision == "float32" else [], records,
                            [BadInput(line.where, line.reason) for line in sorted(self.evaluation_bad,
                                                                                 key=lambda b: (b.where, b.reason))],
                            strategy=STRATEGIES[sent.windows["strategy"]])
        return result.block(sent.block_context()), records


def gathered_after(config, nodeids: list[str]) -> Gathered:
    """What every test of the session sent, once the tests ``nodeids`` have finished: a test that
    judges the others (the data set's gate) waits for them. In one process they ran before it; on
    an xdist worker the others ran anywhere, and arrive through the controller's mirror."""
    if not hasattr(config, "workerinput"):
        gathered = config.stash[_GATHERED]
        missing = sorted(set(nodeids) - gathered.finished)
        assert not missing, f"{len(missing)} test(s) to wait for did not run before this one: {missing[:3]}"
        return gathered
    mirror, seen, last_change = Path(config.workerinput[MIRROR_INPUT]), 0, time.monotonic()
    while True:
        lines = mirror.read_text(encoding="utf-8").splitlines() if mirror.is_file() else []
        gathered = Gathered()
        for line in lines:
            event = json.loads(line)
            gathered.take(event["nodeid"], event["when"], event["results"])
        missing = sorted(set(nodeids) - gathered.finished)
        if not missing:
            return gathered
        if len(lines) != seen:
            seen, last_change = len(lines), time.monotonic()
        elif time.monotonic() - last_change > STALL_SECONDS:
            raise AssertionError(f"no test finished in {STALL_SECONDS // 60} minutes; still waiting for "
                                 f"{len(missing)}: {', '.join(missing[:3])}")
        time.sleep(0.5)


def pytest_addoption(parser):
    group = parser.getgroup("parakeet-reports", "Parakeet-TDT reports")
    group.addoption("--report-dir", dest="report_dir", type=Path, default=SUITE_REPORT_DIR,
                    help=f"where the suites write metadata.json and plots/ (default {SUITE_REPORT_DIR}, a folder "
                         "of the suite's own: the commands' folders, parakeet_coreml and parakeet_coreml_quantized, "
                         "are never touched); a metadata.json there must describe the tested model")
    group.addoption("--quantized-dir", dest="quantized_dir", type=Path, default=None,
                    help="where the quantization suite writes its variants, quantization_summary.json and "
                         f"plots/quantize/ (default {SUITE_QUANTIZED_DIR} inside --report-dir)")


def pytest_configure(config):
    if config.option.quantized_dir is None:
        config.option.quantized_dir = config.option.report_dir / SUITE_QUANTIZED_DIR
    config.stash[_GATHERED] = Gathered()
    config.pluginmanager.register(config.stash[_GATHERED], "parakeet-gathered-results")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist's controller, starting a worker: the worker learns where the controller mirrors the
    results it gathers."""
    config = node.config
    if _MIRROR not in config.stash:
        config.stash[_MIRROR] = Path(tempfile.mkdtemp(prefix="parakeet-reports-")) / "gathered.jsonl"
        config.stash[_GATHERED].mirror = config.stash[_MIRROR]
    node.workerinput[MIRROR_INPUT] = str(config.stash[_MIRROR])


def pytest_unconfigure(config):
    mirror = config.stash.get(_MIRROR, None)
    if mirror is not None:
        mirror.unlink(missing_ok=True)
        mirror.parent.rmdir()


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    lines = config.stash.setdefault(_WRITTEN, [])
    if hasattr(config, "workerinput"):  # an xdist worker: the controller writes every report
        return
    gathered = config.stash[_GATHERED]
    if "evaluation_context" in gathered.latest:
        lines.append(_write_evaluation(config, gathered))
    reports = [("latency", config.stash.get(LATENCY_REPORT, None), "latency")]
    if "parity_context" in gathered.latest:
        reports.insert(0, ("parity", _parity_report(gathered), "validation"))
    for kind, report, block in reports:
        if report is None or not report.ready():
            continue
        try:
            path, plots = report.write(config.option.report_dir)
        except (UserError, ValueError) as e:
            lines.append(f"{kind} report not written: {e}")
            continue
        line = f"{kind} report: {block} block in {path}; {len(plots)} plot(s) in {plots[0].parent if plots else 'none'}"
        if kind == "latency":
            noisy = flagged(report.block())
            line += f"; {len(noisy)} case(s) flagged" + "".join(f"\n  FLAGGED {n}" for n in noisy)
        lines.append(line)
    if "long_audio" in gathered.latest:
        sent = gathered.latest["long_audio"]
        try:
            path, plots = write_long_audio(config.option.report_dir, sent.description, sent.sets)
            lines.append(f"long-audio report: long_audio block in {path}; {len(plots)} plot(s) in "
                         f"{plots[0].parent if plots else 'none'}")
        except UserError as e:
            lines.append(f"long-audio report not written: {e}")
    if "neural_engine" in gathered.latest:
        sent = gathered.latest["neural_engine"]
        placements = {name: Placement.from_dict(p) for name, p in sent.placements.items()}
        try:
            path, plots, _ = write_placement(config.option.report_dir, sent.description, placements)
            lines.append(f"Neural Engine report (predicted for {config.option.chip}): neural_engine block in {path}; "
                         f"{len(plots)} plot(s) in {plots[0].parent if plots else 'none'}")
        except UserError as e:
            lines.append(f"Neural Engine report not written: {e}")
    if gathered.streaming and "streaming_context" in gathered.latest:
        lines.append(_write_streaming(config, gathered))
    if gathered.variants and "quantization_context" in gathered.latest:
        try:
            lines.append(_write_quantization(config, gathered))
        except UserError as e:
            lines.append(f"quantization report not written: {e}")


def _parity_report(gathered: Gathered) -> ParityReport:
    context, held_out = gathered.latest["parity_context"], gathered.latest.get("held_out")
    report = ParityReport(context.description, context.context, context.precision, context.primary_clip,
                          held_out=held_out.block if held_out else None)
    for precision, runs in gathered.parity.items():
        for run in runs.values():
            report.add(precision, run.record)
    return report


def _write_evaluation(config, gathered: Gathered) -> str:
    """The evaluation block and plots from the utterances' records, and the set's verdict (which
    ``tests/parity/test_evaluation.py`` asserts)."""
    block, records = gathered.evaluation_block()
    verdict = "passed" if block["status"] == "passed" else "FAILED: " + "; ".join(block["failures"])
    try:
        path, plots, _ = write_evaluation(config.option.report_dir, gathered.latest["evaluation_context"].description,
                                          block, records)
    except UserError as e:
        return f"evaluation {verdict}; its report not written: {e}"
    return (f"evaluation of {len(records)} utterance(s) {verdict}; evaluation block in {path}, {len(plots)} plot(s) "
            f"in {path.parent / EVALUATION_DIR}")


def _write_streaming(config, gathered: Gathered) -> str:
    """The streaming block and plot, in their own folder under ``--report-dir``: the streaming
    model may not be the session's."""
    sent = gathered.latest["streaming_context"]
    records = {p: gathered.streaming[p].record for p in sorted(gathered.streaming)}
    block = streaming_block(records, sent.context)
    directory = config.option.report_dir / STREAMING_REPORT_DIR
    try:
        path, plot = write_streaming(directory, sent.description, block)
    except UserError as e:
        return f"streaming report not written: {e}"
    return f"streaming report ({block['status']}): streaming_validation block in {path}; plot {plot}"


def _write_quantization(config, gathered: Gathered) -> str:
    records = [gathered.variants[name].as_dict() for name in sorted(gathered.variants)]
    held_out = gathered.latest["held_out"].block if "held_out" in gathered.latest else None
    for record in records:
        name = record["name"]
        if held_out and name in held_out["wer"]:
            record["entry"]["held_out"] = held_out_entry(held_out, name)
    root = config.option.quantized_dir
    with staged_output(root, "--quantized-dir") as staging:
        path, plots, skipped = write_quantization(staging, records, gathered.latest["quantization_context"].as_dict(),
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
