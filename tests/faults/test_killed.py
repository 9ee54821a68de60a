"""A run killed inside an export (SIGKILL) or told to stop (SIGTERM) leaves nothing that lasts:
SIGTERM cleans up as Ctrl-C does and says so; after SIGKILL, the next run removes what the dead
one left. Temporary files of coremltools and NeMo go to the cache's scratch, never to TMPDIR."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import soundfile

import validation.evaluation as evaluation
from cli.main import main
from tests.faults.conftest import convert_process, leftovers


def _cache_tmp(cache):
    return sorted(p.name for p in (cache / "tmp").iterdir()) if (cache / "tmp").is_dir() else []


@pytest.fixture
def places(tmp_path):
    (tmp_path / "tmpdir").mkdir()
    return tmp_path / "cache", tmp_path / "out", tmp_path / "tmpdir"


def test_sigterm_inside_an_export_cleans_up_and_says_so(places):
    cache, out, tmpdir = places
    done = convert_process(cache, out, "export:1:term", tmpdir)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "parakeet-coreml convert: terminated; nothing was written"
    assert not out.exists() and leftovers(out.parent) == []
    assert _cache_tmp(cache) == [], "the export's temporary directory and the scratch are removed"
    assert list(tmpdir.iterdir()) == []


def test_sigkill_inside_an_export_leaves_what_the_next_run_removes(places):
    cache, out, tmpdir = places
    done = convert_process(cache, out, "export:1:kill", tmpdir)
    assert done.returncode == -signal.SIGKILL
    assert list(tmpdir.iterdir()) == [], "coremltools' and NeMo's temporary files went to the cache's scratch"
    assert leftovers(out.parent), "the killed run's staging directory is still there"
    assert _cache_tmp(cache), "and so are its temporary directories in the cache"
    done = convert_process(cache, out, None, tmpdir)
    assert done.returncode == 0, done.stderr
    assert leftovers(out.parent) == []
    assert _cache_tmp(cache) == []
    assert list(tmpdir.iterdir()) == []


def test_an_interrupted_evaluation_keeps_what_it_did_and_says_so(fault_cache, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the middle of ``evaluate``: the journal keeps the utterances done, and the
    message says so rather than claiming nothing was written."""
    out = tmp_path / "out"
    assert main(["convert", "--preset", "tiny", "--components", "mel_encoder,decoder,joint_decision_single_step",
                 "--output-dir", str(out), "--cache-dir", str(fault_cache)]) == 0
    for name in ("a", "b"):
        soundfile.write(str(tmp_path / f"{name}.wav"), np.zeros(8000, np.float32), 16000, subtype="FLOAT")
    real, calls = evaluation.evaluate_utterance, []

    def second_is_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_utterance", second_is_interrupted)
    code = main(["evaluate", "--output-dir", str(out), "--cache-dir", str(fault_cache), "--backend", "mil",
                 "--audio", str(tmp_path / "a.wav"), str(tmp_path / "b.wav")])
    assert code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "parakeet-coreml evaluate: interrupted; the utterances done are in evaluation.jsonl (--resume continues)")
    assert len((out / "evaluation.jsonl").read_text().splitlines()) == 1
