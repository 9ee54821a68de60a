"""Each exported component against the NeMo/Torch reference, on speech and edge inputs.

One test per clip and check; the checks themselves (``validation.checks``) are shared with
``parakeet-coreml compare``. Failures say what was measured, the tolerance, where the worst
element sits and, on the mil backend, the first diverging operations.
"""

from __future__ import annotations

import pytest

from validation.checks import DECISION_CHECKS, FUSED_CHECKS, TORCH_CHECKS, TRANSCRIPT_CHECKS

pytestmark = pytest.mark.parity


def _check(run, key):
    result = run.results[key]
    if result.skipped:
        pytest.skip(f"{key}: {result.skipped}")
    assert result.passed, result.message()
    return result


@pytest.mark.parametrize("key", list(TORCH_CHECKS))
def test_output_matches_torch(parity, pytestconfig, clip_name, key):
    _check(parity(pytestconfig.option.compute_precision, clip_name), key)


@pytest.mark.parametrize("key", list(DECISION_CHECKS))
def test_decisions_agree_where_margins_are_clear(parity, pytestconfig, clip_name, key):
    result = _check(parity(pytestconfig.option.compute_precision, clip_name), key)
    assert result.decisions.decisive_frames > 0, "no frame had a clear margin: the check covered nothing"


@pytest.mark.parametrize("key", list(FUSED_CHECKS))
def test_fused_matches_separate(parity, pytestconfig, clip_name, key):
    _check(parity(pytestconfig.option.compute_precision, clip_name), key)


@pytest.mark.parametrize("precision", ["float32", "float16"])
@pytest.mark.parametrize("key", list(TRANSCRIPT_CHECKS))
def test_transcript_matches_nemo(parity, clip_name, precision, key):
    """Host-driven greedy decoding (TDT; CTC on a model with a CTC head) on the exported packages
    against NeMo's own: identical up to NeMo's first ambiguous decision (all of it for fp32 on a
    confident model)."""
    _check(parity(precision, clip_name), key)
