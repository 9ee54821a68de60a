"""The latency block: paired rounds into entries, the speedup as the geometric mean of the paired
ratios with its interval, flags for wide spread and a busy host, real-time factors from the
medians, and pytest-benchmark's JSON extended, not replaced."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from exporters.components import StreamingDims
from reports.latency import LatencyReport
from reports.metadata import read_metadata
from validation.timing import (
    SIDES,
    Case,
    Partner,
    StreamSide,
    all_cases,
    describe_entry,
    flagged,
    host_matmul_gflops,
    paired_speedup,
    speech_onset,
    summary,
    time_paired,
    time_to_first_token,
)

ENV = {"backend": "mil", "values_from": "executor", "compute_units": "ALL", "compute_precision": "float16",
       "host": {"os": "Linux", "machine": "x86_64", "cpus": 2}, "threads": {"torch": 2}, "versions": {}}


def _case(name, kind):
    return Case(name, kind, {side: lambda: None for side in SIDES[kind]})


def test_summary_of_samples():
    std = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2)
    assert summary([1.0, 2.0, 6.0]) == {"mean": 3.0, "std": pytest.approx(std), "median": 2.0, "min": 1.0,
                                        "p90": pytest.approx(2 + 0.8 * 4), "max": 6.0, "cv": pytest.approx(std / 3),
                                        "rounds": 3}


def test_the_host_matmul_ceiling_is_the_faster_of_the_two_kernels():
    """Both kernels measured, the ceiling the faster one: with ``mm`` alone the executor's
    linears (oneDNN) came out at 141 % of the host's matrix throughput on an AMD host."""
    host = host_matmul_gflops(size=256, repeats=2)
    assert set(host) == {"torch_mm", "onednn_inner_product", "best"}
    assert all(v > 0 for v in host.values())
    assert host["best"] == max(host["torch_mm"], host["onednn_inner_product"])


def test_paired_speedup_is_the_geometric_mean_of_the_ratios_with_a_t_interval():
    pairs = [(100.0, 20.0), (110.0, 25.0), (90.0, 30.0)]
    logs = [math.log(a / b) for a, b in pairs]
    half = 4.302652729911275 * statistics.stdev(logs) / math.sqrt(3)  # Student's t, 2 dof, 97.5 %
    found = paired_speedup(pairs)
    assert found["speedup"] == pytest.approx((5.0 * 4.4 * 3.0) ** (1 / 3))
    assert found["speedup_ci95"] == pytest.approx([math.exp(statistics.fmean(logs) - half),
                                                   math.exp(statistics.fmean(logs) + half)])
    assert found["paired_rounds"] == 3
    assert paired_speedup([(4.0, 2.0)]) == {"speedup": 2.0, "speedup_ci95": [2.0, 2.0], "paired_rounds": 1}


def test_rounds_alternate_the_sides_and_the_partner_keeps_the_timed_rounds():
    order = []
    case = Case("encoder", "component", {"torch": lambda: order.append("A"), "backend": lambda: order.append("B")})
    rounds = time_paired(case, runs=3, warmup=1)
    assert order == ["A", "B", "A", "B", "B", "A", "A", "B"]  # warm-up, then A/B, B/A, A/B
    assert [list(r) for r in rounds] == [["torch", "backend"], ["backend", "torch"], ["torch", "backend"]]
    partner = Partner(lambda: None)
    for _ in range(5):  # 1 warm-up round, 3 timed, 1 more (a profiling pass)
        partner()
    assert len(partner.rounds(warmup=1, runs=3)) == 3 and partner.rounds(1, 3) == partner.samples_ms[1:4]


