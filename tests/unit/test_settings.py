"""Which settings file a command reads: the one named with --config, or this project's own
pyproject.toml inside its checkout; never an unrelated project's."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporters.quantize import variant_table
from infra.errors import UserError
from infra.settings import config_path, project_config, tool_settings
from validation.tolerances import load_gates, load_tolerances

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
    with pytest.raises(UserError, match="--config .*missing.toml: no such file"):
        config_path(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("this is [not toml")
    assert config_path(broken) == broken
    with pytest.raises(UserError, match="broken.toml: not valid TOML"):
        tool_settings(broken)
    good = tmp_path / "good.toml"
    good.write_text("[tool.parakeet-coreml.parity]\npsnr_floor_db = 30\n")
    assert tool_settings(good) == {"parity": {"psnr_floor_db": 30}}


def test_a_config_that_is_not_utf8_is_one_line_naming_the_file(tmp_path):
    latin = tmp_path / "latin.toml"
    latin.write_bytes("[tool.parakeet-coreml.parity]\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.toml: not UTF-8 text \(byte 35\); expected a TOML file"):
        tool_settings(latin)


@pytest.mark.parametrize("content, read, message", [
    ("[tool.parakeet-coreml]\nparity = 3\n", lambda p: load_tolerances(p), r"\[parity\] is int 3; expected a table"),
    ("[tool.parakeet-coreml.parity]\ntolerances = 5\n", lambda p: load_tolerances(p),
     r"\[tool.parakeet-coreml.parity\]: \[tolerances\] is int 5; expected a table"),
    ('[tool.parakeet-coreml.quantization]\ngates = "x"\n', lambda p: load_gates(p),
     r"\[quantization.gates\] is str 'x'; expected a table"),
    ("[tool.parakeet-coreml.quantization.gates]\nint8_per_channel = 0.9\n", lambda p: load_gates(p),
     r"\[int8_per_channel\] is float 0.9; expected a table"),
    ("[tool.parakeet-coreml]\nquantization = []\n", lambda p: variant_table(p),
     r"\[quantization\] is list \[\]; expected a table"),
])
def test_config_sections_of_the_wrong_type_name_the_key_and_what_is_expected(tmp_path, content, read, message):
    """They used to end in a raw AttributeError ('int' object has no attribute 'get')."""
    path = tmp_path / "pyproject.toml"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read(path)
