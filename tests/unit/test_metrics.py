"""The comparison metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from validation.metrics import (
    Tolerance,
    WordErrors,
    compare,
    l2_per_step,
    max_rel,
    psnr_db,
    quality,
    token_edit_distance,
    top1_margin,
    word_error_rate,
    word_errors,
    word_flips,
)


def test_max_rel_is_zero_where_both_are_zero_and_symmetric():
    r = np.array([0.0, 1.0, -2.0, 4.0])
    c = np.array([0.0, 1.5, -2.0, 2.0])
    # |1-1.5|/1.5 = 1/3; |4-2|/4 = 1/2
    assert max_rel(r, c) == pytest.approx(0.5)
    assert max_rel(c, r) == pytest.approx(0.5)
    assert max_rel(np.zeros(3), np.zeros(3)) == 0.0


def test_psnr_of_a_known_error():
    r = np.array([2.0, -2.0, 1.0, 0.0])
    c = r + 0.02  # rmse 0.02, peak 2 -> 20*log10(100) = 40 dB
    assert psnr_db(r, c) == pytest.approx(40.0)
    assert psnr_db(r, r) == math.inf
    assert psnr_db(r, np.full(4, np.nan)) == -math.inf


def test_compare_counts_elements_outside_atol_plus_rtol_and_locates_the_worst():
    r = np.zeros((2, 3))
    r[1, 2] = 10.0
    c = r.copy()
    c[0, 1] = 0.05  # outside atol 0.01
    c[1, 2] = 10.05  # within 0.01 + 0.01*10
    result = compare(r, c, Tolerance(0.01, 0.01, psnr_floor_db=10.0))
    assert result.mismatches == 1 and not result.allclose and not result.match
    assert result.worst_index == (0, 1)
    assert result.worst_reference == 0.0 and result.worst_candidate == pytest.approx(0.05)
    assert result.max_abs == pytest.approx(0.05, rel=1e-6)
    (problem,) = result.problems()
    assert "1 of 6 elements outside atol 0.01, rtol 0.01" in problem and "index [0, 1]" in problem


def test_a_nan_is_a_mismatch_and_the_worst_element():
    r = np.ones(4, np.float32)
    c = r.copy()
    c[2] = np.nan
    result = compare(r, c, Tolerance(1.0, 1.0, psnr_floor_db=35.0))
    assert result.mismatches == 1 and result.worst_index == (2,)


def test_psnr_floor_fails_an_output_that_is_allclose():
    r = np.linspace(-1, 1, 100)
    c = r + 0.04  # allclose at atol 0.05, but PSNR = 20*log10(1/0.04) = 27.96 dB
    result = compare(r, c, Tolerance(0.05, 0.0, psnr_floor_db=35.0))
    assert result.allclose and not result.psnr_ok and not result.match
    assert "PSNR 27.96 dB below the floor of 35 dB" in result.problems()[0]


def test_exact_outputs_ignore_the_psnr_floor():
    ids = np.array([1, 2, 3], np.int32)
    assert compare(ids, ids, Tolerance(exact=True)).match
    result = compare(ids, np.array([1, 2, 4], np.int32), Tolerance(exact=True))
    assert result.mismatches == 1 and result.match_rate == pytest.approx(2 / 3)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match=r"shape \[3\] does not match the reference's \[2\]"):
        compare(np.zeros(2), np.zeros(3), Tolerance(1, 1, psnr_floor_db=35.0))


def test_a_value_tolerance_without_its_psnr_floor_is_refused():
    """Left to a default, a forgotten floor passed what it should fail."""
    with pytest.raises(ValueError, match="has no PSNR floor; take it from the tolerance table"):
        compare(np.zeros(2), np.zeros(2), Tolerance(0.05, 0.0))


def test_l2_per_step_and_margins():
    x = np.zeros((1, 2, 3))
    x[0, :, 1] = [3.0, 4.0]
    np.testing.assert_allclose(l2_per_step(x, 2), [0.0, 5.0, 0.0])
    np.testing.assert_allclose(top1_margin(np.array([[1.0, 5.0, 4.5], [0.0, 0.0, 2.0]])), [0.5, 2.0])


def test_token_edit_distance():
    assert token_edit_distance([1, 2, 3, 4], [1, 3, 4]) == 1
    assert token_edit_distance([1, 2], [2, 1]) == 2
    assert token_edit_distance([], [7]) == 1


def test_word_error_rate_counts_word_edits_over_reference_words():
    # one substitution, one deletion over 3 + 2 reference words; an insertion in the second pair
    assert word_error_rate(["the cat sat", "a dog"], ["the bat", "a big dog"]) == pytest.approx(3 / 5)
    assert word_error_rate(["same words"], ["same words"]) == 0.0
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


def test_quality_is_nan_for_a_non_finite_candidate_and_one_for_identical():
    reference = np.array([1.0, -2.0, 3.0])
    assert quality(reference, reference) == 1.0
    assert quality(reference, np.zeros(3)) == 0.0  # no better than silence
    assert math.isnan(quality(reference, np.array([1.0, np.nan, 3.0])))
    assert math.isnan(quality(reference, np.array([np.inf, -2.0, 3.0])))


@pytest.mark.parametrize("normalizer, reference, hypothesis, errors", [
    ("none", "Hello, world.", "hello world", 2),  # case and punctuation count as they are
    ("basic", "Hello, world.", "hello world", 0),
    ("whisper-english", "It is twelve o'clock, Mr. Smith.", "it is 12 o'clock mister smith", 0),
])
def test_wer_after_each_normaliser(normalizer, reference, hypothesis, errors):
    assert word_errors(reference, hypothesis, normalizer).errors == errors


def test_word_errors_count_each_kind():
    found = word_errors("one two three four five", "one too three five five six")
    assert (found.substitutions, found.deletions, found.insertions, found.words) == (2, 0, 1, 5)
    assert word_errors("one two three four five", "one three four five").deletions == 1
    assert found.wer == pytest.approx(3 / 5)
    assert word_errors("", "noise") == WordErrors(0, 1, 0, 0)  # silence transcribed as a word


# -- word flips ----------------------------------------------------------------------------------

_BASELINE = [("The", 0.0, 0.99), ("cat", 0.4, 0.95), ("sat", 0.8, 0.9), ("down.", 1.2, 0.97)]


def test_a_transcript_that_differs_only_in_case_and_punctuation_flips_no_word():
    assert word_flips(_BASELINE, [("the", 0.0, 0.5), ("cat,", 0.4, 0.5), ("sat", 0.8, 0.5), ("down", 1.2, 0.5)]) == []


def test_a_substituted_word_keeps_its_position_time_and_both_confidences():
    candidate = [("the", 0.0, 0.99), ("cap", 0.44, 0.885), ("sat", 0.8, 0.9), ("down", 1.2, 0.97)]
    assert word_flips(_BASELINE, candidate) == [
        {"kind": "substitute", "position": 1, "time_s": 0.44, "was": "cat", "now": "cap", "confidence": 0.885,
         "baseline_confidence": 0.95}]


def test_dropped_and_inserted_words_are_flips_placed_in_the_baseline():
    dropped = [("the", 0.0, 0.99), ("cat", 0.4, 0.95), ("down", 1.2, 0.97)]
    assert word_flips(_BASELINE, dropped) == [
        {"kind": "delete", "position": 2, "time_s": 0.8, "was": "sat", "now": None, "confidence": None,
         "baseline_confidence": 0.9}]
    added = [*_BASELINE, ("again", 1.6, 0.6)]
    assert word_flips(_BASELINE, added) == [
        {"kind": "insert", "position": 4, "time_s": 1.6, "was": None, "now": "again", "confidence": 0.6,
         "baseline_confidence": None}]


def test_an_empty_transcript_drops_every_word():
    assert [f["was"] for f in word_flips(_BASELINE, [])] == ["the", "cat", "sat", "down"]
