"""The contract table is the one home of per-component facts: the check tables, step axes,
headline outputs and the decode set derive from it, and the tolerance table must cover it."""

from __future__ import annotations

import dataclasses

import pytest

from exporters.components import (
    COMPONENTS,
    DECODE,
    FAMILIES,
    LENGTH,
    PORT_DESCRIPTIONS,
    STREAMING_COMPONENTS,
    family_of,
)
from infra.errors import UserError
from validation.checks import DECISION_CHECKS, FUSED_CHECKS, STEP_AXES, TORCH_CHECKS
from validation.metrics import Tolerance
from validation.tolerances import DEFAULT_TOLERANCES, EXACT, check_coverage


def test_the_check_tables_are_those_of_the_released_contract():
    assert TORCH_CHECKS == {
        "preprocessor.mel": ("preprocessor", "mel"), "preprocessor.mel_length": ("preprocessor", "mel_length"),
        "encoder.encoder": ("encoder", "encoder"), "encoder.encoder_length": ("encoder", "encoder_length"),
        "mel_encoder.encoder": ("mel_encoder", "encoder"),
        "mel_encoder.encoder_length": ("mel_encoder", "encoder_length"),
        "decoder.decoder": ("decoder", "decoder"), "decoder.h_out": ("decoder", "h_out"),
        "decoder.c_out": ("decoder", "c_out"), "decoder.logits": ("decoder", "logits"),
        "joint.logits": ("joint", "logits"), "joint_decision.token_prob": ("joint_decision", "token_prob"),
        "joint_decision_single_step.token_prob": ("joint_decision_single_step", "token_prob"),
        "ctc_head.ctc_logits": ("ctc_head", "ctc_logits"),
    }
    assert DECISION_CHECKS == {"decisions.joint": "joint", "decisions.joint_decision": "joint_decision",
                               "decisions.joint_decision_single_step": "joint_decision_single_step",
                               "decisions.ctc_head": "ctc_head"}
    assert FUSED_CHECKS == {"fused.mel_encoder.encoder": "mel_encoder", "fused.joint_decision": "joint_decision",
                            "fused.joint_decision_single_step": "joint_decision_single_step"}
    assert STEP_AXES == {"preprocessor.mel": 2, "encoder.encoder": 2, "mel_encoder.encoder": 2,
                         "fused.mel_encoder.encoder": 2, "decoder.decoder": 0, "decoder.h_out": 0,
                         "decoder.c_out": 0, "decoder.logits": 0, "joint.logits": 1, "joint_decision.token_prob": 1,
                         "joint_decision_single_step.token_prob": 1, "fused.token_prob": 1,
                         "ctc_head.ctc_logits": 1}
    assert DECODE == ("mel_encoder", "decoder", "joint_decision_single_step")
    assert {name: c.headline for name, c in COMPONENTS.items()} == {
        "preprocessor": "mel", "encoder": "encoder", "mel_encoder": "encoder", "decoder": "decoder",
        "joint": "logits", "joint_decision": "token_prob", "joint_decision_single_step": "token_prob",
        "ctc_head": "ctc_logits"}


def test_every_length_is_compared_exactly_and_every_value_within_a_tolerance():
    for component in COMPONENTS.values():
        for port in component.output_ports:
            if port.tolerance:
                assert DEFAULT_TOLERANCES[port.tolerance].exact == (port.role == LENGTH), port.tolerance


def test_a_declared_output_without_a_tolerance_is_an_error():
    table = {key: tol for key, tol in DEFAULT_TOLERANCES.items() if key != "joint.logits"}
    with pytest.raises(ValueError, match="no tolerance for 'joint.logits'"):
        check_coverage(table)


def test_a_tolerance_no_output_declares_is_an_error():
    with pytest.raises(ValueError, match="'joint.typo' is declared by no output"):
        check_coverage({**DEFAULT_TOLERANCES, "joint.typo": Tolerance(0.1, 0.01)})


def test_a_length_must_be_exact_and_a_value_must_not():
    with pytest.raises(ValueError, match="'encoder.encoder_length' must be exact"):
        check_coverage({**DEFAULT_TOLERANCES, "encoder.encoder_length": Tolerance(1.0, 0.0)})
    with pytest.raises(ValueError, match="'encoder.encoder' must not be exact"):
        check_coverage({**DEFAULT_TOLERANCES, "encoder.encoder": EXACT})


def test_a_new_output_without_a_tolerance_fails_the_coverage_check():
    joint = COMPONENTS["joint"]
    extra = dataclasses.replace(joint.output_ports[0], name="extra", tolerance="joint.extra")
    components = {**COMPONENTS, "joint": dataclasses.replace(joint, output_ports=(*joint.output_ports, extra))}
    with pytest.raises(ValueError, match="no tolerance for 'joint.extra'"):
        check_coverage(DEFAULT_TOLERANCES, components)


def test_a_headline_must_be_a_value_output():
    joint_decision = COMPONENTS["joint_decision"]
    with pytest.raises(ValueError, match="headline 'token_id'"):
        dataclasses.replace(joint_decision, headline="token_id")


def test_every_port_of_every_component_has_its_description_and_no_other_is_kept():
    """The packages carry these into their own metadata (Xcode shows them)."""
    ports = {p.name for c in [*COMPONENTS.values(), *STREAMING_COMPONENTS.values()]
             for p in (*c.input_ports, *c.output_ports, *c.state_ports)}
    assert set(PORT_DESCRIPTIONS) == ports
    assert all(len(text) > 20 for text in PORT_DESCRIPTIONS.values())


def test_each_family_exports_its_heads_components_and_v3_keeps_the_released_seven():
    names = {name: [c.name for c in family.components()] for name, family in FAMILIES.items()}
    front = ["preprocessor", "encoder", "mel_encoder"]
    assert names["tdt"] == front + ["decoder", "joint", "joint_decision", "joint_decision_single_step"]
    assert names["rnnt"] == front + ["decoder", "joint"]
    assert names["ctc"] == front + ["ctc_head"]
    assert names["tdt_ctc"] == names["tdt"] + ["ctc_head"]
    assert names["rnnt_ctc"] == names["rnnt"] + ["ctc_head"]
    decode = {name: family.decode for name, family in FAMILIES.items()}
    assert decode == {"tdt": DECODE, "rnnt": ("mel_encoder", "decoder"), "ctc": ("mel_encoder", "ctc_head"),
                      "tdt_ctc": DECODE + ("ctc_head",), "rnnt_ctc": ("mel_encoder", "decoder", "ctc_head")}
    assert {name: f.decodings for name, f in FAMILIES.items()} == {
        "tdt": ("tdt",), "rnnt": ("rnnt",), "ctc": ("ctc",), "tdt_ctc": ("tdt", "ctc"), "rnnt_ctc": ("rnnt", "ctc")}


def test_heads_no_family_has_are_refused_with_the_families():
    with pytest.raises(UserError, match=r"no model family has the heads \['durations'\]; the families: tdt "):
        family_of({"durations"})
