"""Latency of every component, fused package and the whole decode: Torch against the exported
packages on the same 15 s clip, timed by pytest-benchmark (``pytest --benchmark-only``); and how
long a stress set takes through the long-audio strategies.

Each test times one side of one case with the other side run between its rounds (A/B/A/B, so
both see the same load); the report plugin turns the paired rounds into the ``latency`` block of
metadata.json and the plots. Nothing here asserts a speed: the numbers are recorded.
What is asserted is that each timed call did its job, so a benchmark of a broken call fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from exporters.components import COMPONENTS, STREAMING_COMPONENTS, decode_packages, get_components
from exporters.streaming import mel_chunks
from runtimes.base import BackendUnavailable
from runtimes.coreml import compile_and_place
from validation.evaluation import decoders_for, evaluate, token_text, windowed_decoders_for
from validation.greedy import Transcript
from validation.held_out import open_data_set
from validation.streaming import stream_parity
from validation.timestamps import word_timer
from validation.timing import SIDES, TIMED, Partner, first_call, load_average, stream_case
from validation.windowing import DEFAULT_STRATEGY, STRATEGIES

pytestmark = pytest.mark.latency


def _check_result(case, side, result, dims):
    """The timed call returned what its side produces, in the contract's shapes."""
    if case.kind == "end_to_end":
        assert isinstance(result, Transcript)
        if side == "backend":  # the host loop made its decisions (NeMo's hypothesis does not count them)
            assert result.decisions > 0 and result.decisions >= len(result.tokens), result
    elif side == "torch":
        outputs = result if isinstance(result, tuple) else (result,)
        assert len(outputs) == len(COMPONENTS[case.name].outputs(dims))
    elif case.kind == "fused" and side == "separate" and case.name == "joint_decision":
        assert result[0].shape == (1, dims.encoder_frames, 1)  # token ids decided on the host
    else:
        name = case.name
        specs = COMPONENTS[name].outputs(dims) if side != "separate" else COMPONENTS["encoder"].outputs(dims)
        for spec in specs:
            assert result[spec.name].shape == spec.shape, (spec.name, result[spec.name].shape)
            assert np.all(np.isfinite(result[spec.name])), f"{spec.name} has NaN/Inf"


@pytest.mark.parametrize("case_id, side", TIMED, ids=[f"{c}-{s}" for c, s in TIMED])
def test_latency(benchmark, latency_cases, latency_report, latency_packages, backend, dims, pytestconfig, case_id,
                 side):
    case = latency_cases[case_id]
    call = case.calls[side]
    partner = Partner(case.calls[next(s for s in case.sides if s != side)])
    opt = pytestconfig.option
    first = first_call(case) if side == case.sides[1] else None
    if first is not None and backend == "coreml" and case.kind == "component":
        first.update(compile_and_place(latency_packages[case.name].package, opt.compute_units))
    benchmark.group = case_id
    benchmark.extra_info.update({"side": side, "kind": case.kind, "backend": latency_report.environment["backend"],
                                 "values_from": latency_report.environment["values_from"]
                                 if side in ("backend", "fused", "separate") else "Torch CPU (NeMo)",
                                 **(first or {})})
    before = load_average()
    result = benchmark.pedantic(call, setup=partner, rounds=opt.latency_rounds, warmup_rounds=opt.latency_warmup,
                                iterations=1)
    _check_result(case, side, result, dims)
    if benchmark.disabled:  # --benchmark-disable, or xdist: the call ran once, untimed
        return
    samples = [t * 1e3 for t in benchmark.stats.stats.data]
    assert len(samples) == opt.latency_rounds
    paired = partner.rounds(opt.latency_warmup, opt.latency_rounds)
    assert len(paired) == opt.latency_rounds, "the other side ran once before each round"
    latency_report.add(case, side, samples, paired, first, (before, load_average()))


def test_coreml_compile_time_and_placement(latency_packages, pytestconfig):
    """Core ML compiles the package and plans every operation onto a device (macOS only)."""
    package = latency_packages["joint"]
    try:
        found = compile_and_place(package.package, pytestconfig.option.compute_units)
    except BackendUnavailable as error:
        pytest.skip(f"needs Core ML: {error}")
    assert found["compile_ms"] > 0
    if found["placement"] is None:
        pytest.skip(f"this macOS has no MLComputePlan: {found['placement_error']}")
    assert sum(found["placement"].values()) > 0
    assert set(found["placement"]) <= {"CPU", "GPU", "NeuralEngine", "none (constants)"}, found


