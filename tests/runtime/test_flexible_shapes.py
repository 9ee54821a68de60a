"""Flexible inputs: a package whose input is a range of sizes (``RangeDim``) or a set of shapes
(``EnumeratedShapes``) runs on the executor at any shape it allows, with the symbolic dimensions
resolved per call (an output whose size follows the input's, a reduction, a slice), and refuses
any other shape with the allowed ones in the message, as Core ML does."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
import torch
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil import get_new_symbol, types
from hypothesis import given, settings
from hypothesis import strategies as st

from runtimes.base import InputMismatch
from runtimes.mil import MILModel

UPPER = 50
ENUMERATED = ((1, 3, 10), (1, 3, 20))


class _Net(torch.nn.Module):
    def forward(self, x):
        y = torch.relu(x) * 2.0
        return y.mean(dim=-1, keepdim=True) + y[:, :, :1], y.reshape(1, -1)


def _expected(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same arithmetic in float64 numpy, written independently of the executor's kernels."""
    y = np.maximum(x.astype(np.float64), 0.0) * 2.0
    return y.mean(axis=-1, keepdims=True) + y[:, :, :1], y.reshape(1, -1)


def _convert(shape, path) -> MILModel:
    traced = torch.jit.trace(_Net().eval(), torch.rand(1, 3, 10))
    model = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=shape)],
                       outputs=[ct.TensorType(name="head"), ct.TensorType(name="flat")], convert_to="mlprogram",
                       minimum_deployment_target=ct.target.iOS17, compute_precision=ct.precision.FLOAT32)
    model.save(str(path))
    return MILModel(path)


@pytest.fixture(scope="module")
def ranged(tmp_path_factory):
    return _convert((1, 3, ct.RangeDim(1, UPPER, default=10)), tmp_path_factory.mktemp("flex") / "ranged.mlpackage")


@pytest.fixture(scope="module")
def enumerated(tmp_path_factory):
    return _convert(ct.EnumeratedShapes(shapes=list(ENUMERATED), default=ENUMERATED[0]),
                    tmp_path_factory.mktemp("flex") / "enumerated.mlpackage")


def _check(model: MILModel, x: np.ndarray) -> None:
    out = model.predict({"x": x})
    head, flat = _expected(x)
    assert out["flat"].shape == (1, 3 * x.shape[-1])
    np.testing.assert_allclose(out["head"], head, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["flat"], flat, rtol=1e-6, atol=1e-6)


def test_the_declared_ranges_are_read_from_the_package(ranged, enumerated):
    assert str(ranged.input_specs[0]) == f"x: float32[1, 3, 1..{UPPER}]" and ranged.input_specs[0].flexible
    assert str(enumerated.input_specs[0]) == "x: float32 one of [1, 3, 10], [1, 3, 20]"


@settings(max_examples=25, deadline=None)
@given(length=st.integers(1, UPPER), seed=st.integers(0, 2**16))
def test_any_length_in_the_range_runs(ranged, length, seed):
    _check(ranged, np.random.default_rng(seed).standard_normal((1, 3, length)).astype(np.float32))


@settings(max_examples=15, deadline=None)
@given(length=st.one_of(st.integers(UPPER + 1, 4 * UPPER), st.just(0)))
def test_a_length_outside_the_range_is_refused_with_the_range(ranged, length):
    with pytest.raises(InputMismatch, match=rf"'x' has shape \[1, 3, {length}\], expected \[1, 3, 1\.\.{UPPER}\]"):
        ranged.predict({"x": np.zeros((1, 3, length), np.float32)})


@settings(max_examples=10, deadline=None)
@given(length=st.integers(1, 40))
def test_enumerated_shapes_run_and_any_other_is_refused(enumerated, length):
    x = np.random.default_rng(length).standard_normal((1, 3, length)).astype(np.float32)
    if (1, 3, length) in ENUMERATED:
        _check(enumerated, x)
    else:
        with pytest.raises(InputMismatch, match=r"expected one of \[1, 3, 10\], \[1, 3, 20\]"):
            enumerated.predict({"x": x})


def test_an_output_of_data_dependent_rank_is_read_and_computed():
    """``fill`` of a shape given at run time, in an fp16 program: the program declares a variadic
    dimension, which coremltools' own reader refuses ("not yet implemented"); the executor reads
    it as any shape, and the values decide it (Apple's op test ``TestFill`` symbolic, fp16)."""
    length = get_new_symbol()

    @mb.program(input_specs=[mb.TensorSpec(shape=(length,), dtype=types.int32)], opset_version=ct.target.iOS15)
    def program(shape):
        return mb.fill(shape=shape, value=2.5)

    model = ct.convert(program, convert_to="mlprogram", compute_precision=ct.precision.FLOAT16,
                       minimum_deployment_target=ct.target.iOS15,
                       inputs=[ct.TensorType(name="shape", shape=(ct.RangeDim(1, 5),), dtype=np.int32)])
    for shape in ([2, 1, 3], [4]):
        (out,) = MILModel(model).predict({"shape": np.array(shape, np.int32)}).values()
        assert out.shape == tuple(shape) and np.all(out == 2.5)
