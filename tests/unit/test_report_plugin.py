"""The pytest plugin's folders: a suite run leaves the command's folders alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtimes.coreml import unavailable_reason

ROOT = Path(__file__).resolve().parents[2]

SENDING_TEST = textwrap.dedent("""
    from reports.plugin import send

    def test_sends_a_long_audio_block(pytestconfig):
        description = {"model": "preset:tiny", "model_source": {"content_sha256": "abc"}}
        send(pytestconfig, "long_audio", {"description": description,
                                          "sets": {"builtin:seams": {"normalizer": "english"}}})
""")


def test_a_suite_writes_its_reports_into_its_own_folder_not_the_commands(tmp_path):
    """Run where a user converted and quantized (their ``parakeet_coreml/`` and
    ``parakeet_coreml_quantized/`` beside), a session's report goes to ``test-report/`` and their
    files stay byte for byte."""
    theirs = {tmp_path / "parakeet_coreml" / "metadata.json": '{"model": "theirs"}\n',
              tmp_path / "parakeet_coreml_quantized" / "quantization_summary.json": '{"variants": {}}\n'}
    for path, text in theirs.items():
        path.parent.mkdir()
        path.write_text(text)
    (tmp_path / "test_sending.py").write_text(SENDING_TEST)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "reports.plugin", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), "-c", os.devnull, "test_sending.py", "-q"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for path, text in theirs.items():
        assert path.read_text() == text
    written = json.loads((tmp_path / "test-report" / "metadata.json").read_text())
    assert written["long_audio"] == {"builtin:seams": {"normalizer": "english"}}
    assert "long-audio report: long_audio block in test-report/metadata.json" in done.stdout


def test_the_quantized_folder_follows_the_report_folder(pytestconfig):
    """Unless given, the quantization suite's variants go inside ``--report-dir``."""
    assert pytestconfig.option.quantized_dir == pytestconfig.option.report_dir / "quantized"


def test_backend_coreml_where_core_ml_cannot_run_is_refused_before_any_test(tmp_path):
    """Every parity, latency and quantization test skipped and pytest exited 0; the command
    refuses the same option with its reason."""
    reason = unavailable_reason()
    if reason is None:
        pytest.skip("Core ML runs here: --backend coreml is valid")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    done = subprocess.run([sys.executable, "-m", "pytest", "--backend", "coreml", "tests/unit/test_contract.py",
                           "-p", "no:cacheprovider", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False, env=env)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"--backend coreml: {reason}; use --backend mil" in done.stderr
