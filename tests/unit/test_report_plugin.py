"""The pytest plugin's folders: a suite run leaves the command's folders alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reports.kinds import (
    KINDS,
    BadLine,
    EvaluationContext,
    HeldOut,
    LongAudio,
    NeuralEnginePlacement,
    ParityContext,
    ParityRun,
    QuantizationContext,
    StreamingContext,
    StreamingRun,
    UtteranceRecord,
    VariantReport,
    received,
)
from runtimes.coreml import unavailable_reason

ROOT = Path(__file__).resolve().parents[2]

SENDING_TEST = textwrap.dedent("""
    from reports.kinds import LongAudio
    from reports.plugin import send

    def test_sends_a_long_audio_block(pytestconfig):
        description = {"model": "preset:tiny", "model_source": {"content_sha256": "abc"}}
        send(pytestconfig, LongAudio(description, {"builtin:seams": {"normalizer": "english"}}))
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


def test_every_kind_survives_the_trip_through_a_test_report():
    """As xdist carries it: JSON out of the worker, the same object back in the controller."""
    examples = {ParityContext: ({"model": "m"}, {"backend": "mil"}, "float16", "speech"),
                ParityRun: ("float32", {"clip": {"name": "speech"}}), HeldOut: ({"wer": {}},),
                QuantizationContext: ("mil", "executor", "ALL", "float16", "m", "speech", 3, 3),
                VariantReport: ("int8", {"components": {}}, {"encoder": "/p"}),
                EvaluationContext: ("mil", "executor", "ALL", "float16", {"model": "m"}, "builtin:held-out",
                                    "builtin:held-out", "none", 0.5, {"torch": "2.13.0"}, {"strategy": "midpoint"}),
                UtteranceRecord: ({"key": "set.jsonl:1"},), LongAudio: ({"model": "m"}, {"builtin:seams": {}}),
                StreamingContext: ({"model": "m"}, {"clip": "speech"}), StreamingRun: ("float16", {"failures": []}),
                NeuralEnginePlacement: ({"model": "m"}, {"joint": {"chip": "A17", "ops": []}})}
    assert set(examples) | {BadLine} == set(KINDS.values())
    given = QuantizationContext("mil", "executor", "ALL", "float16", "m", "speech", 3, 3, {"encoder": "/p"})
    streamed = EvaluationContext("mil", "executor", "ALL", "float16", {"model": "m"}, "2 recording(s)", None, "none",
                                 0.5, {"torch": "2.13.0"}, streaming={"chunk_ms": 560}, audio=["a.wav", "b.wav"])
    for sent in [cls(*fields) for cls, fields in examples.items()] + [given, streamed]:
        assert received(sent.kind, json.loads(json.dumps(sent.as_dict()))) == sent


def test_an_evaluation_block_says_how_its_audio_was_cut_or_streamed_and_nothing_else():
    windowed = EvaluationContext.of("mil", "ALL", "float16", description={"model": "m"}, set="s", manifest="s",
                                    normalizer="none", max_wer_difference_points=0.5, versions={},
                                    windows={"strategy": "midpoint"})
    assert windowed.values_from == "this project's MIL executor (runtimes/mil), not Core ML"
    context = windowed.block_context()
    assert context["windows"] == {"strategy": "midpoint"}
    assert not {"compared", "streaming", "description", "normalizer", "max_wer_difference_points"} & set(context)


def test_a_bad_line_keeps_a_reason_and_a_place_that_hold_colons():
    """The plugin split "where: reason" at its first ": ", so a file named with one lost half of it."""
    bad = BadLine("recordings/take 2: the bridge.wav", "UnicodeDecodeError: not audio")
    assert received(bad.kind, json.loads(json.dumps(bad.as_dict()))) == bad


def test_an_unknown_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown report kind 'parity_summary'"):
        received("parity_summary", {})
