"""The fp32 shadow of an fp16 program: overflows, exponentials the Neural Engine would overflow,
integers past fp16's exact range, and the deviation of fp16 from its shadow, each on a small
program that reproduces it."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import get_new_symbol, types

from runtimes.mil.model import MILModel
from validation.ranges import RangeReport, package_ranges


def _program(shape, build, dtype=types.fp16):
    @mb.program(input_specs=[mb.TensorSpec(shape=shape, dtype=dtype)], opset_version=ct.target.iOS17)
    def program(x):
        return build(x)

    return program


def _by_type(report: RangeReport) -> dict:
    return {entry.op_type: entry for entry in report.ops.values()}


def test_a_value_past_65504_is_an_overflow_the_shadow_sees():
    program = _program((1, 4), lambda x: mb.mul(x=x, y=np.float16(1000.0)))
    report = package_ranges(program, [{"x": np.array([[1, 2, 3, 100]], np.float16)}])
    mul = _by_type(report)["mul"]
    assert mul.max_abs == pytest.approx(100_000)
    assert report.overflows() == [next(iter(report.ops))]
    assert mul.risks() == ["overflow: fp32 values reach 1e+05 > 65504, fp16's largest"]
    quiet = package_ranges(program, [{"x": np.array([[1, 2, 3, 60]], np.float16)}])
    assert not quiet.overflows() and not quiet.flagged()


def test_a_logsumexp_of_large_values_is_flagged_as_the_neural_engine_would_overflow_it():
    """coremltools issue 2690: over C = 32 terms, the Neural Engine's output drops to 0 past
    log(65504 / 32), about 7.62 (measured there at 7.63); the CPU path subtracts the maximum."""
    program = _program((1, 32), lambda x: mb.reduce_log_sum_exp(x=mb.mul(x=x, y=np.float16(1.0)), axes=[-1]))
    values = np.zeros((1, 32), np.float16)
    values[0, 3] = 8.0
    risks = _by_type(package_ranges(program, [{"x": values}]))["reduce_log_sum_exp"].risks()
    assert risks == ["unstabilised exponential: its input reaches 8, past log(65504 / 32) = 7.62 where exp without "
                     "the maximum subtracted overflows (as on the Neural Engine)"]
    assert not _by_type(package_ranges(program, [{"x": values / 2}]))["reduce_log_sum_exp"].risks()


def test_a_log_of_a_softmax_that_underflows_in_fp16_is_infinite_there_and_finite_in_the_shadow():
    """coremltools issue 2728: log_softmax as log(softmax(x)) with one dominant class gives -inf."""
    program = _program((1, 8), lambda x: mb.log(x=mb.softmax(x=x, axis=-1)))
    logits = np.zeros((1, 8), np.float16)
    logits[0, 3] = 30.0
    ops = _by_type(package_ranges(program, [{"x": logits}]))
    assert ops["log"].infinite_in_fp16 == 7 and ops["log"].risks()[0].startswith("infinite in fp16: 7 value(s)")
    assert not ops["softmax"].risks()  # the softmax itself subtracts the maximum


def test_a_token_id_over_2048_carried_in_fp16_is_flagged():
    """The argmax of 8,193 classes, cast to fp16: 8,191 is carried as 8,192."""
    program = _program((1, 8193), lambda x: mb.cast(x=mb.reduce_argmax(x=x, axis=-1), dtype="fp16"))
    logits = np.zeros((1, 8193), np.float16)
    logits[0, 8191] = 1.0
    report = package_ranges(program, [{"x": logits}])
    cast = _by_type(report)["cast"]
    assert cast.integer_max == 8191 and cast.risks() == [
        "integers through fp16: whole numbers up to 8191 in an fp16 tensor (exact only up to 2,048)"]
    assert cast.deviation == pytest.approx(1 / 8191)  # 8,192 against 8,191
    small = np.zeros((1, 8193), np.float16)
    small[0, 7] = 1.0
    assert not package_ranges(program, [{"x": small}]).flagged()


def test_the_shadow_leaves_the_programs_own_results_as_they_were():
    program = _program((1, 8), lambda x: mb.exp(x=mb.mul(x=x, y=np.float16(3.0))))
    x = {"x": np.linspace(-2, 2, 8, dtype=np.float16)[None]}
    model = MILModel(program)
    before = model.predict(x)
    model.shadow(x, lambda *observed: None)
    after = model.predict(x)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    seen = []
    model.shadow(x, lambda op_type, name, declared, shadow, reads, dtype: seen.append(
        (op_type, dtype, bool(np.array_equal(declared, shadow)))))
    assert [(t, d) for t, d, _ in seen] == [("mul", np.float16), ("exp", np.float16)]
    assert not seen[1][2]  # exp of fp16-rounded values differs from its fp32 shadow


def test_the_block_names_the_flagged_op_and_its_module():
    program = _program((1, 4), lambda x: mb.mul(x=x, y=np.float16(1000.0)))
    report = package_ranges(program, [{"x": np.array([[1, 2, 3, 100]], np.float16)}])
    name = next(iter(report.ops))
    block = report.block({name: "joint.joint_net.2"})
    assert block["overflows"] == [name] and block["flagged"][0]["module"] == "joint.joint_net.2"
    assert block["inputs"] == 1 and block["largest"] == pytest.approx(100_000)


def _length_through_int16():
    """A flexible waveform's length read from its shape, through int16 as add_int16_cast leaves it."""
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, get_new_symbol()), dtype=types.fp16)],
                opset_version=ct.target.iOS17)
    def program(x):
        return mb.cast(x=mb.gather(x=mb.cast(x=mb.shape(x=x), dtype="int16"), indices=1), dtype="int32")

    return program


def test_a_length_past_32767_through_int16_comes_out_intact_and_is_flagged_as_device_dependent():
    """It used to wrap to -25,536 in the executor, and the time mask of another converter's fp16
    preprocessor came out empty: no real clip could be checked."""
    program, samples = _length_through_int16(), {"x": np.zeros((1, 40_000), np.float16)}
    (length,) = MILModel(program).predict(samples).values()
    assert int(length) == 40_000
    report = package_ranges(program, [samples])
    narrowed = [risk for risks in report.flagged().values() for risk in risks]
    assert narrowed == ["narrowed integer: values up to 40,000 cast to int16 (at most 32,767): Core ML is reported "
                        "to return them intact (apple/coremltools issue 2222), others saw them wrap: device-dependent"]
    assert not package_ranges(program, [{"x": np.zeros((1, 30_000), np.float16)}]).flagged()


def test_an_fp32_op_of_a_mixed_program_has_fp32s_range():
    """A mixed package's front end computes in fp32: its large values are no fp16 risk."""
    program = _program((1, 4), lambda x: mb.cast(x=mb.mul(x=x, y=np.float32(1000.0)), dtype="fp16"),
                       dtype=types.fp32)
    report = package_ranges(program, [{"x": np.array([[1, 2, 3, 50]], np.float32)}])
    assert _by_type(report)["mul"].max_abs == 0 and _by_type(report)["cast"].max_abs == 50_000
    assert not report.overflows()
