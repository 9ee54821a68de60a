"""The ``evaluate`` command on a convert directory of the trained model: a manifest with bad lines
among good ones, ``--resume`` after a killed run, recordings without text, long audio cut into
windows, and input refused before any model loads."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from filelock import FileLock

from cli.main import main
from exporters.components import DECODE
from reports.metadata import read_metadata
from validation.held_out import held_out_manifest
from validation.journal import JOURNAL

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def converted(session_exporters, model_source, export_cache, tmp_path_factory):
    session_exporters["float16"].export_all(DECODE)  # into the session's cache, so convert only copies
    out = tmp_path_factory.mktemp("evaluate") / "parakeet_coreml"
    assert main(["convert", *model_source.cli_args(), "--output-dir", str(out), "--cache-dir", str(export_cache.root),
                 "--components", *DECODE]) == 0
    return out


@pytest.fixture(scope="module")
def held_out_rows(export_cache, dims):
    manifest = held_out_manifest(export_cache, dims)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()[:4]]
    for row in rows:
        row["audio_filepath"] = str(manifest.parent / row["audio_filepath"])
    return rows


def _evaluate(out, export_cache, *args):
    return main(["evaluate", "--output-dir", str(out), "--cache-dir", str(export_cache.root), "--backend", "mil",
                 *args])


def test_bad_lines_are_reported_the_rest_evaluated_and_the_exit_is_non_zero(converted, export_cache, held_out_rows,
                                                                            tmp_path, capsys):
    manifest = tmp_path / "set.jsonl"
    lines = [json.dumps(r) for r in held_out_rows] + ["{oops", json.dumps({"audio_filepath": "gone.wav"})]
    manifest.write_text("\n".join(lines) + "\n")
    report = tmp_path / "report"
    code = _evaluate(converted, export_cache, "--manifest", str(manifest), "--report-dir", str(report))
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "skipped set.jsonl:5: not JSON" in captured.err
    assert "FAILED 2 input(s) could not be evaluated" in captured.err and "set.jsonl:6:" in captured.err
    assert "evaluation (tdt) failed: 4 utterance(s), 2 unreadable" in captured.out
    records = [json.loads(line) for line in (report / JOURNAL).read_text().splitlines()]
    assert [r["key"] for r in records] == [f"set.jsonl:{i}" for i in range(1, 5)]
    block = read_metadata(report)["evaluation"]
    assert block["utterances"] == 4 and block["with_text"] == 4 and len(block["unreadable"]) == 2
    assert set(block["wer"]) == {"nemo_full", "nemo_windowed", "export"} and block["normalizer"] == "whisper-english"
    assert abs(block["decomposition_points"]["export"]["export"]) <= 0.5
    assert sorted(p.name for p in (report / "plots" / "evaluation").iterdir()) == [
        "wer_decomposition.png", "wer_differences.png", "wer_scatter.png"]


def test_resume_continues_a_killed_run_from_its_journal(converted, export_cache, held_out_rows, tmp_path, capsys):
    manifest = tmp_path / "set.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in held_out_rows))
    report = tmp_path / "report"
    assert _evaluate(converted, export_cache, "--manifest", str(manifest), "--report-dir", str(report)) == 0
    done = (report / JOURNAL).read_text().splitlines()
    marked = json.loads(done[0])
    marked["decode_seconds"]["export"] = 1234.0  # a value no run measures: kept only if not recomputed
    (report / JOURNAL).write_text(json.dumps(marked) + "\n" + done[1] + "\n" + done[2][: len(done[2]) // 2])
    assert _evaluate(converted, export_cache, "--manifest", str(manifest), "--report-dir", str(report),
                     "--resume") == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (report / JOURNAL).read_text().splitlines()]
    assert [r["key"] for r in records] == [f"set.jsonl:{i}" for i in range(1, 5)]
    assert records[0]["decode_seconds"]["export"] == 1234.0 and records[2]["decode_seconds"]["export"] < 1234.0


def test_resume_recomputes_what_changed_and_reports_lines_that_are_not_records(converted, export_cache,
                                                                              held_out_rows, tmp_path, capsys):
    """A record is kept only for the same audio, text and settings; a line that is not a record
    (``{}``, bytes that are not UTF-8) is reported and its utterance recomputed, not a crash."""
    manifest = tmp_path / "set.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in held_out_rows))
    report = tmp_path / "report"
    assert _evaluate(converted, export_cache, "--manifest", str(manifest), "--report-dir", str(report)) == 0
    lines = (report / JOURNAL).read_bytes().splitlines()
    (report / JOURNAL).write_bytes(b"\n".join([lines[0], b"{}", b"\xff\xfe garbage", lines[1], lines[3]]) + b"\n")
    rows = [*held_out_rows]
    rows[1] = {**rows[1], "text": rows[1]["text"] + " again"}  # a changed reference: its record is stale
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert _evaluate(converted, export_cache, "--manifest", str(manifest), "--report-dir", str(report),
                     "--resume") == 0
    err = capsys.readouterr().err
    assert "resumed 2 utterance(s) from evaluation.jsonl" in err
    assert "recomputing 1 utterance(s) of evaluation.jsonl whose audio, reference text" in err
    assert "skipped evaluation.jsonl:2: no key" in err and "skipped evaluation.jsonl:3: UnicodeDecodeError" in err
    records = [json.loads(line) for line in (report / JOURNAL).read_text().splitlines()]
    assert sorted(r["key"] for r in records) == [f"set.jsonl:{i}" for i in range(1, 5)]
    assert next(r for r in records if r["key"] == "set.jsonl:2")["reference"].endswith(" again")


def test_a_run_without_resume_says_it_replaced_the_journal_and_a_second_run_is_refused(converted, export_cache,
                                                                                       held_out_rows, tmp_path,
                                                                                       capsys):
    manifest = tmp_path / "set.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in held_out_rows[:2]))
    report = tmp_path / "report"
    assert _evaluate(converted, export_cache, "--manifest", str(manifest), "--report-dir", str(report)) == 0
    capsys.readouterr()
    assert _evaluate(converted, export_cache, "--manifest", str(manifest), "--report-dir", str(report)) == 0
    replaced = "replaced evaluation.jsonl: its 2 earlier record(s) are gone (--resume keeps them)"
    captured = capsys.readouterr()
    assert replaced in captured.err
    # the summary line says it too: the earlier evaluation block and journal are gone
    summary = captured.out.strip().splitlines()[-1]
    assert summary.startswith("evaluation (tdt) passed") and summary.endswith(
        "; replaced the earlier evaluation block, evaluation.jsonl (2 records; --resume keeps them)")
    with FileLock(str(report / f".{JOURNAL}.lock")):  # another evaluate writing it
        assert _evaluate(converted, export_cache, "--manifest", str(manifest), "--report-dir", str(report),
                         "--resume") == 2
    assert "another evaluation is writing this journal" in capsys.readouterr().err
    assert len((report / JOURNAL).read_text().splitlines()) == 2


def test_recordings_without_text_are_measured_for_agreement_only(converted, export_cache, held_out_rows, tmp_path,
                                                                  capsys):
    """A 40 s recording (held-out sentences joined) is cut into windows; silence is valid audio."""
    joined = np.concatenate([soundfile.read(r["audio_filepath"], dtype="float32")[0] for r in held_out_rows] * 3)
    joined = np.concatenate([joined, np.zeros(max(0, 40 * 16000 - joined.size), np.float32)])
    soundfile.write(str(tmp_path / "long.wav"), joined, 16000, subtype="FLOAT")
    soundfile.write(str(tmp_path / "silence.wav"), np.zeros(16000, np.float32), 16000, subtype="FLOAT")
    report = tmp_path / "report"
    code = _evaluate(converted, export_cache, "--audio", str(tmp_path / "long.wav"), str(tmp_path / "silence.wav"),
                     "--report-dir", str(report))
    assert code == 0, capsys.readouterr().err
    block = read_metadata(report)["evaluation"]
    assert block["with_text"] == 0 and block["wer"] == {} and block["decomposition_points"]["model"] is None
    assert block["agreement_with_nemo_windowed"]["export"]["words"] > 20
    records = {r["key"]: r for r in map(json.loads, (report / JOURNAL).read_text().splitlines())}
    assert records[str(tmp_path / "long.wav")]["windows"] == 3
    silence = records[str(tmp_path / "silence.wav")]["transcripts"]  # evaluated like any audio, not refused
    assert silence["export"] == silence["nemo_windowed"]


@pytest.mark.parametrize("content, message", [("\n", "empty; expected one JSON object per line"),
                                              ("{oops\n", "no line could be used (1 skipped, above)"),
                                              ('{"audio_filepath": "gone.wav"}\n{"audio_filepath": "."}\n',
                                               "no line could be used (2 skipped, above)")])
def test_a_manifest_with_nothing_to_evaluate_is_refused_before_any_model_loads(converted, export_cache, tmp_path,
                                                                              capsys, content, message):
    (tmp_path / "m.jsonl").write_text(content)
    code = _evaluate(converted, export_cache, "--manifest", str(tmp_path / "m.jsonl"))
    captured = capsys.readouterr()
    assert code == 2 and message in captured.err.strip().splitlines()[-1]
    assert "loading" not in captured.err
    assert "evaluation" not in read_metadata(converted)


def test_a_convert_directory_without_the_decode_packages_is_refused(converted, export_cache, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(converted, partial)
    meta = read_metadata(partial)
    del meta["components"]["decoder"]
    (partial / "metadata.json").write_text(json.dumps(meta))
    soundfile.write(str(tmp_path / "a.wav"), np.zeros(16000, np.float32), 16000)
    assert _evaluate(partial, export_cache, "--audio", str(tmp_path / "a.wav")) == 2
    assert "absent: decoder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def converted_streaming(streaming, export_cache, tmp_path_factory):
    """A convert directory of the streaming model at fp32: its streaming packages and the decode loop's."""
    exporter = streaming[0]["float32"]
    names = ["encoder_streaming_first", "encoder_streaming", "decoder", "joint_decision_single_step"]
    exporter.export_all(names)  # into the session's cache, so convert only copies
    out = tmp_path_factory.mktemp("evaluate-streaming") / "parakeet_coreml"
    assert main(["convert", *exporter.source.cli_args(), "--output-dir", str(out), "--cache-dir",
                 str(export_cache.root), "--compute-precision", "float32", "--components", *names]) == 0
    return out


