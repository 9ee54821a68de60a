"""Command-line options and session fixtures shared by every suite.

The model source options are the command line's own (``exporters.sources``); without one,
the suites run on the trained test model, ``parakeet-tdt-tiny-trained``.
"""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("reports.plugin")  # imported below, before pytest_plugins loads it

import cli  # noqa: F401  first of this project's modules: it settles the BLAS threads before numpy loads
from cli.options import SUITE_OPTIONS, WARMUP_CALLS
from exporters.components import COMPONENTS, CTC_DECODE, ExportOptions, decode_packages
from exporters.export import Exporter
from exporters.quantize import VARIANTS, compress, variant_table
from exporters.sources import DEFAULT_PRESET, HYBRID_PRESET, STREAMING_PRESET, ModelSource, add_source_options
from exporters.streaming import MelChunk, mel_chunks
from infra.cache import ExportCache
from infra.errors import UserError
from reports.kinds import HeldOut
from reports.plugin import send
from runtimes.base import BackendUnavailable, resolve_backend
from runtimes.coreml import unavailable_reason
from runtimes.loader import LoadedPredictors
from validation.audio import read_audio, synthetic_speech
from validation.held_out import held_out_evaluation
from validation.streaming import stream_audio
from validation.tolerances import load_gates, load_tolerances
from validation.windowing import DEFAULT_STRATEGY, STRATEGIES

pytest_plugins = ["reports.plugin"]


def pytest_addoption(parser):
    group = parser.getgroup("parakeet", "Parakeet-TDT export")
    add_source_options(group.addoption)
    for option in SUITE_OPTIONS:  # declared once for the command and the suites (cli.options)
        option.add(group.addoption)
    group.addoption("--strategy", dest="strategy", default=DEFAULT_STRATEGY, choices=list(STRATEGIES),
                    help="how --manifest's long recordings are cut into windows and merged "
                         f"(default {DEFAULT_STRATEGY}): {', '.join(STRATEGIES)}")
    group.addoption("--latency-rounds", dest="latency_rounds", type=int, default=10, metavar="N",
                    help="timed calls per side in the latency suite (default 10)")
    group.addoption("--latency-warmup", dest="latency_warmup", type=int, default=WARMUP_CALLS, metavar="N",
                    help=f"untimed calls before them (default {WARMUP_CALLS}, as compare)")
    group.addoption("--quantization-runs", dest="quantization_runs", type=int, default=3, metavar="N",
                    help="timed calls per compressed package in the quantization suite (default 3; 0: no timing)")
    group.addoption("--threads", dest="threads", type=int, default=None, metavar="N",
                    help="threads for Torch and the executor's BLAS in the latency suite (default: every CPU)")


TOLERANCES = pytest.StashKey["ToleranceTable"]()


def pytest_configure(config):
    """Refuse bad tolerances, gates and unusable --audio before any model is built."""
    opt = config.option
    reason = unavailable_reason() if resolve_backend(opt.backend) == "coreml" else None
    if reason:  # as the command refuses it: every backend test would otherwise skip, and the session pass
        raise pytest.UsageError(f"--backend coreml: {reason}; use --backend mil to run this project's executor")
    for name in ("latency_rounds", "threads", "chunk_ms"):
        value = getattr(opt, name)
        if value is not None and value < 1:
            raise pytest.UsageError(f"--{name.replace('_', '-')} {value}: expected a whole number of at least 1")
    for name in ("latency_warmup", "quantization_runs"):
        if getattr(opt, name) < 0:
            raise pytest.UsageError(f"--{name.replace('_', '-')} {getattr(opt, name)}: expected 0 or more")
    try:
        config.stash[TOLERANCES] = load_tolerances(config.rootpath / "pyproject.toml", opt.tolerances, opt.psnr_floor)
        load_gates(config.rootpath / "pyproject.toml", opt.gates, variant_table(config.rootpath / "pyproject.toml"))
        if opt.audio is not None:
            read_audio(opt.audio)
    except UserError as e:
        raise pytest.UsageError(str(e)) from None


def pytest_collection_modifyitems(config, items):
    """``--benchmark-only``: the tests without a benchmark are deselected (one count in the
    summary) rather than each skipped (a summary line per file)."""
    if not config.getoption("benchmark_only", False):
        return
    keep = [item for item in items if "benchmark" in getattr(item, "fixturenames", ())]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep


@pytest.fixture(scope="session")
def tolerances(pytestconfig):
    """The tolerance table: defaults, pyproject.toml, then --tolerance / --psnr-floor."""
    return pytestconfig.stash[TOLERANCES]


@pytest.fixture(scope="session")
def model_source(pytestconfig) -> ModelSource:
    opt = pytestconfig.option
    return ModelSource.from_options(opt.nemo_path, opt.model_id, opt.preset, default_preset=DEFAULT_PRESET)


@pytest.fixture(scope="session")
def export_cache(pytestconfig) -> ExportCache:
    return ExportCache(pytestconfig.option.cache_dir)


@pytest.fixture(scope="session", autouse=True)
def scratch(export_cache, tmp_path_factory):
    """The session's temporary files in the cache's scratch directory, removed at the end (and
    by the next session, should this one be killed); pytest's own ``tmp_path`` stays where
    pytest keeps it."""
    tmp_path_factory.getbasetemp()
    with export_cache.scratch() as directory:
        yield directory


@pytest.fixture(scope="session")
def torch_model(model_source):
    """The NeMo model, loaded once for the session (eval, no dither)."""
    return model_source.load()


@pytest.fixture(scope="session")
def session_exporters(model_source, export_cache, pytestconfig):
    """``exporters[precision]``: one Exporter per compute precision, sharing the cache and model."""
    units = pytestconfig.option.compute_units
    return {
        precision: Exporter(model_source, ExportOptions(compute_precision=precision, compute_units=units),
                            export_cache, progress=lambda message: None)
        for precision in ("float32", "float16")
    }


