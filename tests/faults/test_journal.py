"""The evaluation journal under faults: a resume killed at any point leaves the old journal or the
new one, never a truncated one; records are kept only while what determined them is unchanged;
lines that are not records are reported and recomputed; two runs never write one journal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from infra.errors import UserError
from validation.journal import JOURNAL, Journal, fingerprint, package_identity, read_journal

ROOT = Path(__file__).resolve().parents[2]
RECORDS = [{"key": f"set.jsonl:{i}", "fingerprint": f"f{i}", "transcripts": {"export": "x" * 200}}
           for i in range(1, 51)]
PRINTS = {r["key"]: r["fingerprint"] for r in RECORDS}


def _journal(tmp_path, records=RECORDS) -> Path:
    path = tmp_path / JOURNAL
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _resume_process(path: Path, prints: dict, fault: str) -> subprocess.CompletedProcess:
    script = ("import json, sys; from validation.journal import Journal\n"
              "with Journal(sys.argv[1]) as j: j.start(json.loads(sys.argv[2]), resume=True)\n")
    env = {**os.environ, "PARAKEET_COREML_FAULT": fault}
    return subprocess.run([sys.executable, "-c", script, str(path), json.dumps(prints)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("point, action", [(1, "kill"), (2, "kill"), (3, "kill"), (1, "term"), (2, "term")])
def test_a_resume_killed_at_any_point_leaves_a_whole_journal(tmp_path, point, action):
    """Points: before the rewrite, with the new journal written beside the old one, after the rename."""
    path = _journal(tmp_path)
    before = path.read_text()
    prints = {**PRINTS, "set.jsonl:2": "changed"}  # the resume drops one record: old and new journals differ
    done = _resume_process(path, prints, f"journal:{point}:{action}")
    assert done.returncode == -{"kill": signal.SIGKILL, "term": signal.SIGTERM}[action], done.stderr
    after = path.read_text()
    kept = "".join(json.dumps(r) + "\n" for r in RECORDS if r["key"] != "set.jsonl:2")
    assert after == (kept if point == 3 else before)
    with Journal(path) as journal:  # the next run removes what the killed one left beside the journal
        assert sorted(journal.start(prints, resume=True).records) == sorted(set(PRINTS) - {"set.jsonl:2"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{JOURNAL}.lock", JOURNAL]


def test_resume_keeps_only_records_whose_fingerprint_is_unchanged(tmp_path):
    path = _journal(tmp_path)
    prints = {**PRINTS, "set.jsonl:2": "changed", "set.jsonl:51": "new"}
    del prints["set.jsonl:3"]  # no longer in the manifest
    with Journal(path) as journal:
        found = journal.start(prints, resume=True)
    assert found.stale == ["set.jsonl:2"]
    assert sorted(found.records) == sorted(set(PRINTS) - {"set.jsonl:2", "set.jsonl:3"})
    assert any("recomputing 1 utterance(s) of evaluation.jsonl whose audio, reference text, packages or settings "
               "changed" in line for line in found.summary(JOURNAL))
    assert [r["key"] for r in read_journal(path)[0]] == list(found.records)


def test_lines_that_are_not_records_are_reported_and_the_rest_resumed(tmp_path):
    path = tmp_path / JOURNAL
    good = [json.dumps(r).encode() for r in RECORDS[:2]]
    path.write_bytes(b"\n".join([good[0], b"{}", b"\xff\xfe\x00garbage", b"[1, 2]", good[1], good[1][:30]]))
    with Journal(path) as journal:
        found = journal.start(PRINTS, resume=True)
    assert sorted(found.records) == ["set.jsonl:1", "set.jsonl:2"]
    assert found.unreadable == [f"{JOURNAL}:2: no key", f"{JOURNAL}:3: UnicodeDecodeError", f"{JOURNAL}:4: no key",
                                f"{JOURNAL}:6: JSONDecodeError"]
    assert f"skipped {JOURNAL}:3: UnicodeDecodeError: not a record, recomputed" in found.summary(JOURNAL)


def test_a_run_without_resume_says_what_it_replaced(tmp_path):
    path = _journal(tmp_path)
    with Journal(path) as journal:
        found = journal.start(PRINTS, resume=False)
    assert found.records == {} and path.read_text() == ""
    assert found.summary(JOURNAL) == [f"replaced {JOURNAL}: its 50 earlier record(s) are gone (--resume keeps them)"]


def test_a_second_run_on_the_same_journal_is_refused(tmp_path):
    path = _journal(tmp_path)
    with FileLock(str(tmp_path / f".{JOURNAL}.lock")):
        with pytest.raises(UserError, match="another evaluation is writing this journal"):
            with Journal(path):
                pass
    assert path.read_text().count("\n") == 50


def test_the_journal_follows_the_umask(tmp_path):
    path = _journal(tmp_path)
    old = os.umask(0o022)
    try:
        with Journal(path) as journal:
            journal.start(PRINTS, resume=True)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_the_fingerprint_changes_with_the_audio_the_text_and_the_settings(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x" * 10)
    base = fingerprint(audio, 0.0, None, "hello", {"normalizer": "none"})
    assert base == fingerprint(audio, 0.0, None, "hello", {"normalizer": "none"})
    assert base != fingerprint(audio, 0.0, None, "hullo", {"normalizer": "none"})
    assert base != fingerprint(audio, 1.0, None, "hello", {"normalizer": "none"})
    assert base != fingerprint(audio, 0.0, None, "hello", {"normalizer": "whisper-english"})
    audio.write_bytes(b"y" * 11)
    assert base != fingerprint(audio, 0.0, None, "hello", {"normalizer": "none"})
    package = tmp_path / "p.mlpackage"
    (package / "Data").mkdir(parents=True)
    (package / "Data" / "weight.bin").write_bytes(b"1")
    first = package_identity(package)
    os.utime(package / "Data" / "weight.bin", ns=(1, 1))
    assert package_identity(package) == first  # a small file rewritten unchanged (coremltools' Manifest.json)
    (package / "Data" / "weight.bin").write_bytes(b"2")
    assert package_identity(package) != first