@pytest.fixture(scope="module")
def stream_latency(streaming, stream, predictor, dims, pytestconfig):
    """The streaming case on the session's stream, at the session's compute precision."""
    exporters, model = streaming
    exporter = exporters[pytestconfig.option.compute_precision]
    exported = [exporter.export(c) for c in get_components(list(STREAMING_COMPONENTS))]
    return stream_case(model, exporter.metadata(exported)["model"], exporter.streaming_dims, list(stream),
                       {e.name: predictor(e.package).predict for e in exported}, stream.samples, dims.sample_rate)


@pytest.mark.parametrize("side", SIDES["stream"])
def test_streaming_latency(benchmark, stream_latency, latency_report, pytestconfig, side):
    """Every chunk of the stream once, from empty caches, on each side in turn (the other side's
    same chunk before each round): per-chunk p50 and p90, real-time factor, time to first token."""
    case, opt = stream_latency, pytestconfig.option
    sides = case.calls
    for _ in range(opt.latency_warmup):  # warm-up chunks; then both sides begin the stream afresh
        for call in sides.values():
            call()
    for call in sides.values():
        call.restart()
    chunks = len(sides[side].chunks)
    partner = Partner(sides[next(s for s in case.sides if s != side)])
    benchmark.group = case.id
    benchmark.extra_info.update({"side": side, "kind": case.kind, "chunks": chunks,
                                 "backend": latency_report.environment["backend"]})
    before = load_average()
    result = benchmark.pedantic(sides[side], setup=partner, rounds=chunks, warmup_rounds=0, iterations=1)
    assert result.ndim == 3 and np.isfinite(result).all()
    if benchmark.disabled:
        return
    assert [index for index, _, _ in sides[side].timeline] == list(range(chunks)), "one pass over the stream"
    samples = [t * 1e3 for t in benchmark.stats.stats.data]
    latency_report.add(case, side, samples, partner.rounds(0, chunks), None, (before, load_average()))


def test_a_minute_of_streaming_verified_chunk_by_chunk(benchmark, streaming, stream, predictor, tolerances,
                                                       dims, backend, pytestconfig):
    """A minute of audio cut into chunks and verified on both sides (NeMo's streaming, the
    packages, every output compared, both decoded): the time it takes is recorded."""
    exporters, model = streaming
    exporter = exporters[pytestconfig.option.compute_precision]
    predicts = {c.name: predictor(exporter.export(c).package).predict
                for c in get_components(list(STREAMING_COMPONENTS))}
    samples = np.tile(stream.samples, 2)[:60 * dims.sample_rate]

    def verify():
        return stream_parity(model, exporter.streaming_dims, predicts, mel_chunks(model, samples), tolerances,
                             exporter.dims, exact=False)

    benchmark.group = "stream:verification"
    run = benchmark.pedantic(verify, rounds=1, warmup_rounds=0, iterations=1)
    benchmark.extra_info.update({"audio_seconds": 60.0, "chunks": len(run.chunks), "backend": backend})
    assert len(run.chunks) > 300 and not run.failures(), run.failures()[:5]


@pytest.mark.parametrize("name", ["seams", "silence"])
def test_a_stress_set_through_three_long_audio_strategies(benchmark, name, torch_model, dims, export_cache,
                                                          session_exporters, predictor, backend, pytestconfig):
    """A stress set through the default strategy, quiet-start and buffered (NeMo and the export
    on each, NeMo's whole recordings once, NeMo's own buffered pipeline beside the buffered one,
    the words in time): its time is recorded (the README's target: 2 minutes a set on a 2-core
    host)."""
    exporter = session_exporters[pytestconfig.option.compute_precision]
    decoding = dims.family.decodings[0]
    exports = {"export": {e.name: e.package for e in exporter.export_all(decode_packages(decoding))}}
    _, utterances, bad = open_data_set(f"builtin:{name}", export_cache, dims)
    primary, *others = (STRATEGIES[s] for s in (DEFAULT_STRATEGY, "quiet-start", "buffered"))

    def run():
        return evaluate(utterances, decoders_for(torch_model, dims, exports, predictor, primary, decoding),
                        token_text(torch_model), dims, strategy=primary,
                        compared={s.name: windowed_decoders_for(torch_model, dims, exports, predictor, s, decoding)
                                  for s in others}, timer=word_timer(torch_model, dims))

    benchmark.group = "long audio: a stress set through three strategies"
    result = benchmark.pedantic(run, rounds=1, warmup_rounds=0, iterations=1)
    audio = sum(r["seconds"] for r in result.records)
    benchmark.extra_info.update({"set": name, "audio_seconds": audio, "utterances": len(result.records),
                                 "strategies": [primary.name, *(s.name for s in others)], "backend": backend})
    assert not bad and len(result.records) == len(utterances) and audio > 120
