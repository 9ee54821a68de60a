"""Publishing an output directory is all or nothing, whatever stands in the way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from infra.faults import ENV_VAR
from reports.metadata import update_metadata
from tests.faults.conftest import PRESET, ROOT, convert, leftovers, tree


def _precisions(out):
    meta = json.loads((out / "metadata.json").read_text())
    return meta["coreml"]["compute_precision"], {c["compute_precision"] for c in meta["components"].values()}


@pytest.mark.parametrize("obstacle", ["file", "link"])
def test_a_package_replaced_by_a_file_or_a_link_is_replaced_whole(fault_cache, tmp_path, obstacle, capsys):
    out = tmp_path / "out"
    assert convert(fault_cache, out, "--compute-precision", "float32") == 0
    shutil.rmtree(out / "joint.mlpackage")
    if obstacle == "file":
        (out / "joint.mlpackage").write_text("not a package")
    else:
        (tmp_path / "elsewhere").mkdir()
        (out / "joint.mlpackage").symlink_to(tmp_path / "elsewhere")
    assert convert(fault_cache, out) == 0, capsys.readouterr().err
    assert _precisions(out) == ("float16", {"float16"})
    assert (out / "joint.mlpackage").is_dir() and not (out / "joint.mlpackage").is_symlink()
    if obstacle == "link":
        assert (tmp_path / "elsewhere").is_dir(), "a link's target is not ours to remove"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("failing_move", [1, 2, 3])
def test_a_publish_that_fails_part_way_leaves_the_directory_exactly_as_it_was(fault_cache, tmp_path, monkeypatch,
                                                                             failing_move, capsys):
    out = tmp_path / "out"
    assert convert(fault_cache, out, "--compute-precision", "float32") == 0
    (out / "notes.txt").write_text("keep me")
    before = tree(out)
    monkeypatch.setenv(ENV_VAR, f"publish:{failing_move}:raise")
    assert convert(fault_cache, out) != 0
    assert "injected fault at publish" in capsys.readouterr().err
    assert tree(out) == before
    assert leftovers(tmp_path) == []


def test_output_directories_and_everything_in_them_follow_the_umask(fault_cache, tmp_path):
    previous = os.umask(0o022)
    try:
        assert convert(fault_cache, tmp_path / "out") == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    modes = {str(p.relative_to(tmp_path / "out")): p.stat().st_mode & 0o777 for p in (tmp_path / "out").rglob("*")}
    assert modes and {mode for name, mode in modes.items() if (tmp_path / "out" / name).is_dir()} == {0o755}, modes
    assert {mode for name, mode in modes.items() if (tmp_path / "out" / name).is_file()} == {0o644}, modes


def test_concurrent_converts_into_one_directory_both_publish_a_whole_set(fault_cache, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cli.main", "convert", *PRESET, "--output-dir", str(out), "--cache-dir",
               str(fault_cache)]
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    runs = [subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], errors
    assert sorted(p.name for p in out.iterdir()) == ["decoder.mlpackage", "joint.mlpackage", "metadata.json",
                                                   "parakeet_vocab.json"]
    assert _precisions(out) == ("float16", {"float16"})
    assert leftovers(tmp_path) == []


def test_a_rewritten_metadata_json_follows_the_umask(tmp_path):
    """compare and evaluate rewrite metadata.json whole; through mkstemp it used to turn 0600."""
    description = {"model": "m", "model_source": {"content_sha256": "x"}}
    previous = os.umask(0o022)
    try:
        path = update_metadata(tmp_path, description, validation={"status": "passed"})
        update_metadata(tmp_path, description, latency={"cases": {}})
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metadata.json"]