def test_streaming_evaluation_takes_the_gap_apart_as_model_streaming_and_export(converted_streaming, export_cache,
                                                                                held_out_rows, tmp_path, capsys):
    manifest = tmp_path / "set.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in held_out_rows))
    report = tmp_path / "report"
    code = _evaluate(converted_streaming, export_cache, "--streaming", "--manifest", str(manifest), "--report-dir",
                     str(report))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "model " in captured.out and ", streaming " in captured.out and "windowing" not in captured.out
    block = read_metadata(report)["evaluation"]
    assert block["paths"] == {"model": "nemo_full", "reference": "nemo_streaming", "middle": "streaming"}
    assert set(block["wer"]) == {"nemo_full", "nemo_streaming", "export"}
    assert set(block["decomposition_points"]) == {"model", "streaming", "export"}
    # fp32 streaming packages of the confident streaming model: NeMo streaming's transcripts, word for word
    assert block["exact"] == ["export"] and block["identical_to_nemo_streaming"] == {"export": len(held_out_rows)}
    assert block["streaming"]["chunk_ms"] == 160 and "windows" not in block
    records = [json.loads(line) for line in (report / JOURNAL).read_text().splitlines()]
    assert all("windows" not in r and "nemo_streaming_vs_full" in r["agreement"] for r in records)
    plots = {p.name for p in (report / "plots" / "evaluation").iterdir()}
    assert plots == {"wer_scatter.png", "wer_differences.png", "wer_decomposition.png"}


