"""``pytest --manifest``: the evaluation block is gathered from the tests' reports, so a run
spread over workers (``-n 2``) writes the same block as a run in one process; a set whose gate
fails (here: a line that cannot be read) fails its gate's test, with the reason, in both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reports.metadata import read_metadata
from validation.held_out import held_out_manifest

pytestmark = pytest.mark.parity
ROOT = Path(__file__).resolve().parents[2]


def _pytest(manifest, report, export_cache, model_source, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env["COLUMNS"] = "1000"  # the short summary's lines whole, with their reasons
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/parity/test_evaluation.py", "-p", "no:cacheprovider", "-q",
         f"--manifest={manifest}", f"--report-dir={report}", f"--cache-dir={export_cache.root}",
         *model_source.cli_args(), *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def _block(report):
    block = read_metadata(report)["evaluation"]
    block.pop("seconds_per_audio_minute")  # timings differ from run to run
    return block


def test_the_block_is_the_same_with_and_without_workers(tmp_path, export_cache, dims, model_source):
    held_out = held_out_manifest(export_cache, dims)
    rows = [json.loads(line) for line in held_out.read_text().splitlines()[:6]]
    for row in rows:
        row["audio_filepath"] = str(held_out.parent / row["audio_filepath"])
    manifest = tmp_path / "set.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{oops\n")
    alone = _pytest(manifest, tmp_path / "alone", export_cache, model_source)
    spread = _pytest(manifest, tmp_path / "spread", export_cache, model_source, "-n", "2")
    for done in (alone, spread):
        assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
        assert "6 passed" in done.stdout and "2 failed" in done.stdout, done.stdout[-3000:]
        # the unreadable line fails its own test, and is among the gate's failures (a seeded
        # full-size model fails others too)
        failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED ")]
        assert any("test_utterance[" in line and "set.jsonl:7" in line for line in failed), failed
        gate = [line for line in failed if "test_the_set_meets_its_wer_gate" in line]
        assert gate and "the set of 6 utterance(s) fails its gate: " in gate[0], failed
        assert "1 input(s) could not be evaluated: set.jsonl:7" in gate[0], gate
        summary = [line for line in done.stdout.splitlines() if "evaluation of 6 utterance(s) FAILED: " in line]
        assert summary, done.stdout[-3000:]
    assert _block(tmp_path / "alone") == _block(tmp_path / "spread")
    assert _block(tmp_path / "alone")["utterances"] == 6