@pytest.fixture(scope="session")
def dims(session_exporters):
    return session_exporters["float32"].dims


@pytest.fixture(scope="session")
def having(session_exporters, export_cache, pytestconfig):
    """``having(component)``: exporters by precision of a model that has that component: the
    session's where its family has it, else the tiny hybrid TDT-CTC preset, which has every
    offline component (so the CTC head is exported and checked in a session on a TDT model)."""
    hybrid = {}

    def of(name: str) -> dict[str, Exporter]:
        if COMPONENTS[name].fits(session_exporters["float32"].dims):
            return session_exporters
        if not hybrid:
            source = ModelSource.from_options(preset=HYBRID_PRESET)
            hybrid.update({p: Exporter(source, ExportOptions(compute_precision=p,
                                                             compute_units=pytestconfig.option.compute_units),
                                       export_cache, progress=lambda message: None)
                           for p in ("float32", "float16")})
        return hybrid

    return of


@pytest.fixture(scope="session")
def backend(pytestconfig) -> str:
    """The backend that runs exported packages this session (``auto`` resolved)."""
    return resolve_backend(pytestconfig.option.backend)


@pytest.fixture(scope="session")
def predictor(backend, pytestconfig):
    """``predictor(package)``: the package loaded once on the session's backend and kept within
    the memory budget of ``runtimes.loader.LoadedPredictors``; a test that needs a backend this
    host lacks is skipped with the reason."""
    loaded = LoadedPredictors(backend, pytestconfig.option.compute_units)

    def load(package):
        try:
            return loaded(package)
        except BackendUnavailable as error:
            pytest.skip(f"backend {backend!r} unavailable: {error}")

    load.release = loaded.release
    return load


@pytest.fixture(scope="session")
def streaming(model_source, export_cache, pytestconfig):
    """``(exporters by precision, loaded model)`` streaming chunks of ``--chunk-ms``: of the
    session's model when it is cache-aware, else of the built-in streaming test model."""
    opt = pytestconfig.option
    for source in (model_source, ModelSource.from_options(None, None, STREAMING_PRESET)):
        exporters = {p: Exporter(source, ExportOptions(compute_precision=p, compute_units=opt.compute_units,
                                                       chunk_ms=opt.chunk_ms), export_cache,
                                 progress=lambda message: None) for p in ("float32", "float16")}
        try:
            if exporters["float32"].streaming_dims is not None:
                return exporters, exporters["float32"].model
        except UserError as e:
            raise pytest.UsageError(str(e)) from None
    raise AssertionError(f"the built-in {STREAMING_PRESET} is not cache-aware")


class Stream(list[MelChunk]):
    """NeMo's chunks of a stream, with its samples."""

    def __init__(self, chunks: list[MelChunk], samples):
        super().__init__(chunks)
        self.samples = samples


@pytest.fixture(scope="session")
def stream(streaming, export_cache, dims) -> Stream:
    """The stream the streaming checks and timings run: the synthetic speech twice, with pauses
    (``validation.streaming.stream_audio``), cut into chunks by NeMo's streaming buffer."""
    speech = synthetic_speech(export_cache, dims)
    samples = stream_audio(speech.samples[:speech.length], dims.sample_rate)
    return Stream(mel_chunks(streaming[1], samples), samples)


@pytest.fixture(scope="session")
def held_out(torch_model, dims, export_cache, session_exporters, predictor, pytestconfig):
    """The held-out set evaluated (``validation.held_out``) for the fp32, fp16 and int8-per-channel
    exports, the others' words held to the fp16 export's (int8 is made from it); shared by the
    parity and quantization suites and put in the validation block. Skips on a model whose
    transcripts mean nothing. The model's first decoding (a hybrid's TDT; ``held_out_ctc`` its CTC)."""
    decode = decode_packages(dims.family.decodings[0])
    exported = {precision: {e.name: e for e in session_exporters[precision].export_all(decode)}
                for precision in ("float32", "float16")}
    packages = {precision: {name: e.package for name, e in by_name.items()} for precision, by_name in exported.items()}
    int8 = VARIANTS["int8_per_channel"]
    packages[int8.name] = {name: compress(e, int8, export_cache).package for name, e in exported["float16"].items()}
    result, confidence, reason = held_out_evaluation(torch_model, dims, export_cache, packages, predictor,
                                                     flips_against="float16")
    if reason:
        pytest.skip(f"{reason}; the default --preset parakeet-tdt-tiny-trained runs this")
    send(pytestconfig, HeldOut(result.block({"set": "builtin:held-out"})))
    return result


@pytest.fixture(scope="session")
def held_out_ctc(torch_model, dims, export_cache, session_exporters, predictor):
    """A hybrid's second decoding on the held-out set: the fp32 and fp16 mel_encoder and CTC head
    through greedy CTC, against NeMo's CTC decoding. Skips on a model with no CTC head beside its
    transducer (a CTC model's own decoding is ``held_out``'s) and on one whose transcripts mean
    nothing."""
    if dims.family.decodings[1:] != ("ctc",):
        pytest.skip(f"the model is of the {dims.family.name} family: no CTC head beside a transducer; the default "
                    "--preset parakeet-tdt-tiny-trained (a hybrid) runs this")
    packages = {precision: {e.name: e.package for e in session_exporters[precision].export_all(CTC_DECODE)}
                for precision in ("float32", "float16")}
    result, _, reason = held_out_evaluation(torch_model, dims, export_cache, packages, predictor, decoding="ctc")
    if reason:
        pytest.skip(f"{reason}; the default --preset parakeet-tdt-tiny-trained runs this")
    return result
