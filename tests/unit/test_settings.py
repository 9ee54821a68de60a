"""Which settings file a command reads: the one named with --config, or this project's own
pyproject.toml inside its checkout; never an unrelated project's."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporters.components import ExportError
from exporters.settings import config_path, project_config, tool_settings

ROOT = Path(__file__).resolve().parents[2]


def test_inside_the_checkout_the_projects_own_file_is_read():
    assert project_config(ROOT / "tests" / "unit") == ROOT / "pyproject.toml"


def test_an_unrelated_projects_file_is_not_read_even_when_broken(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'other'\n")
    assert project_config(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text("this is [not toml")
    assert project_config(tmp_path) is None


def test_compare_in_an_unrelated_project_ignores_its_broken_toml(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("this is [not toml")
    monkeypatch.chdir(tmp_path)
    assert config_path(None) is None


def test_a_named_config_must_exist_and_parse(tmp_path):
    with pytest.raises(ExportError, match="--config .*missing.toml: no such file"):
        config_path(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("this is [not toml")
    assert config_path(broken) == broken
    with pytest.raises(ExportError, match="broken.toml: not valid TOML"):
        tool_settings(broken)
    good = tmp_path / "good.toml"
    good.write_text("[tool.parakeet-coreml.parity]\npsnr_floor_db = 30\n")
    assert tool_settings(good) == {"parity": {"psnr_floor_db": 30}}
