"""The parity suite's session: clips, one runner per precision, the data set of ``--manifest``
(one test per utterance), and the reports they feed."""

from __future__ import annotations

import pytest

from exporters.components import ExportOptions, decode_packages
from exporters.export import Exporter
from exporters.sources import DEFAULT_PRESET, ModelSource
from infra.cache import ExportCache
from infra.errors import UserError
from reports.kinds import EvaluationContext, ParityContext, ParityRun
from reports.parity import parity_context
from reports.plugin import send
from validation.audio import parity_clip_names, parity_clips
from validation.checks import ParityRunner
from validation.evaluation import decoders_for, evaluate_utterance, read_utterance, token_text
from validation.held_out import open_data_set
from validation.timestamps import word_timer
from validation.timing import environment
from validation.windowing import STRATEGIES

NO_DATA_SET = "no data set: pass --manifest FILE.jsonl (or builtin:held-out, builtin:long-form)"


def pytest_generate_tests(metafunc):
    if "clip_name" in metafunc.fixturenames:
        metafunc.parametrize("clip_name", parity_clip_names(metafunc.config.option.audio))
    if "utterance" in metafunc.fixturenames:
        metafunc.parametrize("utterance", manifest_items(metafunc.config),
                             ids=lambda item: getattr(item, "key", None) or getattr(item, "where", "none"))


def pytest_collection_modifyitems(config, items):
    """The data set's gate judges every utterance: it runs after them."""
    gates = [item for item in items if getattr(item, "originalname", None) == "test_the_set_meets_its_wer_gate"]
    items[:] = [item for item in items if item not in gates] + gates


def _data_set(config):
    """The ``--manifest`` set's manifest, utterances and unusable lines, a built-in set rendered
    first (which needs the model's sizes)."""
    opt = config.option
    source = ModelSource.from_options(opt.nemo_path, opt.model_id, opt.preset, default_preset=DEFAULT_PRESET)
    cache = ExportCache(opt.cache_dir)
    return open_data_set(opt.manifest, cache, Exporter(source, ExportOptions(), cache, lambda message: None).dims)


def manifest_items(config) -> list:
    """The utterances of ``--manifest`` and its unusable lines (each a test that fails with the
    reason); without ``--manifest`` one test skipped with how to ask for it."""
    if config.option.manifest is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_DATA_SET), id="none")]
    try:
        _, utterances, bad = _data_set(config)
    except UserError as e:
        raise pytest.UsageError(str(e)) from None
    return [*utterances, *bad]


@pytest.fixture(scope="session")
def evaluate_one(pytestconfig, session_exporters, torch_model, dims, predictor, backend):
    """``evaluate_one(utterance)``: its evaluation record (``validation.evaluation``), with this
    session's exports at ``--compute-precision`` as ``export``."""
    opt = pytestconfig.option
    decoding = dims.family.decodings[0]  # a hybrid's default: its TDT
    packages = {e.name: e.package for e in session_exporters[opt.compute_precision].export_all(
        decode_packages(decoding))}
    strategy = STRATEGIES[opt.strategy]
    decoders = decoders_for(torch_model, dims, {"export": packages}, predictor, strategy, decoding)
    text, timer = token_text(torch_model), word_timer(torch_model, dims)

    def run(utterance):
        samples = read_utterance(utterance, dims.sample_rate)
        return evaluate_utterance(utterance, samples, decoders, text, dims, opt.normalizer, strategy=strategy,
                                  timer=timer)[0]

    return run


@pytest.fixture(scope="session")
def evaluation_context(pytestconfig, session_exporters, backend, dims) -> dict:
    """What the plugin needs to write the evaluation block (sent once per process: under ``-n``
    the controller has no fixtures of its own)."""
    opt = pytestconfig.option
    exporter = session_exporters[opt.compute_precision]
    decoding = dims.family.decodings[0]
    description = exporter.metadata(exporter.export_all(decode_packages(decoding)))
    context = EvaluationContext.of(
        backend, opt.compute_units, opt.compute_precision, description=description,
        set=opt.manifest, manifest=opt.manifest, normalizer=opt.normalizer,
        max_wer_difference_points=opt.max_wer_difference,
        versions=environment(backend, opt.compute_units, opt.compute_precision)["versions"],
        windows=STRATEGIES[opt.strategy].describe(dims), decoding=decoding)
    send(pytestconfig, context)
    return context


@pytest.fixture(scope="session")
def clips(pytestconfig, export_cache, dims):
    return {clip.name: clip for clip in parity_clips(export_cache, dims, pytestconfig.option.audio)}


@pytest.fixture(scope="session")
def parity_report(pytestconfig, session_exporters, backend, tolerances):
    opt = pytestconfig.option
    precision = opt.compute_precision
    exporter = session_exporters[precision]
    context = parity_context(opt.backend, backend, precision, opt.compute_units, tolerances)
    report = ParityContext(exporter.metadata(exporter.export_all()), context, precision,
                           parity_clip_names(pytestconfig.option.audio)[0])
    send(pytestconfig, report)
    return report


@pytest.fixture(scope="session")
def parity(session_exporters, torch_model, dims, predictor, backend, tolerances, clips, parity_report, pytestconfig):
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
            plotted = precision == parity_report.precision and clip_name == parity_report.primary_clip
            send(pytestconfig, ParityRun(precision, run_.record(with_series=plotted)))
        return done[(precision, clip_name)]

    return run
