"""Where the session's fp16 packages are predicted to run on ``--chip``'s Neural Engine
(``validation.neural_engine``), the prediction going into the report; on macOS, the same packages'
compute plan from Core ML itself, op by op: where they differ, Core ML is right and the rule
table needs a rule."""

from __future__ import annotations

import pytest

from exporters.components import COMPONENTS
from reports.kinds import NeuralEnginePlacement
from reports.plugin import send
from runtimes.coreml import compute_plan_devices, unavailable_reason
from validation.neural_engine import CPU, NEURAL_ENGINE, agreement, predict_package

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def placed(session_exporters, pytestconfig):
    """Component -> (package, its placement on ``--chip``); the report's block is sent once."""
    exporter = session_exporters["float16"]
    exported = {e.name: e for e in exporter.export_all()}
    placements = {name: (e.package, predict_package(e.package, pytestconfig.option.chip))
                  for name, e in exported.items()}
    send(pytestconfig, NeuralEnginePlacement(exporter.metadata(list(exported.values())),
                                             {name: p.as_dict() for name, (_, p) in placements.items()}))
    return placements


def test_the_decoders_lstm_is_off_the_neural_engine_and_the_encoders_arithmetic_on_it(placed):
    """What public compute plans of the released packages show: the LSTM has no Neural Engine
    kernel; the fp16 encoder's matrix products all run there."""
    decoder = placed["decoder"][1]
    lstms = [op for op in decoder.ops if op.op_type == "lstm"]
    assert lstms and all((op.device, op.rule) == (CPU, "no_kernel") for op in lstms)
    encoder = placed["encoder"][1].summary()
    assert encoder["neural_engine_flop_share"] > 0.99, encoder["first_off"]
    products = [op for op in placed["encoder"][1].ops if op.op_type in ("conv", "linear", "matmul")]
    assert products and all(op.device == NEURAL_ENGINE for op in products)


def test_no_op_kind_of_the_packages_is_unknown(placed):
    """Every op kind the converter emits for Parakeet has a rule: none is left to guess."""
    unknown = {name: p.summary()["unknown_kinds"] for name, (_, p) in placed.items()}
    assert not any(unknown.values()), unknown


def test_a_fused_front_ends_waveform_falls_off_where_its_window_exceeds_the_chips_limit(placed, dims, pytestconfig):
    """The preprocessor's [1, 240000] waveform (15 s at 16 kHz) is over every chip's limit."""
    ops = placed["preprocessor"][1].ops
    over = [op for op in ops if op.rule == "dimension_limit"]
    assert dims.max_audio_samples > 65_536 and over, [op.as_dict() for op in ops[:5]]
    assert f"a dimension of {dims.max_audio_samples:,}" in over[0].reason


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_the_prediction_is_core_mls_compute_plan(placed, component):
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"needs Core ML's compute plan: {reason}")
    if component not in placed:
        pytest.skip(f"{component}: the session's model has none (its family's components: {', '.join(placed)})")
    package, placement = placed[component]
    found = agreement(placement, compute_plan_devices(package))
    assert not found["not_in_plan"], f"ops the compute plan does not name: {found['not_in_plan'][:5]}"
    assert not found["differing"], (f"{component}: {len(found['differing'])} of {found['compared']} ops placed "
                                    f"otherwise by Core ML, e.g. {found['differing'][:3]}")
