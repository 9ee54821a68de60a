"""The held-out synthetic test set, evaluated (``validation.evaluation``) for the exports: fp32
transcripts identical to NeMo's on the same windows, fp16 and int8-per-channel WER within half a
point of NeMo's, and the trained model as good as its model card says; for a hybrid the same of
its CTC head's greedy CTC. Runs on a confident model (the default trained preset); on the
random-weight presets it skips, saying why. The ``held_out`` fixtures are the root conftest's."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporters.presets import TRAINED_PRESETS
from validation.tolerances import MAX_WER_DIFFERENCE_POINTS

pytestmark = pytest.mark.parity

LEARNED_WER = 0.20  # what any confident model must reach with NeMo's greedy TDT on this set
SHIPPED_TEST_MODEL = TRAINED_PRESETS["parakeet-tdt-tiny-trained"]
SHIPPED_HELD_OUT_WER = 0.01  # the shipped test model's target (its model card)


def shipped_test_model(model_source) -> bool:
    return model_source.kind == "nemo" and Path(model_source.value).resolve() == SHIPPED_TEST_MODEL.resolve()


@pytest.fixture(autouse=True)
def _into_the_validation_block(parity_report):
    """The parity report exists before ``held_out`` runs, so its numbers reach metadata.json."""


def test_trained_model_has_learned(held_out):
    assert held_out.wer("nemo_full") <= LEARNED_WER, (
        f"NeMo's greedy TDT: WER {100 * held_out.wer('nemo_full'):.1f}% on the held-out set "
        f"(at most {100 * LEARNED_WER:.0f}%)")


def test_the_shipped_test_model_transcribes_the_held_out_set_as_its_card_says(held_out, model_source):
    if not shipped_test_model(model_source):
        pytest.skip("the model card's targets are those of the shipped test model (--preset parakeet-tdt-tiny-trained)")
    assert held_out.wer("nemo_full") <= SHIPPED_HELD_OUT_WER, (
        f"NeMo's greedy TDT: WER {100 * held_out.wer('nemo_full'):.2f}% on the held-out set "
        f"(at most {100 * SHIPPED_HELD_OUT_WER:.0f}%)")


def test_fp32_export_transcribes_exactly_like_nemo(held_out):
    assert held_out.failure("float32") is None, held_out.failure("float32")


@pytest.mark.parametrize("label", ["float16", "int8_per_channel"])
def test_export_wer_within_half_a_point_of_nemo(held_out, label):
    assert held_out.failure(label) is None, held_out.failure(label)
    assert abs(held_out.wer(label) - held_out.wer("nemo_windowed")) <= MAX_WER_DIFFERENCE_POINTS / 100


def test_a_hybrids_ctc_head_has_learned(held_out_ctc):
    assert held_out_ctc.wer("nemo_full") <= LEARNED_WER, (
        f"NeMo's greedy CTC: WER {100 * held_out_ctc.wer('nemo_full'):.1f}% on the held-out set "
        f"(at most {100 * LEARNED_WER:.0f}%)")


def test_a_hybrids_fp32_ctc_export_transcribes_exactly_like_nemo(held_out_ctc):
    assert held_out_ctc.failure("float32") is None, held_out_ctc.failure("float32")


def test_a_hybrids_fp16_ctc_export_wer_within_half_a_point_of_nemo(held_out_ctc):
    assert held_out_ctc.failure("float16") is None, held_out_ctc.failure("float16")
    assert abs(held_out_ctc.wer("float16") - held_out_ctc.wer("nemo_windowed")) <= MAX_WER_DIFFERENCE_POINTS / 100
