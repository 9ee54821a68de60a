"""The Neural Engine placement prediction on small programs that reproduce each public failure:
each op placed by the rule its evidence gives, its FLOPs counted by hand, an op kind no rule
knows left unknown."""

from __future__ import annotations

import json

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import get_new_symbol, types

from reports.neural_engine import describe_placement, placement_block
from validation.neural_engine import (
    CHIPS,
    CPU,
    NEURAL_ENGINE,
    UNKNOWN,
    Placement,
    agreement,
    predict_placement,
    rule_sources,
)

IOS17, IOS18 = ct.target.iOS17, ct.target.iOS18


def _program(shape, build, dtype=types.fp16, opset=IOS17):
    @mb.program(input_specs=[mb.TensorSpec(shape=shape, dtype=dtype)], opset_version=opset)
    def program(x):
        return build(x)

    return program


def _placed(program, chip="A17"):
    placement = predict_placement(program, chip)
    return {op.op_type: op for op in placement.ops if op.device != "none"}, placement


def test_a_waveform_of_240000_samples_falls_off_on_every_chip():
    program = _program((1, 240_000), lambda x: mb.mul(x=x, y=np.float16(2.0)))
    for chip in CHIPS:
        ops, _ = _placed(program, chip)
        assert ops["mul"].device == CPU and ops["mul"].rule == "dimension_limit", chip
        assert f"a dimension of 240,000 > {CHIPS[chip].max_dimension:,}" in ops["mul"].reason


def test_thirty_thousand_samples_fit_an_a16_but_not_an_a15():
    program = _program((1, 30_000), lambda x: mb.mul(x=x, y=np.float16(2.0)))
    assert _placed(program, "A15")[0]["mul"].device == CPU
    assert _placed(program, "M1")[0]["mul"].device == CPU
    assert _placed(program, "A16")[0]["mul"].device == NEURAL_ENGINE
    assert _placed(program, "M4")[0]["mul"].device == NEURAL_ENGINE


def test_token_ids_over_2048_are_not_an_argmax_the_neural_engine_takes_and_lose_exactness_in_fp16():
    """A joint's argmax over 8,193 classes, its index cast to fp16: 8,191 would come out 8,192."""
    program = _program((1, 8193), lambda x: mb.cast(x=mb.reduce_argmax(x=x, axis=-1), dtype="fp16"))
    ops, placement = _placed(program)
    assert (ops["reduce_argmax"].device, ops["reduce_argmax"].rule) == (CPU, "wide_arg_reduction")
    assert "over 8,193 values > 2,048" in ops["reduce_argmax"].reason
    assert ops["cast"].risks and ops["cast"].risks[0].startswith("integers_through_fp16: indices of reduce_argmax")
    assert np.float16(8191) == 8192  # the evidence itself
    narrow = _program((1, 1024), lambda x: mb.cast(x=mb.reduce_argmax(x=x, axis=-1), dtype="fp16"))
    ops, _ = _placed(narrow)
    assert ops["reduce_argmax"].device == NEURAL_ENGINE and not ops["cast"].risks


def test_log_softmax_and_logsumexp_are_flagged_as_overflowing_on_the_neural_engine():
    ops, placement = _placed(_program((1, 64), lambda x: mb.log(x=mb.softmax(x=x, axis=-1))))
    assert ops["log"].risks == ("unstable_exponential: log of a softmax (log_softmax): small probabilities "
                                "underflow in fp16 and give -inf",)
    assert not ops["softmax"].risks
    ops, _ = _placed(_program((1, 32), lambda x: mb.reduce_log_sum_exp(x=x, axes=[-1])))
    assert ops["reduce_log_sum_exp"].risks[0].startswith("unstable_exponential: reduce_log_sum_exp without")
    assert [r["op_type"] for r in placement.summary()["risks"]] == ["log"]


def test_an_lstm_runs_on_the_cpu():
    hidden, features = 8, 4

    def build(x):
        zeros = np.zeros((1, hidden), np.float32)
        weights = {"weight_ih": np.zeros((4 * hidden, features), np.float32),
                   "weight_hh": np.zeros((4 * hidden, hidden), np.float32)}
        return mb.lstm(x=x, initial_h=zeros, initial_c=zeros, output_sequence=True, **weights)[0]

    ops, placement = _placed(_program((5, 1, features), build, dtype=types.fp32))
    assert (ops["lstm"].device, ops["lstm"].rule) == (CPU, "no_kernel")
    assert ops["lstm"].flops == 2 * 4 * hidden * (features + hidden) * 5  # four gates, five steps
    assert placement.summary()["first_off"]["op_type"] == "lstm"


def test_a_flexible_input_is_a_dynamic_shape():
    program = _program((1, get_new_symbol()), lambda x: mb.mul(x=x, y=np.float16(2.0)))
    ops, _ = _placed(program)
    assert ops["mul"].rule == "dynamic_shape"


def test_an_op_kind_no_rule_knows_is_unknown_not_guessed():
    ops, placement = _placed(_program((1, 16), lambda x: mb.erf(x=x)))
    assert (ops["erf"].device, ops["erf"].rule) == (UNKNOWN, "unknown")
    assert placement.summary()["unknown_kinds"] == ["erf"]


