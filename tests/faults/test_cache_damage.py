"""Every kind of damage to a cache entry is noticed on use and the entry is rebuilt; an edited
``entry.json`` never reaches metadata.json."""

from __future__ import annotations

import json
import shutil

import pytest

from exporters import export
from exporters.components import ExportOptions
from exporters.export import Exporter
from exporters.sources import ModelSource
from infra.cache import ENTRY_FILE, ExportCache, cache_key
from tests.faults.conftest import convert


def _edit_info(entry):
    info = json.loads((entry / ENTRY_FILE).read_text())
    info["answer"] = 43
    (entry / ENTRY_FILE).write_text(json.dumps(info))


DAMAGE = {
    "entry.json edited": _edit_info,
    "entry.json removed": lambda entry: (entry / ENTRY_FILE).unlink(),
    "entry.json not JSON": lambda entry: (entry / ENTRY_FILE).write_text("{"),
    "file truncated": lambda entry: (entry / "weights.bin").write_bytes(b"\0" * 10),
    "file changed, same size": lambda entry: (entry / "weights.bin").write_bytes(b"\1" * 1000),
    "file removed": lambda entry: (entry / "weights.bin").unlink(),
    "file added": lambda entry: (entry / "extra.bin").write_bytes(b"x"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_entry_is_rebuilt(tmp_path, damage):
    builds = []

    def build(tmp):
        builds.append(tmp)
        (tmp / "weights.bin").write_bytes(b"\0" * 1000)
        return {"answer": 42}

    key = cache_key(kind="test", n=1)
    entry = ExportCache(tmp_path).get_or_build(key, build)
    DAMAGE[damage](entry.path)
    again = ExportCache(tmp_path).get_or_build(key, build)  # a new process: nothing verified yet
    assert len(builds) == 2, f"{damage}: the damaged entry was used"
    assert again.info["answer"] == 42 and (again.path / "weights.bin").read_bytes() == b"\0" * 1000


def test_an_edited_model_facts_entry_does_not_reach_the_metadata(fault_cache):
    source = ModelSource("preset", "tiny")
    exporter = Exporter(source, ExportOptions(), ExportCache(fault_cache), progress=lambda message: None)
    vocab_size = exporter.dims.vocab_size
    path = ExportCache(fault_cache).lookup(exporter.model_info_key).path / ENTRY_FILE
    info = json.loads(path.read_text())
    info["dims"]["vocab_size"] = vocab_size + 1
    path.write_text(json.dumps(info))
    fresh = Exporter(source, ExportOptions(), ExportCache(fault_cache), progress=lambda message: None)
    assert fresh.metadata([])["vocab_size"] == vocab_size


def test_a_cache_entry_removed_during_a_convert_is_built_again(fault_cache, tmp_path, monkeypatch, capsys):
    """Found intact, then removed before its package was copied (another process cleaning the
    cache): the run used to end in a raw FileNotFoundError after all the work."""
    real, removed = export.copy_package, []

    def remove_the_first_source(package, target, **how):
        if not removed:
            removed.append(package.parent)
            shutil.rmtree(package.parent)
        return real(package, target, **how)

    monkeypatch.setattr(export, "copy_package", remove_the_first_source)
    assert convert(fault_cache, tmp_path / "out") == 0, capsys.readouterr().err
    assert "vanished; exporting it again" in capsys.readouterr().err
    assert removed and (removed[0] / "decoder.mlpackage").is_dir()  # the entry, built again
    assert (tmp_path / "out" / "decoder.mlpackage").is_dir() and (tmp_path / "out" / "joint.mlpackage").is_dir()


def test_an_output_dir_that_is_a_dangling_link_is_refused_before_the_work(fault_cache, tmp_path, capsys):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    assert convert(fault_cache, link) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"parakeet-coreml convert: error: --output-dir {link}: a symbolic link to {tmp_path / 'gone'}, "
                    "which does not exist; create that folder or give another path")
