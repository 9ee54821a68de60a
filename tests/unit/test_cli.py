"""The ``convert`` command: output layout, metadata, reuse of pytest's exports, bad input, and
third-party output kept off the terminal."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import coremltools as ct
import pytest

from cli.main import build_parser, main
from exporters.components import COMPONENTS, PORT_DESCRIPTIONS

ROOT = Path(__file__).resolve().parents[2]


def _convert(*args):
    return main(["convert", *args])


@pytest.fixture(scope="session")
def pytest_exports(session_exporters):
    """Every fp16 component, exported by the session's fixtures into the session's cache."""
    return {e.name: e for e in session_exporters["float16"].export_all()}


def _run_convert(model_source, export_cache, out, capsys):
    code = _convert(*model_source.cli_args(), "--output-dir", str(out), "--cache-dir", str(export_cache.root))
    return code, capsys.readouterr()


def test_convert_after_pytest_reuses_every_export(pytest_exports, model_source, export_cache, dims, tmp_path,
                                                  capsys):
    mtimes = {n: e.entry.path.stat().st_mtime_ns for n, e in pytest_exports.items()}
    code, captured = _run_convert(model_source, export_cache, tmp_path / "out", capsys)
    assert code == 0, captured.err
    progress = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert len(progress) == len(dims.family.components())
    assert all(": cached," in line for line in progress), captured.err
    assert "converting" not in captured.err and "loading" not in captured.err
    assert {n: e.entry.path.stat().st_mtime_ns for n, e in pytest_exports.items()} == mtimes


def test_convert_writes_packages_and_metadata(pytest_exports, model_source, export_cache, dims, tmp_path, capsys):
    out = tmp_path / "parakeet_coreml"
    code, captured = _run_convert(model_source, export_cache, out, capsys)
    assert code == 0, captured.err
    meta = json.loads((out / "metadata.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{c.name}.mlpackage" for c in dims.family.components()]
                                                           + ["metadata.json", "parakeet_vocab.json"])
    assert (meta["sample_rate"], meta["max_audio_seconds"], meta["max_audio_samples"]) == (16000, 15.0, 240000)
    assert (meta["vocab_size"], meta["blank_id"]) == (dims.vocab_size, dims.vocab_size)
    assert meta["durations"] == [0, 1, 2, 3, 4] and meta["joint_extra_outputs"] == 5
    assert meta["model"] == model_source.describe()
    coreml = meta["coreml"]
    assert (coreml["compute_units"], coreml["compute_precision"], coreml["minimum_deployment_target"]) == (
        "ALL", "float16", "iOS17")
    assert coreml["coremltools_version"] == "9.0" and coreml["torch_version"].startswith("2.13")
    for name, component in meta["components"].items():
        package = out / component["path"]
        assert package.is_dir()
        assert component["size_bytes"] == sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
        expected = COMPONENTS[name]
        assert [i["name"] for i in component["inputs"]] == [s.name for s in expected.inputs(dims)]
        assert [o["shape"] for o in component["outputs"]] == [list(s.shape) for s in expected.outputs(dims)]
    assert meta["components"]["preprocessor"]["compute_precision"] == "float32"
    # each package describes itself and every port, as Xcode shows it
    for component in dims.family.components():
        name = component.name
        package = ct.models.MLModel(str(out / f"{name}.mlpackage"), skip_model_load=True)
        assert package.short_description == f"Parakeet {name}: {component.summary}"
        assert package.author.startswith(f"NVIDIA NeMo model {model_source.describe()}; converted by")
        assert package.license.startswith("no checkpoint's") or meta["model_source"]["kind"] != "preset"
        assert package.user_defined_metadata["parakeet_coreml.component"] == name
        for described, ports in ((package.input_description, component.input_ports),
                                 (package.output_description, component.output_ports)):
            assert {p.name: described[p.name] for p in ports} == {p.name: PORT_DESCRIPTIONS[p.name] for p in ports}


def test_a_moved_checkpoint_is_described_by_its_new_path(pytest_exports, model_source, export_cache, tmp_path,
                                                        capsys):
    """The cache is keyed by the checkpoint's content: the same .nemo elsewhere finds the entry the
    suite wrote, and its packages used to name the suite's path (CI clones into another folder)."""
    if model_source.kind != "nemo":
        pytest.skip(f"needs a .nemo checkpoint to move; the session's model is {model_source.describe()}")
    moved = tmp_path / "elsewhere" / "renamed.nemo"
    moved.parent.mkdir()
    shutil.copyfile(model_source.value, moved)
    out = tmp_path / "out"
    code = _convert("--nemo-path", str(moved), "--output-dir", str(out), "--cache-dir", str(export_cache.root),
                    "--components", "joint")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "[1/1] joint: cached" in captured.err
    package = ct.models.MLModel(str(out / "joint.mlpackage"), skip_model_load=True)
    assert package.author == f"NVIDIA NeMo model {moved}; converted by parakeet-coreml"
    assert package.version.startswith(f"{moved} sha256:")
    assert package.user_defined_metadata["parakeet_coreml.model"] == str(moved)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["model"] == str(moved)
    written = sum(f.stat().st_size for f in (out / "joint.mlpackage").rglob("*") if f.is_file())
    # its description names the new path, so its size is not the cached package's (it was)
    assert meta["components"]["joint"]["size_bytes"] == written


