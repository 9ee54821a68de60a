"""The executor's weight reader (``runtimes.mil.weights``) against coremltools' own loader: the
same constants, value for value and type for type, for every data type a weight file holds;
and a damaged weight file refused with what is wrong."""

from __future__ import annotations

import shutil

import coremltools as ct
import coremltools.optimize.coreml as cto
import numpy as np
import pytest
import torch
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.frontend.milproto.load import load
from coremltools.converters.mil.mil import types

from runtimes.base import PackageError
from runtimes.mil import MILModel
from runtimes.mil.weights import load_mil_program

pytestmark = pytest.mark.filterwarnings("ignore")

RNG = np.random.default_rng(0)
# one constant of each byte-aligned type; 132 elements, so each goes to the weight file
CONSTANTS = {
    "fp16": RNG.standard_normal((4, 33)).astype(np.float16),
    "fp32": RNG.standard_normal((4, 33)).astype(np.float32),
    "int8": RNG.integers(-128, 128, (4, 33)).astype(np.int8),
    "uint8": RNG.integers(0, 256, (4, 33)).astype(np.uint8),
    "int16": RNG.integers(-30000, 30000, (4, 33)).astype(np.int16),
    "uint16": RNG.integers(0, 65536, (4, 33)).astype(np.uint16),
    "int32": RNG.integers(-10**9, 10**9, (4, 33)).astype(np.int32),
}


@pytest.fixture(scope="module")
def typed_package(tmp_path_factory):
    @mb.program(input_specs=[mb.TensorSpec((4, 33), dtype=types.fp32)], opset_version=ct.target.iOS18)
    def program(x):
        outputs = [mb.add(x=x, y=1.0, name="shifted")]
        for name, value in CONSTANTS.items():
            constant = mb.const(val=value, name=name)
            outputs.append(mb.identity(x=constant, name=f"{name}_out") if name in ("fp16", "fp32", "int32")
                           else mb.cast(x=constant, dtype="int32", name=f"{name}_out"))
        return tuple(outputs)

    model = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                       compute_precision=ct.precision.FLOAT32, pass_pipeline=ct.PassPipeline.EMPTY)
    path = tmp_path_factory.mktemp("typed") / "typed.mlpackage"
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def sub_byte_package(tmp_path_factory):
    """4-bit palettized indices (uint4) and int4 linear weights: the sub-byte types."""
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32)).eval()
    traced = torch.jit.trace(net, torch.zeros(1, 64))
    model = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=(1, 64))], convert_to="mlprogram",
                       minimum_deployment_target=ct.target.iOS18, compute_precision=ct.precision.FLOAT32)
    model = cto.palettize_weights(model, cto.OptimizationConfig(
        global_config=cto.OpPalettizerConfig(nbits=4, weight_threshold=0), op_name_configs={"op_0_weight": None}))
    model = cto.linear_quantize_weights(model, cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(dtype="int4", granularity="per_block", block_size=16,
                                                  weight_threshold=0),
        op_name_configs={"op_2_weight_palettized": None}))
    path = tmp_path_factory.mktemp("sub_byte") / "sub_byte.mlpackage"
    model.save(str(path))
    return path


def _constants(program) -> dict:
    """Constant values by the (op, parameter) they feed: a constexpr op's inputs are named afresh
    by each load."""
    return {(op.outputs[0].name, param): var.val for op in program.functions["main"].operations
            for param, var in op.inputs.items()
            if not isinstance(var, (list, tuple)) and var.op is not None and var.op.op_type == "const"}


def _both_loaders(path):
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    ours = _constants(load_mil_program(spec, model.weights_dir))
    theirs = _constants(load(spec, spec.specificationVersion, file_weights_dir=model.weights_dir))
    return ours, theirs


@pytest.mark.parametrize("package", ["typed_package", "sub_byte_package"])
def test_the_reader_loads_every_constant_as_coremltools_does(package, request):
    ours, theirs = _both_loaders(request.getfixturevalue(package))
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        if isinstance(value, np.ndarray):
            assert ours[name].dtype == value.dtype, name
            np.testing.assert_array_equal(ours[name], value, err_msg=name)
        else:
            assert ours[name] == value, name


def test_the_typed_package_holds_each_type_in_its_weight_file(typed_package):
    """The test above is only as good as its constants: each must be one of the file's blobs."""
    ours, _ = _both_loaders(typed_package)
    for name, value in CONSTANTS.items():
        np.testing.assert_array_equal(ours[(f"{name}_out", "x")], value)
    weight_file = (typed_package / "Data/com.apple.CoreML/weights/weight.bin").read_bytes()
    assert int.from_bytes(weight_file[:4], "little") >= len(CONSTANTS)


def test_the_sub_byte_package_has_sub_byte_constants(sub_byte_package):
    model = ct.models.MLModel(str(sub_byte_package), skip_model_load=True)
    program = load_mil_program(model.get_spec(), model.weights_dir)
    sub_byte = {types.builtin_to_string(op.outputs[0].dtype) for op in program.functions["main"].operations
                if op.op_type == "const" and types.is_sub_byte(op.outputs[0].dtype)}
    assert sub_byte == {"uint4", "int4"}


def _damaged_copy(package, tmp_path, damage):
    copy = tmp_path / package.name
    shutil.copytree(package, copy)
    weights = copy / "Data/com.apple.CoreML/weights/weight.bin"
    weights.write_bytes(damage(weights.read_bytes()))
    return copy


def test_a_weight_file_with_a_damaged_blob_is_refused(typed_package, tmp_path):
    copy = _damaged_copy(typed_package, tmp_path, lambda data: data[:64] + b"\0" * 4 + data[68:])
    with pytest.raises(PackageError, match="sentinel is 0x0, expected 0xdeadbeef"):
        MILModel(copy)


def test_a_truncated_weight_file_is_refused(typed_package, tmp_path):
    copy = _damaged_copy(typed_package, tmp_path, lambda data: data[:-200])
    with pytest.raises(PackageError, match="truncated"):
        MILModel(copy)