def test_entries_pair_both_sides_and_derive_speedup_and_rtf():
    report = LatencyReport({"model": "m"}, ENV, audio_seconds=10.0, runs=3, warmup=1)
    encoder, fused = _case("encoder", "component"), _case("mel_encoder", "fused")
    report.add(encoder, "torch", [100.0, 110.0, 90.0], [20.0, 25.0, 30.0])
    report.add(encoder, "backend", [25.0, 25.0, 25.0], [100.0, 100.0, 100.0], {"load_ms": 5.0, "first_call_ms": 40.0})
    report.add(fused, "fused", [20.0, 20.0, 20.0], [30.0, 30.0, 30.0])  # one benchmark carries both sides
    block = report.block()
    entry = block["components"]["encoder"]
    assert entry["torch_ms"]["median"] == 100.0 and entry["backend_ms"]["median"] == 25.0
    assert entry["torch_ms"]["rounds"] == entry["backend_ms"]["rounds"] == entry["paired_rounds"] == 6
    assert entry["speedup"] == pytest.approx((5.0 * 4.4 * 3.0 * 4.0 * 4.0 * 4.0) ** (1 / 6))
    assert entry["rtf"] == {"torch": 0.01, "backend": 0.0025}
    assert (entry["runs"], entry["warmup"], entry["load_ms"], entry["first_call_ms"]) == (3, 1, 5.0, 40.0)
    assert block["fused"]["mel_encoder"]["speedup"] == pytest.approx(1.5) and "rtf" not in block["fused"]["mel_encoder"]
    assert block["end_to_end"] == {} and block["backend"] == "mil" and block["audio_seconds"] == 10.0
    with pytest.raises(ValueError, match="3 rounds of torch but 2 of its partner"):
        report.add(encoder, "torch", [1.0, 2.0, 3.0], [1.0, 2.0])


def _stream_dims(first=9, shift=16):
    return StreamingDims(n_mels=2, encoder_dim=4, layers=1, first_chunk_mel_frames=first, first_chunk_encoder_frames=1,
                         chunk_mel_frames=9 + shift, shift_mel_frames=shift, pre_encode_cache_frames=9,
                         drop_extra_pre_encoded=2, valid_out_frames=2, chunk_encoder_frames=3, cache_channel_frames=70,
                         cache_time_frames=8, att_context_size=(70, 1), mel_hop_seconds=0.01)


def test_time_to_first_token_follows_a_live_stream_that_can_fall_behind():
    # chunk 0 arrives at 90 ms and is done at 95; chunk 1 arrives at 250 and takes 300 (done at 550);
    # chunk 2 arrived at 410 but waits for chunk 1, is done at 560 and carries the first token
    timeline = [(0, 5.0, 0), (1, 300.0, 0), (2, 10.0, 2)]
    assert time_to_first_token(timeline, _stream_dims(), onset_seconds=0.1) == pytest.approx(460.0)
    assert time_to_first_token([(0, 5.0, 1)], _stream_dims(), onset_seconds=0.05) == pytest.approx(45.0)
    assert time_to_first_token(timeline[:2], _stream_dims(), onset_seconds=0.1) is None
    # a token in the silence before the onset (chunk 0, arrived at 90 ms) is not the first after it
    early = [(0, 5.0, 1), (1, 300.0, 1), (2, 10.0, 3)]
    assert time_to_first_token(early, _stream_dims(), onset_seconds=0.1) == pytest.approx(460.0)


def test_speech_onset_is_the_first_sample_within_40_db_of_the_peak():
    samples = np.zeros(16000, np.float32)
    samples[4000] = 0.005  # 46 dB below the peak: not yet speech
    samples[8000:8010] = 1.0
    samples[6000] = 0.02
    assert speech_onset(samples, 16000) == 6000 / 16000
    assert math.isnan(speech_onset(np.zeros(100, np.float32), 16000))


def test_a_stream_side_takes_one_chunk_per_call_and_begins_again_after_the_last(monkeypatch):
    started = []

    def start():
        started.append(len(started))
        return lambda chunk: {"encoder": np.full((1, 4, 1), chunk, np.float32)}

    class Tokens:  # stands in for NeMo's streaming decoding: one token per frame seen
        def __init__(self, model):
            self.tokens = []

        def add(self, frames):
            self.tokens += [0] * frames.shape[-1]

    monkeypatch.setattr("validation.timing.StreamDecoder", Tokens)
    side = StreamSide(None, [10, 11, 12], start)
    assert [int(side()[0, 0, 0]) for _ in range(3)] == [10, 11, 12]
    assert [(index, tokens) for index, _, tokens in side.timeline] == [(0, 1), (1, 2), (2, 3)]
    assert all(ms >= 0 for _, ms, _ in side.timeline)
    assert int(side()[0, 0, 0]) == 10  # the stream again, from empty caches and a new decoding
    assert started == [0, 1] and [(i, t) for i, _, t in side.timeline] == [(0, 1)]