def test_the_vocabulary_beside_the_packages_turns_token_ids_into_text(pytest_exports, model_source, export_cache,
                                                                      torch_model, dims, tmp_path, capsys):
    """What an app needs to read the packages' token ids: every piece by its decimal id, the blank
    (id vocab_size) not among them; pieces joined, "▁" a space, give SentencePiece's own text."""
    out = tmp_path / "parakeet_coreml"
    code, captured = _run_convert(model_source, export_cache, out, capsys)
    assert code == 0, captured.err
    assert json.loads((out / "metadata.json").read_text())["vocabulary"] == "parakeet_vocab.json"
    vocabulary = json.loads((out / "parakeet_vocab.json").read_text(encoding="utf-8"))
    sentencepiece = torch_model.tokenizer.tokenizer  # the SentencePiece processor NeMo wraps
    assert list(vocabulary) == [str(i) for i in range(dims.vocab_size)] == [
        str(i) for i in range(sentencepiece.get_piece_size())]
    for text in ("the large singer wants maria", "every day four pictures swims near the cat"):
        ids = sentencepiece.encode(text)
        assert "".join(vocabulary[str(i)] for i in ids).replace("\u2581", " ").strip() == text


def test_convert_selected_components_into_existing_dir(pytest_exports, model_source, export_cache, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code = _convert(*model_source.cli_args(), "--output-dir", str(out), "--cache-dir", str(export_cache.root),
                    "--components", "decoder,joint", "joint")
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["decoder.mlpackage", "joint.mlpackage", "metadata.json",
                                                   "notes.txt", "parakeet_vocab.json"]
    assert list(json.loads((out / "metadata.json").read_text())["components"]) == ["decoder", "joint"]
    assert "replaced" not in capsys.readouterr().out
    code = _convert(*model_source.cli_args(), "--output-dir", str(out), "--cache-dir", str(export_cache.root),
                    "--components", "joint")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip().endswith("; replaced the earlier export there (its packages, vocabulary and "
                                         "metadata.json with any reports in it)")


def _assert_clean_failure(code, captured, out, message):
    """Exit 2; one error line, last, after any progress lines; no traceback; no output left."""
    assert code == 2
    lines = captured.err.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == [lines[-1]] and lines[-1].startswith("parakeet-coreml convert: error:"), captured.err
    assert "Traceback" not in captured.err
    assert message in lines[-1]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


@pytest.mark.parametrize("args, message", [
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--preset", "tiny", "--components", "encoder,vocoder"], "unknown component(s) vocoder"),
    (["--nemo-path", "/nonexistent/model.nemo"], "no such file"),
])
def test_bad_input_fails_with_one_line(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    code = _convert(*args, "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"))
    _assert_clean_failure(code, capsys.readouterr(), out, message)


@pytest.mark.parametrize("args, message", [
    (["evaluate", "--output-dir", "{tmp}/parakeet_corml", "--manifest", "builtin:held-out"],
     "--output-dir {tmp}/parakeet_corml: no such folder"),
    (["evaluate", "--output-dir", "{tmp}", "--manifest", "builtin:held-out"],
     "--output-dir {tmp}: no metadata.json, so not a folder convert wrote"),
    (["compare", "--packages", "{tmp}/theirs", "--preset", "tiny"], "--packages {tmp}/theirs: no such folder"),
    (["quantize", "--output-dir", "{tmp}/gone"], "--output-dir {tmp}/gone: no such folder"),
    (["convert", "--nemo-path", "{tmp}/model.nemo", "--output-dir", "{tmp}/out"], "no such file"),
])
def test_paths_and_names_are_refused_before_torch_and_nemo_load(args, message, tmp_path):
    """In a fresh process: the error comes without importing torch (about ten seconds of imports
    before any argument was checked, once)."""
    args = [a.format(tmp=tmp_path) for a in args]
    probe = ("import sys; from cli.main import main; code = main(sys.argv[1:]); "
             "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded'); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout.strip() == "torch not loaded"
    assert message.format(tmp=tmp_path) in done.stderr.strip().splitlines()[-1]


def test_corrupt_checkpoint_leaves_no_output(tmp_path, capsys):
    bad = tmp_path / "bad.nemo"
    with tarfile.open(bad, "w"):
        pass
    out = tmp_path / "out"
    code = _convert("--nemo-path", str(bad), "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"))
    _assert_clean_failure(code, capsys.readouterr(), out, "could not restore the checkpoint")


def test_a_checkpoint_of_another_kind_leaves_no_output(classification_nemo, tmp_path, capsys):
    out = tmp_path / "out"
    code = _convert("--nemo-path", str(classification_nemo), "--output-dir", str(out), "--cache-dir",
                    str(tmp_path / "cache"))
    _assert_clean_failure(code, capsys.readouterr(), out, "expected a Parakeet-family ASR model")


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "out"
    code = _convert("--preset", "tiny", "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"))
    _assert_clean_failure(code, capsys.readouterr(), out, "cannot write there")
    code = _convert("--preset", "tiny", "--output-dir", str(blocker), "--cache-dir", str(tmp_path / "cache"))
    captured = capsys.readouterr()
    assert code == 2 and "is not a directory" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert blocker.read_text() == ""