def test_streaming_evaluation_needs_streaming_packages(converted, export_cache, tmp_path, capsys):
    soundfile.write(str(tmp_path / "any.wav"), np.zeros(16000, np.float32), 16000)
    code = _evaluate(converted, export_cache, "--streaming", "--audio", str(tmp_path / "any.wav"))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "--streaming: metadata.json records no streaming chunk" in last, last


def test_strategies_are_compared_side_by_side_on_nemo_and_the_export(converted, export_cache, held_out_rows, tmp_path,
                                                                     capsys):
    """A recording of over 15 s (four held-out sentences, three times) cut by two strategies: the first one gated,
    both in the block with NeMo's own buffered pipeline beside the buffered one, and plotted."""
    pieces = [soundfile.read(r["audio_filepath"], dtype="float32")[0] for r in held_out_rows] * 3
    soundfile.write(str(tmp_path / "long.wav"), np.concatenate(pieces), 16000, subtype="FLOAT")
    manifest = tmp_path / "set.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "long.wav",
                                    "text": " ".join([r["text"] for r in held_out_rows] * 3)}) + "\n")
    report = tmp_path / "report"
    code = _evaluate(converted, export_cache, "--manifest", str(manifest), "--strategy", "quiet-start", "--strategy",
                     "buffered", "--report-dir", str(report))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "strategy quiet-start: WER nemo_full " in captured.out and "strategy buffered: WER " in captured.out
    assert "nemo_pipeline" in captured.out.split("strategy buffered:")[1]
    block = read_metadata(report)["evaluation"]
    assert block["strategy"] == "quiet-start" and list(block["strategies"]) == ["quiet-start", "buffered"]
    assert block["set"] == str(manifest)
    assert block["windows"]["strategy"] == "quiet-start" and block["compared"]["buffered"]["chunk_s"] == 4.8
    assert set(block["strategies"]["buffered"]["wer"]) == {"nemo_full", "nemo_windowed", "nemo_pipeline", "export"}
    assert set(block["strategies"]["quiet-start"]["wer"]) == {"nemo_full", "nemo_windowed", "export"}
    assert set(block["seam_losses"]) == {"nemo_full", "nemo_windowed", "export"}
    (record,) = [json.loads(line) for line in (report / JOURNAL).read_text().splitlines()]
    assert record["seconds"] > 15 and record["windows"] == len(record["seams_s"]) + 1 >= 2
    assert record["strategies"]["buffered"]["windows"] >= 4  # 4.8 s chunks
    assert "long_audio_strategies.png" in {p.name for p in (report / "plots" / "evaluation").iterdir()}


