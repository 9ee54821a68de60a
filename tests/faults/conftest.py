"""Fault tests run the command line on the random ``tiny`` preset, two small components, so each
convert costs seconds; their exports are cached once per session."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main

ROOT = Path(__file__).resolve().parents[2]
PRESET = ["--preset", "tiny", "--components", "decoder,joint"]


def tree(directory: Path) -> dict[str, str]:
    """Every entry below ``directory``: a file's sha256, a link's target, or "dir"."""
    found = {}
    for path in sorted(directory.rglob("*")):
        key = str(path.relative_to(directory))
        if path.is_symlink():
            found[key] = f"link to {os.readlink(path)}"
        elif path.is_dir():
            found[key] = "dir"
        else:
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def leftovers(directory: Path) -> list[str]:
    """Staging directories of outputs in ``directory`` (lock files of publishers aside)."""
    return sorted(p.name for p in directory.glob(".*.partial-*"))


@pytest.fixture(scope="session")
def fault_cache(tmp_path_factory):
    """A cache holding the tiny preset's decoder and joint at fp32 and fp16."""
    root = tmp_path_factory.mktemp("fault_cache")
    for precision in ("float32", "float16"):
        out = tmp_path_factory.mktemp("warm")
        assert main(["convert", *PRESET, "--compute-precision", precision, "--output-dir", str(out / "o"),
                     "--cache-dir", str(root)]) == 0
    return root


def convert(cache: Path, out: Path, *args) -> int:
    return main(["convert", *PRESET, "--output-dir", str(out), "--cache-dir", str(cache), *args])


def convert_process(cache: Path, out: Path, fault: str | None, tmpdir: Path, *args) -> subprocess.CompletedProcess:
    """``convert`` in a process of its own, with ``PARAKEET_COREML_FAULT`` and TMPDIR set."""
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    env.pop("PARAKEET_COREML_FAULT", None)
    if fault:
        env["PARAKEET_COREML_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "cli.main", "convert", *PRESET, "--output-dir", str(out),
                           "--cache-dir", str(cache), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
