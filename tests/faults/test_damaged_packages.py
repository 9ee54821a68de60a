"""A damaged package is refused with its name and what is wrong, not a raw library error; a
program that computes a NaN says where the first one appears; one intermediate is asked for by
its name."""

from __future__ import annotations

import shutil

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil import Function, Program, types

from exporters.components import COMPONENTS
from runtimes.base import PackageError
from runtimes.mil import MILModel


@pytest.fixture(scope="module")
def joint(session_exporters):
    return session_exporters["float16"].export(COMPONENTS["joint"]).package


def _truncate_weights(package):
    weights = next(package.rglob("weight.bin"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _break_manifest(package):
    (package / "Manifest.json").write_text("{not json")


def _empty_model_file(package):
    next(package.rglob("model.mlmodel")).write_bytes(b"\x00garbage")


@pytest.mark.parametrize("damage", [_truncate_weights, _break_manifest, _empty_model_file])
def test_a_damaged_package_is_named_with_what_is_wrong(joint, tmp_path, damage):
    package = tmp_path / "joint.mlpackage"
    shutil.copytree(joint, package)
    damage(package)
    with pytest.raises(PackageError, match=r"joint.mlpackage: not a readable ML Program package \(") as raised:
        MILModel(package)
    assert "re-export" in str(raised.value)


def _program(build, **inputs):
    specs = {name: mb.placeholder(shape=value.shape, dtype=types.fp32) for name, value in inputs.items()}
    with Function(specs, ct.target.iOS17) as function:
        function.set_outputs([build(**function.inputs)])
    program = Program()
    program.add_function("main", function)
    return MILModel(program)


def test_the_first_non_finite_op_is_named():
    def build(x):
        shifted = mb.sub(x=x, y=np.float32(1.0), name="shifted")
        logged = mb.log(x=shifted, name="logged")  # NaN where x < 1
        return mb.mul(x=logged, y=np.float32(2.0), name="doubled")

    model = _program(build, x=np.zeros((1, 4), np.float32))
    found = model.first_non_finite({"x": np.array([[0.5, 2.0, 3.0, 4.0]], np.float32)})
    assert found is not None and "log" in found and "'logged'" in found
    assert model.first_non_finite({"x": np.array([[2.0, 3.0, 4.0, 5.0]], np.float32)}) is None
    assert "already non-finite" in model.first_non_finite({"x": np.array([[np.nan, 2, 3, 4]], np.float32)})


def test_one_intermediate_is_asked_for_by_its_name():
    def build(x):
        doubled = mb.mul(x=x, y=np.float32(2.0), name="doubled")
        return mb.add(x=doubled, y=np.float32(1.0), name="result")

    model = _program(build, x=np.zeros((1, 3), np.float32))
    out = model.predict({"x": np.ones((1, 3), np.float32)}, intermediates="doubled")
    assert set(out) == {"result", "doubled"} and np.array_equal(out["doubled"], np.full((1, 3), 2.0, np.float32))
