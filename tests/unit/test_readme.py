"""The README's two commands are the ones CI and the macOS workflow run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands():
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)][:2]


def test_readme_opens_with_setup_and_test_commands():
    setup, tests = _readme_commands()
    assert "pip install" in setup and "parakeet-coreml convert --preset" in setup
    assert "pytest" in tests
    readme = (ROOT / "README.md").read_text()
    assert readme.index(setup) < readme.index("## ")  # before any section


def test_macos_workflow_runs_the_readme_commands():
    """The setup command as written; the test command twice, split by marker: parity first, then
    everything else with the benchmarks' JSON (so together exactly what the README's runs)."""
    workflow = (ROOT / ".github" / "workflows" / "macos.yml").read_text()
    runs = [line.split("run:", 1)[1].strip() for line in workflow.splitlines() if line.strip().startswith("run:")]
    setup, tests = _readme_commands()
    pytest_runs = [r for r in runs if "pytest" in r and not r.startswith("echo")]
    assert runs[:2] == ["brew install espeak-ng", setup]
    assert pytest_runs == [f"{tests} -m parity",
                           f'{tests} -m "not parity and not slow" --benchmark-json=benchmark.json $BENCHMARK_ARGS']
    assert "macos-14" in workflow  # arm64 runners


def test_macos_workflow_keeps_the_reports_and_compares_benchmarks_with_main():
    workflow = (ROOT / ".github" / "workflows" / "macos.yml").read_text()
    for kept in ("test-report/metadata.json", "test-report/quantized/quantization_summary.json",
                 "test-report/plots/", "benchmark.json"):
        assert kept in workflow
    assert "--benchmark-compare --benchmark-compare-fail=$BENCHMARK_FAIL" in workflow
    assert "--benchmark-save=main" in workflow and 'BENCHMARK_FAIL: "median:25%"' in workflow


def test_ci_runs_the_readme_commands_and_lints_the_workflows():
    script = (ROOT / ".ci" / "run").read_text()
    assert "readme_command 0" in script and "readme_command 1" in script
    assert "apt-get install -y -qq espeak-ng" in script
    assert ".venv/bin/actionlint .github/workflows/*.yml" in script
    assert ".venv/bin/zizmor --offline .github/workflows" in script


def test_readme_names_the_espeak_ng_install_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert "apt-get install espeak-ng" in readme and "brew install espeak-ng" in readme
