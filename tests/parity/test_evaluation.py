"""A data set of the user's (``--manifest``), one test per utterance: NeMo on the whole
utterance, NeMo on the export's windows and the export on them. Each record travels in the test
report (``reports.plugin.send``), so the plugin writes the same ``evaluation`` block with and
without ``-n``, and fails the session when the set's gate fails (the export's WER more than
``--max-wer-difference`` points from NeMo's on the same windows)."""

from __future__ import annotations

import pytest

from reports.kinds import BadLine, UtteranceRecord
from reports.plugin import send
from validation.audio import AudioError
from validation.checks import CONFIDENT_MEDIAN_PROB
from validation.evaluation import BadInput

pytestmark = pytest.mark.parity


def test_utterance(utterance, evaluate_one, evaluation_context, pytestconfig):
    if isinstance(utterance, BadInput):
        send(pytestconfig, BadLine(utterance.where, utterance.reason))
        pytest.fail(f"unusable manifest line {utterance}")
    try:
        record = evaluate_one(utterance)
    except AudioError as e:
        send(pytestconfig, BadLine(utterance.key, str(e)))
        pytest.fail(f"{utterance.key}: {e}")
    send(pytestconfig, UtteranceRecord(record))
    probs = sorted(record["token_probs"])
    confident = bool(probs) and probs[len(probs) // 2] > CONFIDENT_MEDIAN_PROB
    if evaluation_context.compute_precision == "float32" and confident:
        assert record["identical"]["export"], (
            f"fp32 export differs from NeMo on the same windows: {record['first_difference']['export']}")
