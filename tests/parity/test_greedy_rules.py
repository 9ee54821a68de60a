"""The host's greedy decoders follow NeMo's rules: driven by the Torch modules they must reproduce
NeMo's ``GreedyTDTInfer`` and its greedy CTC decoding exactly, token for token, frame for frame."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from exporters.sources import ModelSource
from exporters.wrappers import ctc_decoder, model_dims, wrapper
from validation.greedy import (
    MAX_SYMBOLS_PER_FRAME,
    decision_from_logits,
    greedy_ctc,
    greedy_tdt,
    nemo_greedy_ctc,
    nemo_greedy_tdt,
    run_torch,
    torch_decoder_step,
)

pytestmark = pytest.mark.parity

SEEDS = range(12)


def _torch_callables(model, dims, seen: Counter):
    decoder = wrapper("decoder", model)
    joint = wrapper("joint", model)

    def decide(frame, decoded):
        token, prob, duration, _, _ = decision_from_logits(run_torch(joint, frame, decoded)[0], dims)
        seen[(int(token.item()) == dims.blank_id, dims.durations[int(duration.item())])] += 1
        return int(token.item()), float(prob.item()), int(duration.item())

    return torch_decoder_step(decoder), decide


@contextmanager
def _biased_joint(model, dims, blank: float, duration_zero: float):
    """The random joint almost never says blank; raising the blank and duration-0 biases makes
    every kind of decision happen. The weights are restored afterwards."""
    bias = model.joint.joint_net[-1].bias
    original = bias.detach().clone()
    with torch.no_grad():
        bias[dims.blank_id] += blank
        bias[dims.vocab_size + 1] += duration_zero
    try:
        yield
    finally:
        with torch.no_grad():
            bias.copy_(original)


@pytest.fixture(scope="module")
def rules_model():
    """The random-weight tiny preset, whatever the session's model: its near-uniform joint, biased
    as above, makes every kind of decision, where a trained joint sticks to the few it learned."""
    model = ModelSource("preset", "tiny").load()
    return model, model_dims(model)


@pytest.fixture(scope="module")
def decodes(rules_model):
    torch_model, dims = rules_model
    seen = Counter()
    step, decide = _torch_callables(torch_model, dims, seen)
    found = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        encoder = (rng.standard_normal((1, dims.encoder_dim, 40)) * (1 + seed % 4)).astype(np.float32)
        with _biased_joint(torch_model, dims, blank=0.3 * seed, duration_zero=0.08 * seed):
            found.append((nemo_greedy_tdt(torch_model, encoder, 40, dims), greedy_tdt(encoder, 40, dims, step, decide)))
    return found, seen


@pytest.mark.parametrize("seed", SEEDS)
def test_host_decoder_equals_nemo(decodes, seed):
    nemo, host = decodes[0][seed]
    assert host.tokens == nemo.tokens
    assert host.frames == nemo.frames
    assert host.durations == nemo.durations


def test_the_cases_cover_every_rule(decodes, rules_model):
    """Without this the equality above could hold on paths that never exercise a rule."""
    found, seen = decodes
    dims = rules_model[1]
    assert {d for blank, d in seen if not blank} == set(dims.durations), seen  # tokens of every duration
    assert {d for blank, d in seen if blank} == set(dims.durations), seen  # blanks of every duration, 0 included
    busiest = max(Counter(host.frames).most_common(1)[0][1] for _, host in found if host.frames)
    assert busiest == MAX_SYMBOLS_PER_FRAME, "no frame ran out of its symbol budget"


@pytest.fixture(scope="module")
def ctc_decodes():
    """The random-weight tiny CTC preset on encodings whose frames come in runs of one to three
    equal frames (so equal argmaxes repeat), some runs split by a zero frame (whose argmax is the
    blank once its bias is raised: a token repeated across a blank), with the blank's bias raised
    seed by seed (so blanks fall inside, between and across the runs)."""
    model = ModelSource("preset", "tiny-ctc").load()
    dims = model_dims(model)
    bias = ctc_decoder(model).decoder_layers[0].bias
    original = bias.detach().clone()
    found = []
    try:
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            frames = []
            for vector, run, split in zip(rng.standard_normal((30, dims.encoder_dim)), rng.integers(1, 4, 30),
                                          rng.random(30) < 0.3, strict=True):
                frames += [3 * vector] * run + ([np.zeros(dims.encoder_dim), 3 * vector] if split else [])
            encoder = np.stack(frames[:60], axis=1)[None].astype(np.float32)
            with torch.no_grad():
                bias[dims.blank_id] = original[dims.blank_id] + 0.5 * (seed + 1)
            (logits,) = run_torch(wrapper("ctc_head", model), encoder)
            found.append((nemo_greedy_ctc(model, encoder, 60), greedy_ctc(logits, 60, dims.blank_id),
                          logits[0].argmax(-1)))
    finally:
        with torch.no_grad():
            bias.copy_(original)
    return found, dims


@pytest.mark.parametrize("seed", SEEDS)
def test_host_ctc_decoder_equals_nemo(ctc_decodes, seed):
    nemo, host, _ = ctc_decodes[0][seed]
    assert (host.tokens, host.frames) == (nemo.tokens, nemo.frames)


def test_the_ctc_cases_cover_every_rule(ctc_decodes):
    """Repeats merged, a token repeated across a blank kept twice, blanks: each happens."""
    found, dims = ctc_decodes
    blank = dims.blank_id
    merged = across_blank = blanks = 0
    for _, _, best in found:
        best = best.tolist()
        blanks += best.count(blank)
        merged += sum(a == b != blank for a, b in zip(best, best[1:], strict=False))
        across_blank += sum(a == c != blank and b == blank for a, b, c in
                            zip(best, best[1:], best[2:], strict=False))
    assert merged and across_blank and blanks, (merged, across_blank, blanks)
