"""A vectorised, device-agnostic TDT loss, so Parakeet-TDT trains on a CPU.

NeMo's ``tdt`` loss is a numba CUDA kernel that refuses CPU tensors, and its pure-PyTorch
reference (``TDTLossPytorch``) calls ``.cuda()`` and loops over every lattice node in Python.
This module computes the same quantity — the negative log of the summed probability of every
TDT alignment (Xu et al. 2023, eq. 7) — with one Python step per frame.

The lattice: ``alpha[t, u]`` is the log probability of having emitted ``u`` labels and reached
frame ``t``. From ``(t, u)`` a blank with duration ``d >= 1`` goes to ``(t + d, u)``, and label
``u`` with duration ``d >= 0`` goes to ``(t + d, u + 1)``. An alignment ends with a blank that
reaches frame ``T`` exactly. Label log-probabilities are undernormalised by ``sigma`` as in
NeMo (``log_softmax(label logits) - sigma``); durations get their own log_softmax.

Transitions with ``d >= 1`` only read earlier frames. The ``d = 0`` label transitions chain
within a frame, ``alpha[t, u] = logaddexp(c[t, u], alpha[t, u-1] + e0[t, u-1])``, a linear
recurrence in log space solved for all ``u`` at once with a cumulative sum and
``torch.logcumsumexp``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Log-probability of an unreachable lattice node: finite, so gradients stay finite, and far
# below any reachable path (a real path's log-probability is a sum of a few thousand terms).
UNREACHABLE = -1.0e5


def tdt_log_likelihood(
    label_logp: torch.Tensor,
    duration_logp: torch.Tensor,
    labels: torch.Tensor,
    act_lens: torch.Tensor,
    label_lens: torch.Tensor,
    durations: Sequence[int],
    blank: int,
) -> torch.Tensor:
    """Log of the summed probability of all TDT alignments, one value per utterance.

    ``label_logp``: [B, T, U+1, V+1] normalised log-probabilities of the labels and blank;
    ``duration_logp``: [B, T, U+1, len(durations)]; ``labels``: [B, >=U] token ids;
    ``act_lens`` and ``label_lens``: [B] valid frames and labels.
    """
    batch, frames, positions, _ = label_logp.shape
    blank_logp = label_logp[..., blank]  # [B, T, U+1]
    # Log-probability of emitting label u at lattice position u; nothing to emit at the top row.
    targets = labels[:, : positions - 1].long().unsqueeze(1).expand(batch, frames, positions - 1)
    emit_logp = torch.gather(label_logp[:, :, :-1, :], 3, targets.unsqueeze(-1)).squeeze(-1)
    emit_logp = torch.nn.functional.pad(emit_logp, (0, 1), value=UNREACHABLE)  # [B, T, U+1]

    nowhere = torch.full((batch, positions), UNREACHABLE, dtype=label_logp.dtype, device=label_logp.device)
    start = nowhere.clone()
    start[:, 0] = 0.0
    zero_steps = [n for n, d in enumerate(durations) if d == 0]

    alphas: list[torch.Tensor] = []
    for t in range(frames):
        incoming = [start if t == 0 else nowhere]
        for n, d in enumerate(durations):
            if d == 0 or t - d < 0:
                continue
            source = alphas[t - d]
            incoming.append(source + blank_logp[:, t - d] + duration_logp[:, t - d, :, n])
            label_arc = source + emit_logp[:, t - d] + duration_logp[:, t - d, :, n]
            incoming.append(torch.nn.functional.pad(label_arc[:, :-1], (1, 0), value=UNREACHABLE))
        entering = torch.logsumexp(torch.stack(incoming), dim=0)  # c[t, u]
        if zero_steps:
            step = torch.logsumexp(
                torch.stack([emit_logp[:, t] + duration_logp[:, t, :, n] for n in zero_steps]), dim=0
            )
            # alpha[t, u] = S[u] + logcumsumexp_k (c[t, k] - S[k]), S[u] = sum_{j<u} step[j]
            prefix = torch.nn.functional.pad(torch.cumsum(step[:, :-1], dim=1), (1, 0))
            alphas.append(prefix + torch.logcumsumexp(entering - prefix, dim=1))
        else:
            alphas.append(entering)
    alpha = torch.stack(alphas, dim=1)  # [B, T, U+1]

    # Final blanks that land exactly on frame T.
    rows = torch.arange(batch, device=label_logp.device)
    endings = []
    for n, d in enumerate(durations):
        if d == 0:
            continue
        t_last = act_lens.long() - d
        valid = t_last >= 0
        t_safe = t_last.clamp(min=0)
        u_last = label_lens.long()
        term = alpha[rows, t_safe, u_last] + blank_logp[rows, t_safe, u_last] + duration_logp[rows, t_safe, u_last, n]
        endings.append(torch.where(valid, term, torch.full_like(term, UNREACHABLE)))
    return torch.logsumexp(torch.stack(endings), dim=0)


class TDTLoss(torch.nn.Module):
    """Drop-in for NeMo's TDT losses inside ``RNNTLoss``: same call, any device.

    ``acts`` are the joint's raw outputs [B, T, U+1, V+1+len(durations)]. ``reduction`` is
    None (per-utterance losses, what ``RNNTLoss`` asks for) or one of NeMo's reductions.
    NeMo's numba loss can also mix in a plain RNN-T loss with probability ``omega``; that is
    a sampling trick of the CUDA kernel, not part of the TDT objective, and is not offered.
    """

    def __init__(self, blank: int, durations: Sequence[int], sigma: float = 0.0, reduction: str | None = None):
        super().__init__()
        if not durations or min(durations) < 0 or not any(d > 0 for d in durations):
            raise ValueError(f"durations {list(durations)}: expected non-negative ints including one >= 1")
        self.blank = blank
        self.durations = list(durations)
        self.sigma = sigma
        self.reduction = reduction

    def forward(self, acts, labels, act_lens, label_lens):
        n_durations = len(self.durations)
        acts = acts.to(torch.promote_types(acts.dtype, torch.float32))  # half precision loses the lattice
        label_logp = torch.log_softmax(acts[..., :-n_durations], dim=-1) - self.sigma
        duration_logp = torch.log_softmax(acts[..., -n_durations:], dim=-1)
        losses = -tdt_log_likelihood(
            label_logp, duration_logp, labels, act_lens, label_lens, self.durations, self.blank
        )
        if self.reduction is None or self.reduction == "none":
            return losses
        if self.reduction == "sum":
            return losses.sum()
        if self.reduction == "mean_batch":
            return losses.mean()
        if self.reduction == "mean":
            return (losses / label_lens.clamp(min=1)).mean()
        if self.reduction == "mean_volume":
            return losses.sum() / label_lens.sum().clamp(min=1)
        raise ValueError(f"reduction {self.reduction!r}: expected None, sum, mean, mean_batch or mean_volume")
