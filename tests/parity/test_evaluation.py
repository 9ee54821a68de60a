"""A data set of the user's (``--manifest``), one test per utterance: NeMo on the whole
utterance, NeMo on the export's windows and the export on them. Each record travels in the test
report (``reports.plugin.send``), so the plugin writes the same ``evaluation`` block with and
without ``-n``; the last test is the set's gate (the export's WER at most ``--max-wer-difference``
points from NeMo's on the same windows), judged on every utterance's record."""

from __future__ import annotations

import pytest

from reports.kinds import BadLine, UtteranceRecord
from reports.plugin import gathered_after, send
from tests.parity.conftest import NO_DATA_SET
from validation.audio import AudioError
from validation.checks import CONFIDENT_MEDIAN_PROB, tolerated_margin
from validation.evaluation import BadInput, unexplained_difference

pytestmark = pytest.mark.parity


def test_utterance(utterance, evaluate_one, evaluation_context, tolerances, pytestconfig):
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
    else:  # fp16, or a model whose decisions are close: it may depart, but only after a close call of NeMo's
        assert unexplained_difference(record, "export", tolerated_margin(tolerances)) is None


def test_the_set_meets_its_wer_gate(evaluation_context, request, pytestconfig):
    """Run last (``conftest.pytest_collection_modifyitems``): with ``-n`` it waits for the
    utterances other workers evaluate."""
    if pytestconfig.option.manifest is None:
        pytest.skip(NO_DATA_SET)
    utterances = [item.nodeid for item in request.session.items if item.originalname == "test_utterance"]
    block, records = gathered_after(pytestconfig, utterances).evaluation_block()
    assert block["status"] == "passed", (f"the set of {len(records)} utterance(s) fails its gate: "
                                         + "; ".join(block["failures"]))
