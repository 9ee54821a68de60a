"""The export cache: reuse, atomicity, damage detection and one build under concurrency."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from infra import cache
from infra.cache import ENV_VAR, ExportCache, cache_key, default_cache_dir


def _build_writing(payload: bytes, calls: list | None = None):
    def build(tmp: Path) -> dict:
        if calls is not None:
            calls.append(tmp)
        (tmp / "model.mlpackage").mkdir()
        (tmp / "model.mlpackage" / "weights.bin").write_bytes(payload)
        return {"package": "model.mlpackage"}

    return build


def test_second_lookup_reuses_without_building(tmp_path):
    cache, calls = ExportCache(tmp_path), []
    first = cache.get_or_build("k", _build_writing(b"abc", calls))
    second = cache.get_or_build("k", _build_writing(b"abc", calls))
    assert len(calls) == 1
    assert (first.hit, second.hit) == (False, True)
    assert second.info["package"] == "model.mlpackage"
    assert second.size_bytes == 3


def test_failed_build_leaves_nothing(tmp_path):
    cache = ExportCache(tmp_path)

    def build(tmp: Path) -> dict:
        (tmp / "half-written").write_bytes(b"x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        cache.get_or_build("k", build)
    assert cache.lookup("k") is None
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_file", "delete_entry_json", "extra_file"])
def test_damaged_entry_is_detected_and_rebuilt(tmp_path, damage):
    calls = []
    cache = ExportCache(tmp_path)
    entry = cache.get_or_build("k", _build_writing(b"weights", calls))
    weights = entry.path / "model.mlpackage" / "weights.bin"
    if damage == "truncate":
        weights.write_bytes(b"wei")
    elif damage == "flip":
        weights.write_bytes(b"weighTs")
    elif damage == "delete_file":
        weights.unlink()
    elif damage == "delete_entry_json":
        (entry.path / "entry.json").unlink()
    else:
        (entry.path / "model.mlpackage" / "stray.bin").write_bytes(b"?")
    assert ExportCache(tmp_path).lookup("k") is None  # a new process notices the damage
    rebuilt = ExportCache(tmp_path).get_or_build("k", _build_writing(b"weights", calls))
    assert len(calls) == 2 and not rebuilt.hit
    assert (rebuilt.path / "model.mlpackage" / "weights.bin").read_bytes() == b"weights"


def test_an_entry_met_while_coremltools_rewrites_a_manifest_is_kept(tmp_path):
    """coremltools rewrites a package's Manifest.json whenever it opens it, through a temporary
    ``Manifest.<uuid>`` beside it (seen with strace: openat, then rename): a check that meets that
    file took the entry for damaged and removed it under another process that was reading it."""
    entry = ExportCache(tmp_path).get_or_build("k", _build_writing(b"weights"))
    (entry.path / "model.mlpackage" / "Manifest.4695a0fd-c3e8-4271-af1b-20251cd67090").write_text("{")
    found = ExportCache(tmp_path).lookup("k")
    assert found is not None and (found.path / "model.mlpackage" / "weights.bin").read_bytes() == b"weights"


def test_an_entry_whose_file_vanishes_while_it_is_hashed_is_looked_at_again(tmp_path, monkeypatch):
    """That temporary file is renamed away between the listing and the hashing: the check looks
    again instead of removing the entry."""
    ExportCache(tmp_path).get_or_build("k", _build_writing(b"weights"))
    real, reads = cache.sha256_file, []

    def gone_once(path):
        reads.append(path)
        if len(reads) == 1:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real(path)

    monkeypatch.setattr(cache, "sha256_file", gone_once)
    monkeypatch.setattr(cache, "RECHECK_SECONDS", 0.0)
    entry = ExportCache(tmp_path).lookup("k")
    assert entry is not None and len(reads) == 2


def test_a_stray_file_named_like_a_manifest_elsewhere_is_damage(tmp_path):
    """Only the package's own in-flight manifest is passed over: the same name deeper inside is a change."""
    entry = ExportCache(tmp_path).get_or_build("k", _build_writing(b"weights"))
    (entry.path / "model.mlpackage" / "Data").mkdir()
    (entry.path / "model.mlpackage" / "Data" / "Manifest.4695a0fd-c3e8-4271-af1b-20251cd67090").write_text("{")
    assert ExportCache(tmp_path).lookup("k") is None


