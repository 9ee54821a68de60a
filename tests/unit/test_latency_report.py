"""The latency block: sides paired into entries, speedups and real-time factors from the medians,
and pytest-benchmark's JSON extended, not replaced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reports.latency import LatencyReport
from validation.timing import SIDES, Case, summary

ENV = {"backend": "mil", "values_from": "executor", "compute_units": "ALL", "compute_precision": "float16",
       "host": {"os": "Linux", "machine": "x86_64", "cpus": 2}, "threads": {"torch": 2}, "versions": {}}


def _case(name, kind):
    return Case(name, kind, {side: lambda: None for side in SIDES[kind]})


def test_summary_of_samples():
    assert summary([1.0, 2.0, 6.0]) == {"mean": 3.0, "std": pytest.approx(2.6457513), "median": 2.0, "min": 1.0,
                                        "rounds": 3}


def test_entries_pair_both_sides_and_derive_speedup_and_rtf():
    report = LatencyReport({"model": "m"}, ENV, audio_seconds=10.0, runs=3, warmup=1)
    encoder, fused = _case("encoder", "component"), _case("mel_encoder", "fused")
    report.add(encoder, "torch", [100.0, 110.0, 90.0])
    report.add(encoder, "backend", [20.0, 25.0, 30.0], {"load_ms": 5.0, "first_call_ms": 40.0})
    report.add(fused, "separate", [30.0, 30.0, 30.0])
    report.add(fused, "fused", [20.0, 20.0, 20.0])
    report.add(_case("greedy_tdt", "end_to_end"), "torch", [1.0])  # one side only: not in the block
    block = report.block()
    entry = block["components"]["encoder"]
    assert entry["torch_ms"]["median"] == 100.0 and entry["backend_ms"]["median"] == 25.0
    assert entry["speedup"] == 4.0
    assert entry["rtf"] == {"torch": 0.01, "backend": 0.0025}
    assert (entry["runs"], entry["warmup"], entry["load_ms"], entry["first_call_ms"]) == (3, 1, 5.0, 40.0)
    assert block["fused"]["mel_encoder"]["speedup"] == 1.5 and "rtf" not in block["fused"]["mel_encoder"]
    assert block["end_to_end"] == {} and block["backend"] == "mil" and block["audio_seconds"] == 10.0


@pytest.mark.latency
def test_suite_extends_benchmark_json_and_writes_metadata_and_plots(tmp_path, model_source, export_cache):
    """A real run of two latency benchmarks: pytest-benchmark's JSON keeps its own keys and gains
    the latency block, metadata.json gets it too, and the plots are drawn."""
    bench, report = tmp_path / "bench.json", tmp_path / "report"
    # pytest-benchmark turns itself off in a process that inherits an xdist worker's variables
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/latency/test_latency.py", "-k", "test_latency and decoder-",
         "-p", "no:cacheprovider", "--latency-rounds", "2", "--latency-warmup", "0", "--benchmark-json", str(bench),
         "--report-dir", str(report), "--cache-dir", str(export_cache.root), *model_source.cli_args(), "-q"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=600, check=False, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(bench.read_text())
    assert {b["name"] for b in data["benchmarks"]} == {"test_latency[decoder-torch]", "test_latency[decoder-backend]"}
    assert {"machine_info", "commit_info", "benchmarks", "version"} <= set(data)
    assert data["machine_info"]["parakeet_coreml"]["backend"] == "mil"
    decoder = data["parakeet_coreml"]["latency"]["components"]["decoder"]
    assert decoder["backend_ms"]["rounds"] == 2 and decoder["first_call_ms"] > 0
    metadata = json.loads((report / "metadata.json").read_text())
    assert metadata["latency"]["components"]["decoder"] == decoder
    assert "not Core ML" in metadata["latency"]["values_from"]
    plots = {p.name for p in (report / "plots" / "compare-components").iterdir()}
    assert {"latency_summary.png", "latency_speedup.png"} <= plots
    assert "latency report: latency block in" in done.stdout
