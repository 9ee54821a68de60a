"""The vectorised TDT loss against NeMo's own reference and against a sum over every alignment."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from nemo.collections.asr.losses.rnnt_pytorch import TDTLossPytorch

from training.tdt_loss import TDTLoss, tdt_log_likelihood

DURATIONS = [0, 1, 2, 3, 4]


def random_batch(seed, batch, frames, labels_max, vocab, n_durations, dtype=torch.float64):
    """Random joint outputs with ragged lengths; padding holds garbage that must not matter."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(batch, frames, labels_max + 1, vocab + 1 + n_durations, generator=g, dtype=dtype) * 2
    labels = torch.randint(0, vocab, (batch, max(labels_max, 1)), generator=g)
    act_lens = torch.randint(1, frames + 1, (batch,), generator=g)
    act_lens[0] = frames
    label_lens = torch.randint(0, labels_max + 1, (batch,), generator=g)
    label_lens[0] = labels_max
    return acts, labels, act_lens, label_lens


def brute_force_log_likelihood(label_logp, duration_logp, labels, frames, n_labels, durations, blank):
    """Enumerate every alignment explicitly (no dynamic programming) and sum their probabilities.

    From (t, u): a blank of duration d >= 1 moves to (t + d, u); label u of duration d >= 0 moves
    to (t + d, u + 1). A path is complete when a blank lands exactly on frame T with all labels out.
    """
    paths = []

    def walk(t, u, logp):
        for n, d in enumerate(durations):
            if d >= 1 and t + d <= frames:
                step = logp + label_logp[t, u, blank] + duration_logp[t, u, n]
                if t + d == frames:
                    if u == n_labels:
                        paths.append(step)
                else:
                    walk(t + d, u, step)
            if u < n_labels and t + d < frames:
                walk(t + d, u + 1, logp + label_logp[t, u, labels[u]] + duration_logp[t, u, n])

    walk(0, 0, torch.zeros((), dtype=label_logp.dtype))
    if not paths:
        return None, 0
    return torch.logsumexp(torch.stack(paths), dim=0), len(paths)


def normalised(acts, sigma, n_durations):
    return (torch.log_softmax(acts[..., :-n_durations], -1) - sigma, torch.log_softmax(acts[..., -n_durations:], -1))


@given(
    frames=st.integers(1, 5),
    n_labels=st.integers(0, 3),
    durations=st.sampled_from([[0, 1, 2, 3, 4], [1, 2], [0, 1], [0, 2, 3], [1]]),
    sigma=st.sampled_from([0.0, 0.05]),
    seed=st.integers(0, 2**16),
)
def test_equals_sum_over_every_alignment(frames, n_labels, durations, sigma, seed):
    vocab = 3
    acts, labels, _, _ = random_batch(seed, 1, frames, n_labels, vocab, len(durations))
    label_logp, duration_logp = normalised(acts, sigma, len(durations))
    expected, _ = brute_force_log_likelihood(
        label_logp[0], duration_logp[0], labels[0], frames, n_labels, durations, vocab
    )
    got = tdt_log_likelihood(
        label_logp, duration_logp, labels, torch.tensor([frames]), torch.tensor([n_labels]), durations, vocab
    )[0]
    if expected is None:
        # Nothing can align (e.g. labels left over with only long durations): the loss must say
        # "impossible", not invent probability.
        assert got.item() < -1e4
    else:
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_brute_force_counts_the_paths_it_should():
    """The enumerator itself: with durations [1] and no labels there is exactly one path (blank
    per frame); with durations [1, 2] over 4 frames, the compositions of 4 into 1s and 2s: 5."""
    frames = 4
    zeros = torch.zeros(frames, 1, 2, dtype=torch.float64)
    assert brute_force_log_likelihood(zeros, torch.zeros(frames, 1, 1), [], frames, 0, [1], 1)[1] == 1
    assert brute_force_log_likelihood(zeros, torch.zeros(frames, 1, 2), [], frames, 0, [1, 2], 1)[1] == 5


@pytest.fixture
def nemo_reference(monkeypatch):
    """NeMo's pure-PyTorch TDT loss, made to run on a CPU: it calls ``.cuda()`` on two tensors."""
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    return TDTLossPytorch


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sigma", [0.0, 0.02])
def test_matches_nemo_reference_values_and_gradients(nemo_reference, seed, sigma):
    vocab = 5
    acts, labels, act_lens, label_lens = random_batch(seed, 3, 6, 3, vocab, len(DURATIONS))
    reference = nemo_reference(blank=vocab, durations=DURATIONS, reduction="sum", sigma=sigma)
    ours = TDTLoss(blank=vocab, durations=DURATIONS, sigma=sigma, reduction="sum")

    acts_ref = acts.clone().float().requires_grad_()
    acts_ours = acts.clone().float().requires_grad_()
    loss_ref = reference(acts=acts_ref, labels=labels, act_lens=act_lens, label_lens=label_lens)
    loss_ours = ours(acts=acts_ours, labels=labels, act_lens=act_lens, label_lens=label_lens)
    loss_ref.backward()
    loss_ours.backward()
    # NeMo's reference computes in float32 with a -1000 floor; both are summed over ~10 terms.
    torch.testing.assert_close(loss_ours, loss_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(acts_ours.grad, acts_ref.grad, rtol=1e-4, atol=1e-5)


def test_gradients_match_finite_differences():
    vocab = 3
    acts, labels, act_lens, label_lens = random_batch(7, 2, 4, 2, vocab, len(DURATIONS))
    loss = TDTLoss(blank=vocab, durations=DURATIONS, sigma=0.02, reduction="sum")
    acts.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: loss(a, labels, act_lens, label_lens), (acts,))


def test_padding_beyond_the_lengths_is_ignored():
    vocab = 4
    acts, labels, act_lens, label_lens = random_batch(3, 2, 6, 3, vocab, len(DURATIONS))
    act_lens[1], label_lens[1] = 4, 2
    loss = TDTLoss(blank=vocab, durations=DURATIONS, reduction=None)
    first = loss(acts, labels, act_lens, label_lens)
    acts[1, 4:] = 1e3
    acts[1, :, 3:] = -1e3
    labels[1, 2:] = 0
    torch.testing.assert_close(loss(acts, labels, act_lens, label_lens), first)


def test_rejects_durations_without_a_blank_step():
    with pytest.raises(ValueError, match="durations"):
        TDTLoss(blank=3, durations=[0])