@pytest.mark.parametrize("key", ["", ".", "..", "../../elsewhere", "a/b"])
def test_a_key_that_is_no_entry_name_finds_nothing_and_removes_nothing(tmp_path, key):
    """A package set's metadata.json without a cache_key made compare look up "": the entries
    folder itself, which lookup took for a damaged entry and removed with every export in it."""
    ExportCache(tmp_path / "c").get_or_build("k", _build_writing(b"weights"))
    (tmp_path / "elsewhere").mkdir()
    assert ExportCache(tmp_path / "c").lookup(key) is None
    assert (tmp_path / "elsewhere").is_dir()
    assert ExportCache(tmp_path / "c").lookup("k") is not None


def test_a_key_that_is_no_entry_name_is_not_built(tmp_path):
    with pytest.raises(ValueError, match=r"cache key '\.\./x': expected a name"):
        ExportCache(tmp_path / "c").get_or_build("../x", _build_writing(b"weights"))
    assert not (tmp_path / "x").exists()


def _slow_build_in_process(root: str, log: str, key: str = "k"):
    def build(tmp: Path) -> dict:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        return _build_writing(b"slow")(tmp)

    ExportCache(root).get_or_build(key, build)


def test_concurrent_processes_build_once(tmp_path):
    log = tmp_path / "builds.log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_slow_build_in_process, args=(str(tmp_path / "c"), str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(log.read_text().split()) == 1
    assert ExportCache(tmp_path / "c").lookup("k").hit


def _hanging_build(root: str, started: str):
    def build(tmp: Path) -> dict:
        (tmp / "partial.bin").write_bytes(b"half")
        Path(started).write_text("1")
        time.sleep(600)
        return {}

    ExportCache(root).get_or_build("k", build)


def test_killed_export_leaves_no_usable_entry(tmp_path):
    started = tmp_path / "started"
    proc = multiprocessing.get_context("spawn").Process(target=_hanging_build, args=(str(tmp_path / "c"), str(started)))
    proc.start()
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    cache = ExportCache(tmp_path / "c")
    assert cache.lookup("k") is None
    assert cache.get_or_build("k", _build_writing(b"ok")).info["package"] == "model.mlpackage"


def test_key_covers_every_part():
    base = dict(kind="component", model="m" * 64, component="encoder", options={"compute_precision": "float16"})
    variants = [
        {**base, "model": "n" * 64},
        {**base, "component": "joint"},
        {**base, "options": {"compute_precision": "float32"}},
    ]
    keys = {cache_key(**base)} | {cache_key(**v) for v in variants}
    assert len(keys) == 4
    assert cache_key(**base) == cache_key(**dict(reversed(list(base.items()))))


def test_key_covers_versions_and_exporter_code(monkeypatch):
    before = cache_key(model="m")
    monkeypatch.setattr(cache, "tool_versions", lambda: {"torch": "0.0", "coremltools": "0", "nemo_toolkit": "0"})
    assert cache_key(model="m") != before
    monkeypatch.undo()
    monkeypatch.setattr(cache, "exporter_code_digest", lambda: "edited")
    assert cache_key(model="m") != before


def test_cache_location_option_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert ExportCache().root == tmp_path / "env"
    assert ExportCache(tmp_path / "opt").root == tmp_path / "opt"
    monkeypatch.delenv(ENV_VAR)
    assert "parakeet-coreml" in str(default_cache_dir())


def test_a_scratch_directory_is_locked_before_it_exists(tmp_path, monkeypatch):
    """Two processes starting at once: one's clean-up of abandoned scratch directories ran
    between the other's creating its directory and locking it, and removed a live scratch (seen as
    a FileNotFoundError in NeMo's save_to under pytest -n 2). The lock now comes first."""
    seen = []
    mkdir = Path.mkdir

    def watching_mkdir(self, *args, **kwargs):
        if self.name.startswith(cache.SCRATCH):
            seen.append(cache._owner_gone(self.with_name(self.name + ".lock")))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", watching_mkdir)
    with ExportCache(tmp_path).scratch() as directory:
        assert directory.is_dir()
        assert ExportCache(tmp_path).remove_abandoned() == []
    assert seen == [False], "the scratch directory was made while nobody held its lock"
