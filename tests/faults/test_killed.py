"""A run killed inside an export (SIGKILL) or told to stop (SIGTERM) leaves nothing that lasts:
SIGTERM cleans up as Ctrl-C does and says so; after SIGKILL, the next run removes what the dead
one left. Temporary files of coremltools and NeMo go to the cache's scratch, never to TMPDIR."""

from __future__ import annotations

import signal

import pytest

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