def test_third_party_output_goes_to_a_log_file_unless_verbose(pytest_exports, model_source, export_cache, tmp_path):
    """In a fresh process, as a user runs it: coremltools' import warnings and NeMo's logger land
    in the per-user log, the terminal gets the tool's own lines; --verbose shows everything."""
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}

    def convert(*options):
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *options, "convert", *model_source.cli_args(), "--components", "joint",
             "--output-dir", str(tmp_path / f"out{len(options)}"), "--cache-dir", str(export_cache.root)],
            cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=600, check=False)

    chatter = "has not been tested with coremltools"  # coremltools' warning on import next to torch 2.13
    quiet = convert()
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.startswith("wrote 1 package(s)") and "[1/1] joint:" in quiet.stderr
    assert chatter not in quiet.stdout + quiet.stderr and "NeMo" not in quiet.stdout + quiet.stderr
    logs = list((tmp_path / "state").rglob("convert-*.log"))
    assert len(logs) == 1 and chatter in logs[0].read_text()
    loud = convert("--verbose")
    assert loud.returncode == 0 and chatter in loud.stdout + loud.stderr


def test_a_converted_components_line_says_which_time_is_which(tmp_path, capsys):
    """It read "converted in 1.5 s, 2.7 MB, float32 (8.4 s)": two times, neither named."""
    code = main(["convert", "--preset", "tiny", "--components", "decoder", "--output-dir", str(tmp_path / "out"),
                 "--cache-dir", str(tmp_path / "cache")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (line,) = [line for line in captured.err.splitlines() if line.startswith("[1/1]")]
    assert re.fullmatch(r"\[1/1\] decoder: converted in \d+\.\d s, \d+\.\d MB, float16"
                        r"( \(\d+\.\d s with loading the model\))?", line), line


def test_help_is_plain_text():
    """``--help`` showed the module docstring's markup (````parakeet-coreml````)."""
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for text in [parser.format_help(), *(command.format_help() for command in commands.values())]:
        assert "``" not in text
