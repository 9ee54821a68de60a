"""Cold and warm export of every component, timed with pytest-benchmark.

Runs the ``convert`` command in a child process so its peak memory is the export's own
(``ru_maxrss`` of the children). Targets on a 2-core machine for the full-size preset:
cold <= 3 min at <= 8 GB peak, warm <= 10 s. Times are recorded, not asserted; the memory
bound is asserted because it does not depend on a noisy clock.

    pytest -m slow tests/export --preset parakeet-tdt-0.6b-v3 --benchmark-json export.json
"""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

PEAK_MEMORY_LIMIT_BYTES = 8e9
RU_MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB


def _component_lines(log: str) -> list[str]:
    """convert's line per component: ``[i/n] name: converted in ...`` or ``[i/n] name: cached, ...``."""
    return [line for line in log.splitlines() if line.startswith("[") and "/" in line.split("]")[0]]


def _convert(model_source, cache_dir, out):
    done = subprocess.run([sys.executable, "-m", "cli.main", "convert", *model_source.cli_args(),
                           "--output-dir", str(out), "--cache-dir", str(cache_dir)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("export-cache")


@pytest.mark.slow
def test_cold_export(benchmark, model_source, dims, fresh_cache, tmp_path):
    log = benchmark.pedantic(_convert, args=(model_source, fresh_cache, tmp_path / "out"), rounds=1, iterations=1)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * RU_MAXRSS_BYTES
    benchmark.extra_info.update(model=model_source.describe(), peak_rss_bytes=peak)
    lines = _component_lines(log)
    assert len(lines) == len(dims.family.components()) and all(": converted in " in line for line in lines), log
    assert peak <= PEAK_MEMORY_LIMIT_BYTES, f"cold export peaked at {peak / 1e9:.2f} GB"


@pytest.mark.slow
def test_warm_export(benchmark, model_source, dims, fresh_cache, tmp_path):
    _convert(model_source, fresh_cache, tmp_path / "fill")  # a no-op after the cold test
    log = benchmark.pedantic(_convert, args=(model_source, fresh_cache, tmp_path / "out"), rounds=1, iterations=1)
    benchmark.extra_info.update(model=model_source.describe())
    lines = _component_lines(log)
    assert len(lines) == len(dims.family.components()) and all(": cached, " in line for line in lines), log
    assert "loading" not in log
