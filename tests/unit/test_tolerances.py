"""The tolerance table and its overrides from pyproject.toml and the command line."""

from __future__ import annotations

from dataclasses import replace

import pytest

from infra.errors import UserError
from validation.metrics import Tolerance
from validation.tolerances import DEFAULT_TOLERANCES, PSNR_FLOOR_DB, load_tolerances

PYPROJECT = """
[project]
name = "x"
[tool.parakeet-coreml.parity]
psnr_floor_db = 30
[tool.parakeet-coreml.parity.tolerances]
"encoder.encoder" = { atol = 0.1 }
"joint.logits" = { atol = 0.2, rtol = 0.02 }
"""


def test_defaults_are_the_reference_exports_except_the_fp32_mel():
    table = load_tolerances()
    assert table["encoder.encoder"] == Tolerance(5e-2, 5e-3, psnr_floor_db=35.0)  # each carries the floor
    assert table["decoder.c_out"] == Tolerance(1.5, 5e-2, psnr_floor_db=35.0)
    assert table["preprocessor.mel"] == Tolerance(1e-2, 1e-3, psnr_floor_db=35.0)  # tightened from 1.0 / 1e-2
    assert table["preprocessor.mel_length"].exact
    assert table.psnr_floor_db == PSNR_FLOOR_DB == 35.0


def test_pyproject_then_command_line(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(PYPROJECT)
    table = load_tolerances(pyproject, ["joint.logits:rtol=0.5"], psnr_floor_db=20)
    assert table["encoder.encoder"] == Tolerance(0.1, 5e-3, psnr_floor_db=20.0)  # rtol kept from the default
    assert table["joint.logits"] == Tolerance(0.2, 0.5, psnr_floor_db=20.0)  # the command line wins
    assert table.psnr_floor_db == 20.0
    assert table.sources == ("defaults", str(pyproject), "command line")
    assert table["decoder.h_out"] == replace(DEFAULT_TOLERANCES["decoder.h_out"], psnr_floor_db=20.0)


@pytest.mark.parametrize("cli, message", [
    (["encoder.enc:atol=1"], "unknown tolerance 'encoder.enc'; expected one of: preprocessor.mel"),
    (["encoder.encoder_length:atol=1"], "is compared exactly"),
    (["encoder.encoder"], "expected KEY:atol=A,rtol=R"),
    (["encoder.encoder:atol=big"], "atol and rtol must be numbers"),
    (["encoder.encoder:atol=-1"], "must be >= 0"),
    (["encoder.encoder:scale=2"], "must set atol and/or rtol"),
])
def test_bad_overrides_name_what_is_wrong(cli, message):
    with pytest.raises(UserError, match=message):
        load_tolerances(None, cli)


def test_invalid_pyproject_is_refused(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[tool.parakeet-coreml.parity\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_tolerances(pyproject)