def test_an_fp32_program_computes_off_the_neural_engine_and_its_edges_are_casts():
    ops, placement = _placed(_program((1, 16), lambda x: mb.relu(x=x), dtype=types.fp32))
    assert (ops["relu"].device, ops["relu"].rule) == (CPU, "not_fp16")
    fp16 = predict_placement(_program((1, 16), lambda x: mb.relu(x=mb.cast(x=x, dtype="fp16")), dtype=types.fp32))
    rules = {op.op_type: op.rule for op in fp16.ops if op.device != "none"}
    assert rules == {"cast": "boundary_cast", "relu": "eligible"}
    assert fp16.summary()["first_off"] is None  # the cast at the edge is not the first op off inside


def test_blockwise_quantized_weights_push_the_op_off():
    def build(x):
        data = mb.constexpr_blockwise_shift_scale(data=np.zeros((32, 64), np.int8),
                                                   scale=np.ones((32, 2), np.float16))
        return mb.linear(x=x, weight=data)

    ops, _ = _placed(_program((1, 64), build, opset=IOS18))
    assert (ops["linear"].device, ops["linear"].rule) == (CPU, "blockwise_weights")


def test_flops_of_the_matrix_products_and_the_transitions_between_devices():
    def build(x):  # [1, 10, 64]: linear to 32, matmul with its own transpose, then a conv
        y = mb.linear(x=x, weight=np.zeros((32, 64), np.float16))
        z = mb.matmul(x=y, y=mb.transpose(x=y, perm=[0, 2, 1]))  # [1, 10, 10], inner 32
        w = mb.conv(x=mb.expand_dims(x=z, axes=[-1]), weight=np.zeros((6, 10, 3, 1), np.float16), pad_type="same")
        return mb.cast(x=mb.reduce_argmax(x=w, axis=1), dtype="fp16")

    ops, placement = _placed(_program((1, 10, 64), build))
    assert ops["linear"].flops == 2 * 10 * 32 * 64
    assert ops["matmul"].flops == 2 * 10 * 10 * 32
    assert ops["conv"].flops == 2 * (6 * 10 * 1) * (10 * 3 * 1)
    assert ops["transpose"].flops == 0
    summary = placement.summary()
    assert summary["flops"] == sum(op.flops for op in placement.ops)
    # the argmax's int32 index is the engine's own; casting it is not
    assert summary["by_device"] == {NEURAL_ENGINE: 6, CPU: 1} and summary["transitions"] == 1
    assert summary["first_off"]["op_type"] == "cast"


def test_every_rule_names_its_evidence():
    sources = rule_sources()
    assert all(text.strip() for text in sources.values())
    assert {"placement:dimension_limit", "placement:no_kernel", "risk:unstable_exponential",
            "eligible:conv"} <= set(sources)


def test_an_unknown_chip_is_refused():
    with pytest.raises(ValueError, match="unknown chip 'A13'; expected one of: A14"):
        predict_placement(_program((1, 4), lambda x: mb.relu(x=x)), "A13")


def test_the_prediction_meets_core_mls_plan_op_by_op_by_output_name():
    """What the macOS test reads: an op off where Core ML puts it on the Neural Engine (or the
    reverse) is a difference naming the rule that decided; constants are not compared."""
    placement = predict_placement(_program((1, 16), lambda x: mb.relu(x=mb.cast(x=x, dtype="fp16")),
                                           dtype=types.fp32))
    ops = {op.op_type: op for op in placement.ops}
    planned = {ops["cast"].output: "CPU", ops["relu"].output: "NeuralEngine"}
    assert agreement(placement, planned) == {"compared": 2, "agreeing": 2, "share": 1.0, "differing": [],
                                             "not_in_plan": []}
    planned[ops["relu"].output] = "CPU"
    found = agreement(placement, planned)
    assert found["agreeing"] == 1 and found["differing"] == [{
        "op": ops["relu"].output, "op_type": "relu", "predicted": NEURAL_ENGINE, "core_ml": "CPU",
        "rule": "eligible", "reason": "relu: a kind the Neural Engine runs"}]
    assert agreement(placement, {})["not_in_plan"] == [ops["cast"].output, ops["relu"].output]


def test_a_placement_survives_the_trip_through_a_test_report():
    placement = predict_placement(_program((1, 64), lambda x: mb.log(x=mb.softmax(x=x, axis=-1))))
    assert Placement.from_dict(json.loads(json.dumps(placement.as_dict()))) == placement


def test_the_block_says_it_is_a_prediction_and_carries_core_mls_agreement_where_measured():
    placement = predict_placement(_program((1, 16), lambda x: mb.relu(x=mb.cast(x=x, dtype="fp16")),
                                           dtype=types.fp32))
    ops = {op.op_type: op for op in placement.ops}
    measured = agreement(placement, {ops["cast"].output: "CPU", ops["relu"].output: "CPU"})
    block = placement_block({"joint": placement}, {"joint": measured})
    assert "a prediction from public evidence" in block["prediction"] and block["chip"] == "A17"
    assert block["components"]["joint"]["core_ml_agreement"]["agreeing"] == 1
    assert describe_placement(block) == ["joint: 1 of 2 ops, 100% of FLOPs, 1 transition(s); none off inside; "
                                         "1 cast(s) at its edges off it; Core ML's compute plan agrees on 1 of 2"]
    assert "core_ml_agreement" not in placement_block({"joint": placement})["components"]["joint"]
