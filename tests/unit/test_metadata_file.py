"""metadata.json stays a summary: long series go into an arrays file beside it, all or nothing."""

from __future__ import annotations

import json

import pytest

import reports.metadata as metadata_module
from infra.errors import UserError
from reports.metadata import ARRAYS_GLOB, read_metadata, update_metadata

DESCRIPTION = {"model": "preset:tiny", "model_source": {"content_sha256": "abc"}, "durations": [0, 1, 2, 3, 4]}


def _block(scale: float) -> dict:
    return {"status": "passed", "per_frame": [scale * i for i in range(188)],
            "clips": [{"name": "speech", "l2": [scale] * 40 + [None]}], "short": [1.0, 2.0]}


def test_long_series_go_into_the_arrays_file_and_come_back_whole(tmp_path):
    update_metadata(tmp_path, DESCRIPTION, validation=_block(1.0))
    summary = json.loads((tmp_path / "metadata.json").read_text())
    assert summary["validation"]["per_frame"] == {"array": "/validation/per_frame", "length": 188, "min": 0.0,
                                                  "max": 187.0}
    assert summary["validation"]["clips"][0]["l2"] == {"array": "/validation/clips/0/l2", "length": 41, "min": 1.0,
                                                       "max": 1.0}
    assert summary["validation"]["short"] == [1.0, 2.0] and summary["durations"] == [0, 1, 2, 3, 4]
    (arrays,) = tmp_path.glob(ARRAYS_GLOB)
    assert summary["arrays_file"] == arrays.name
    assert read_metadata(tmp_path) == {**DESCRIPTION, "validation": _block(1.0)}
    # another block later: both come back, and one arrays file is left
    update_metadata(tmp_path, DESCRIPTION, latency={"per_chunk_ms": list(range(50))})
    assert read_metadata(tmp_path) == {**DESCRIPTION, "validation": _block(1.0), "latency": {
        "per_chunk_ms": list(range(50))}}
    assert len(list(tmp_path.glob(ARRAYS_GLOB))) == 1


def test_a_run_killed_between_the_two_files_leaves_the_earlier_pair_whole(tmp_path, monkeypatch):
    update_metadata(tmp_path, DESCRIPTION, validation=_block(1.0))
    written = metadata_module.write_whole

    def killed_at_metadata(path, text, fault="write"):
        if path.name == "metadata.json":
            raise KeyboardInterrupt
        written(path, text, fault)

    monkeypatch.setattr(metadata_module, "write_whole", killed_at_metadata)
    with pytest.raises(KeyboardInterrupt):
        update_metadata(tmp_path, DESCRIPTION, validation=_block(2.0))
    monkeypatch.undo()
    assert read_metadata(tmp_path) == {**DESCRIPTION, "validation": _block(1.0)}
    update_metadata(tmp_path, DESCRIPTION, validation=_block(3.0))  # the next run's: the orphan goes
    assert read_metadata(tmp_path)["validation"] == _block(3.0)
    assert len(list(tmp_path.glob(ARRAYS_GLOB))) == 1


def test_a_metadata_json_whose_arrays_file_is_gone_is_refused_with_its_name(tmp_path):
    update_metadata(tmp_path, DESCRIPTION, validation=_block(1.0))
    (arrays,) = tmp_path.glob(ARRAYS_GLOB)
    arrays.unlink()
    with pytest.raises(UserError, match=f"{arrays.name}, named by .*metadata.json: not readable"):
        read_metadata(tmp_path)


def test_a_new_report_folder_starts_from_the_description_without_another_runs_blocks(tmp_path):
    """A description read from a convert folder that compare already wrote into keeps its blocks;
    a report written elsewhere holds only its own."""
    described = {**DESCRIPTION, "validation": {"status": "failed"}, "long_audio": {"builtin:seams": {}}}
    update_metadata(tmp_path, described, latency={"backend": "mil"})
    assert read_metadata(tmp_path) == {**DESCRIPTION, "latency": {"backend": "mil"}}