def test_the_streaming_case_times_a_chunk_and_adds_its_stream_figures():
    report = LatencyReport({"model": "m"}, ENV, audio_seconds=15.0, runs=3, warmup=1)
    details = {"runs": 2, "model": "preset:s", "chunk_ms": 160,
               "time_to_first_token_ms": {"torch": 1.0, "backend": 2.0}}
    case = Case("encoder_streaming", "stream", {side: lambda: None for side in SIDES["stream"]}, audio_seconds=0.16,
                details=lambda: details)
    report.add(case, "backend", [32.0, 32.0], [16.0, 16.0])
    block = report.block()
    entry = block["streaming"]["encoder_streaming"]
    assert entry["rtf"] == {"torch": pytest.approx(0.1), "backend": pytest.approx(0.2)}  # over the chunk's 160 ms
    assert entry["runs"] == 2 and entry["time_to_first_token_ms"] == {"torch": 1.0, "backend": 2.0}
    assert flagged(block) == []
    assert "streaming" not in LatencyReport({"model": "m"}, ENV, 15.0, 3, 1).block()


def test_wide_spread_and_a_busy_host_are_flagged_in_the_block():
    report = LatencyReport({"model": "m"}, ENV, audio_seconds=10.0, runs=4, warmup=0)
    steady, noisy = _case("decoder", "component"), _case("joint", "component")
    report.add(steady, "torch", [10.0, 10.1, 9.9, 10.0], [5.0, 5.05, 4.95, 5.0], loads=(1.0, 1.5))
    report.add(noisy, "torch", [10.0, 10.0, 10.0, 10.0], [5.0, 8.0, 4.0, 5.0], loads=(2.5,))  # 2 CPUs
    block = report.block()
    assert block["components"]["decoder"]["flags"] == []
    assert block["components"]["decoder"]["load_average"] == 1.5
    assert block["components"]["joint"]["flags"] == ["wide spread: backend CV 31% > 10%",
                                                     "busy host: load average 2.5 > 2 CPUs"]
    assert flagged(block) == ["joint: wide spread: backend CV 31% > 10%; busy host: load average 2.5 > 2 CPUs"]


@pytest.mark.latency
def test_suite_extends_benchmark_json_and_writes_metadata_and_plots(tmp_path, model_source, export_cache):
    """A real run of two latency benchmarks: pytest-benchmark's JSON keeps its own keys and gains
    the latency block, metadata.json gets it too, and the plots are drawn."""
    bench, report = tmp_path / "bench.json", tmp_path / "report"
    # pytest-benchmark turns itself off in a process that inherits an xdist worker's variables
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/latency/test_latency.py", "-k",
         "test_latency and decoder- or test_streaming_latency and backend",
         "-p", "no:cacheprovider", "--latency-rounds", "2", "--latency-warmup", "0", "--benchmark-json", str(bench),
         "--report-dir", str(report), "--cache-dir", str(export_cache.root), *model_source.cli_args(), "-q"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=600, check=False, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(bench.read_text())
    assert {b["name"] for b in data["benchmarks"]} == {"test_latency[decoder-torch]", "test_latency[decoder-backend]",
                                                        "test_streaming_latency[backend]"}
    assert {"machine_info", "commit_info", "benchmarks", "version"} <= set(data)
    assert data["machine_info"]["parakeet_coreml"]["backend"] == "mil"
    decoder = data["parakeet_coreml"]["latency"]["components"]["decoder"]
    # two benchmarks of two rounds, each with the other side between its rounds: four pairs
    assert decoder["backend_ms"]["rounds"] == decoder["paired_rounds"] == 4 and decoder["first_call_ms"] > 0
    assert decoder["speedup_ci95"][0] <= decoder["speedup"] <= decoder["speedup_ci95"][1]
    metadata = read_metadata(report)
    assert metadata["latency"]["components"]["decoder"] == decoder
    assert "not Core ML" in metadata["latency"]["values_from"]
    stream = metadata["latency"]["streaming"]["encoder_streaming"]
    # one pass over the stream's chunks, each paired with NeMo's streaming of the same chunk
    assert stream["backend_ms"]["rounds"] == stream["paired_rounds"] == stream["chunks"] == stream["runs"] > 100
    assert stream["chunk_ms"] == 160 and len(stream["per_chunk_ms"]["backend"]) == stream["chunks"]
    assert stream["rtf"]["backend"] == pytest.approx(stream["backend_ms"]["median"] / 160)
    # both sides decode a first token, after the speech has started (how long after is timing: recorded)
    assert all(stream["time_to_first_token_ms"][side] > 0 for side in SIDES["stream"]), stream
    plots = {p.name for p in (report / "plots" / "compare-components").iterdir()}
    assert {"latency_summary.png", "latency_speedup.png", "latency_streaming_encoder_streaming.png"} <= plots
    assert "latency report: latency block in" in done.stdout