def test_a_strategy_for_a_streamed_evaluation_is_refused(converted, export_cache, tmp_path, capsys):
    code = _evaluate(converted, export_cache, "--streaming", "--strategy", "buffered", "--audio",
                     str(tmp_path / "any.wav"))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "--strategy: a streamed evaluation (--streaming) feeds chunks, not windows" in last, last


def _on_a_pseudo_terminal(command: list[str], timeout: float = 300.0) -> str:
    """What ``command`` writes to a pseudo-terminal nobody sized (as ``script`` or a CI runner
    gives it: no columns reported)."""
    controller, terminal = os.openpty()
    try:
        process = subprocess.Popen(command, stdin=terminal, stdout=terminal, stderr=terminal, cwd=ROOT,
                                   close_fds=True)
    finally:
        os.close(terminal)
    shown = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the command ended and closed its side
                break
            if not chunk:
                break
            shown += chunk
        elif process.poll() is not None:
            break
    process.wait(timeout=10)
    os.close(controller)
    return shown.decode("utf-8", "replace")


def test_evaluate_shows_its_progress_bar_on_a_terminal(converted, export_cache, held_out_rows, tmp_path):
    """Forty utterances take longer than the bar's two-second delay: the bar with its rate and ETA
    reaches the terminal (it used to draw no columns on a terminal that reports no width)."""
    manifest = tmp_path / "set.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in held_out_rows * 10))
    shown = _on_a_pseudo_terminal([str(Path(sys.executable).parent / "parakeet-coreml"), "evaluate", "--output-dir",
                                   str(converted), "--cache-dir", str(export_cache.root), "--backend", "mil",
                                   "--manifest", str(manifest), "--report-dir", str(tmp_path / "report")])
    assert "evaluation (tdt) passed: 40 utterance(s)" in shown, shown[-2000:]
    bars = [line for line in shown.split("\r") if line.startswith("evaluate:") and "utterance/s]" in line
            or line.startswith("evaluate:") and "s/utterance]" in line]
    assert bars and "/40 [" in bars[-1], shown[-2000:]
