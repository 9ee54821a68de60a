"""How the executor rounds fp16, propagates non-finite values and refuses what it does not implement."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil import Function, Program, types

from runtimes.base import InputMismatch
from runtimes.mil import MILModel, UnsupportedOperation
from runtimes.mil.ops import KERNELS

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def test_fp16_program_rounds_every_intermediate_to_fp16(run_mil):
    """(x + y) - x: fp16 rounding of the sum is visible in the result, fp32 would keep y."""
    x = np.array([1.0, 2048.0], np.float16)
    y = np.array([2**-12, 0.75], np.float16)
    (out,) = run_mil(lambda x, y: mb.sub(x=mb.add(x=x, y=y), y=x), {"x": x, "y": y})
    assert out.dtype == np.float16
    assert np.array_equal(out, (x + y) - x)  # numpy fp16 rounds after each op
    assert not np.array_equal(out, y)


def test_fp16_matmul_accumulates_in_fp32(run_mil):
    """A fp16-only accumulation of 4096 ones plus a tiny term stalls at 2048; fp32 accumulation does not."""
    x = np.ones((1, 4096), np.float16)
    w = np.ones((4096, 1), np.float16)
    (out,) = run_mil(lambda x, w: mb.matmul(x=x, y=w), {"x": x, "w": w})
    assert out.dtype == np.float16 and out[0, 0] == 4096


def test_nan_and_inf_propagate(run_mil):
    x = np.array([[np.nan, 1.0, np.inf, -np.inf]], np.float32)
    soft, summed, relu = run_mil(lambda x: [mb.softmax(x=x, axis=-1), mb.reduce_sum(x=x, axes=[1]), mb.relu(x=x)],
                                 {"x": x})
    assert np.isnan(soft).all()
    assert np.isnan(summed).all()
    assert np.isnan(relu[0, 0]) and relu[0, 2] == np.inf and relu[0, 3] == 0



# ---- what the executor refuses -----------------------------------------------------------------

def test_unimplemented_operation_is_named_with_its_opset(run_mil, monkeypatch):
    monkeypatch.delitem(KERNELS, "conv_transpose")  # every registered op has a kernel now
    x = np.ones((1, 2, 5), np.float32)
    with pytest.raises(UnsupportedOperation, match=r"conv_transpose \(opset iOS17\) .*not implemented"):
        run_mil(lambda x: mb.conv_transpose(x=x, weight=np.ones((2, 2, 3), np.float32)), {"x": x})


def test_unimplemented_parameter_value_is_named(run_mil):
    x = np.ones((1, 1, 2, 2), np.float32)
    with pytest.raises(UnsupportedOperation, match=r"resize \(opset iOS17\) .*parameter 'sampling_mode'"):
        run_mil(lambda x: mb.resize(x=x, shape=np.array([3, 3], np.int32), resized_dims=np.uint32(2),
                                    interpolation_mode="NEAREST_NEIGHBOR", sampling_mode="ALIGN_CORNERS"), {"x": x})


def test_unimplemented_parameter_is_refused_when_loading(run_mil, monkeypatch):
    monkeypatch.setitem(KERNELS, "relu", lambda data: data)  # a kernel that knows no 'x'
    with pytest.raises(UnsupportedOperation, match=r"relu \(opset iOS17\) .*parameter 'x' not implemented"):
        run_mil(lambda x: mb.relu(x=x), {"x": np.ones((3,), np.float32)})


def test_inputs_convert_to_their_declared_types():
    """Core ML's predict converts: floats to int32 truncate toward zero, float64 rounds to fp16,
    lists become arrays; what no conversion fits is refused."""
    specs = {"i": mb.placeholder(shape=(4,), dtype=types.int32), "h": mb.placeholder(shape=(2,), dtype=types.fp16),
             "s": mb.placeholder(shape=(1,), dtype=types.fp32)}
    with Function(specs, ct.target.iOS17) as function:
        outputs = [mb.identity(x=function.inputs[name]) for name in ("i", "h", "s")]
        function.set_outputs(outputs)
    program = Program()
    program.add_function("main", function)
    model = MILModel(program)
    result = model.predict({"i": [1.7, -1.7, 2.0, 0.2], "h": np.array([1 / 3, 70000.0]), "s": [2.5]})
    as_int, as_half, scalar = (result[v.name] for v in outputs)
    assert as_int.dtype == np.int32 and as_int.tolist() == [1, -1, 2, 0]
    assert as_half.dtype == np.float16 and as_half[0] == np.float16(1 / 3) and np.isinf(as_half[1])
    assert scalar.dtype == np.float32 and scalar.tolist() == [2.5]
    with pytest.raises(InputMismatch, match=r"'i' holds values outside int32's range.*'s' is a str"):
        model.predict({"i": [2.0**40, 0, 0, 0], "h": [0, 0], "s": "2.5"})
