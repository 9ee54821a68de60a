"""The held-out synthetic test set, evaluated (``validation.evaluation``) for the exports: fp32
transcripts identical to NeMo's on the same windows, fp16 and int8-per-channel WER within half a
point of NeMo's, and the trained model as good as its model card says. Runs on a confident
model (the default trained preset); on the random-weight presets it skips, saying why. The
``held_out`` fixture is the root conftest's."""

from __future__ import annotations

import pytest

from validation.tolerances import MAX_WER_DIFFERENCE_POINTS

pytestmark = pytest.mark.parity

LEARNED_WER = 0.20  # what the trained preset must reach with NeMo's greedy TDT


@pytest.fixture(autouse=True)
def _into_the_validation_block(parity_report):
    """The parity report exists before ``held_out`` runs, so its numbers reach metadata.json."""


def test_trained_model_has_learned(held_out):
    assert held_out.wer("nemo_full") <= LEARNED_WER, (
        f"NeMo's greedy TDT: WER {100 * held_out.wer('nemo_full'):.1f}% on the held-out set "
        f"(at most {100 * LEARNED_WER:.0f}%)")


def test_fp32_export_transcribes_exactly_like_nemo(held_out):
    assert held_out.failure("float32") is None, held_out.failure("float32")


@pytest.mark.parametrize("label", ["float16", "int8_per_channel"])
def test_export_wer_within_half_a_point_of_nemo(held_out, label):
    assert held_out.failure(label) is None, held_out.failure(label)
    assert abs(held_out.wer(label) - held_out.wer("nemo_windowed")) <= MAX_WER_DIFFERENCE_POINTS / 100