def test_benchmark_only_deselects_the_tests_without_a_benchmark():
    """So its summary holds one count, not a skip line per file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--benchmark-only", "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests/unit/test_readme.py", "tests/latency/test_latency.py"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300, check=False, env=env)
    collected = [line for line in done.stdout.splitlines() if "::" in line]
    assert collected and all(line.startswith("tests/latency/test_latency.py::") for line in collected), done.stdout
    assert not any("test_coreml_compile_time_and_placement" in line for line in collected), done.stdout  # no benchmark
    assert "deselected" in done.stdout and "Skipping non-benchmark" not in done.stdout


def test_flagged_cases_are_named_by_their_case_id():
    """The component joint_decision and the fused pair joint_decision are two cases."""
    report = LatencyReport({"model": "m"}, ENV, audio_seconds=10.0, runs=4, warmup=0)
    noisy = [10.0, 20.0, 10.0, 20.0]
    report.add(_case("joint_decision", "component"), "torch", noisy, [5.0] * 4)
    report.add(_case("joint_decision", "fused"), "fused", noisy, [5.0] * 4)
    assert [line.split(":")[0] for line in flagged(report.block())] == ["joint_decision", "fused"]
    assert flagged(report.block())[1].startswith("fused:joint_decision: wide spread: fused CV")


def test_the_blas_threads_spin_briefly_in_the_command_and_the_suite():
    """Set by ``cli`` before numpy loads (later, OpenBLAS would not read it): the conftest imports
    it first, so the suite's timings get it too."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    done = subprocess.run([sys.executable, "-c", "import sys, os, cli; assert 'numpy' not in sys.modules; "
                           "print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"],
                          cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "4", done.stderr
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "4"


def test_the_streaming_packages_are_left_to_the_stream_case():
    """compare times the offline cases on the clip; the streaming packages take chunks and caches,
    not the clip (timing a convert directory with them used to end in a KeyError)."""
    packages = {name: Path(f"{name}.mlpackage") for name in ("encoder_streaming_first", "encoder_streaming_state")}
    assert all_cases(None, None, packages, None, None, None) == []


def test_a_case_line_names_its_numbers_and_says_when_medians_and_pairs_disagree():
    """``encoder: torch 189 ms, backend 170 ms; speedup 0.74x`` read as a contradiction: the
    medians say the export is faster, the paired figure says slower."""
    case = Case("encoder", "component", {})
    entry = {"torch_ms": {"median": 189.0}, "backend_ms": {"median": 170.0}, "speedup": 0.74,
             "speedup_ci95": [0.4, 1.3], "paired_rounds": 3, "flags": []}
    line = describe_entry(case, entry)
    assert line.startswith("encoder: median torch 189 ms, backend 170 ms; paired speedup 0.74x [95% CI 0.40-1.30] "
                           "(geometric mean of torch/backend over 3 rounds timed side by side)")
    assert line.endswith("the medians and the pairs point different ways: the rounds vary too much to tell, "
                         "read the CI")
    agreeing = describe_entry(case, {**entry, "speedup": 1.1, "speedup_ci95": [1.05, 1.15]})
    assert "different ways" not in agreeing
