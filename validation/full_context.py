"""NeMo's full-context encoder on a long recording, in memory that grows linearly with its length.

NeMo's relative-position attention holds several ``(heads, T, 2T - 1)`` score tensors per layer and
the encoder a ``T x T`` mask: at 5 minutes of audio (3,750 frames) that is gigabytes, and it grows
with the square of the length. Inside ``linear_memory_attention`` the same attention is computed
a block of query frames at a time, against every key: the same numbers (to float rounding; a
test compares them with NeMo's own forward), each block's scores bounded by
``BLOCK_SCORE_BYTES``. It applies to one recording at a time,
full context, padding masked as NeMo masks it; anything else goes through NeMo's own code unchanged.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from nemo.collections.asr.parts.submodules.multi_head_attention import INF_VAL, RelPositionMultiHeadAttention

BLOCK_SCORE_BYTES = 32 * 2**20  # one block's (heads, rows, 2T - 1) float32 scores


def query_rows(heads: int, frames: int) -> int:
    """Query frames per block: as many as keep a block's scores within ``BLOCK_SCORE_BYTES``."""
    return max(1, BLOCK_SCORE_BYTES // (4 * heads * (2 * frames - 1)))


def blocked_attention(attention: RelPositionMultiHeadAttention, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, pos_emb: torch.Tensor, valid: int) -> torch.Tensor:
    """``attention``'s output for one recording whose first ``valid`` frames are not padding, with
    no cache (Transformer-XL scores, masked as NeMo masks padding), one block of query rows at a time."""
    q, k, v = attention.forward_qkv(query, key, value)  # (1, heads, T, d_k)
    frames = q.size(2)
    p = attention.linear_pos(pos_emb).view(pos_emb.size(0), -1, attention.h, attention.d_k).transpose(1, 2)
    q_u = q + attention.pos_bias_u.unsqueeze(1)
    q_v = q + attention.pos_bias_v.unsqueeze(1)
    rows = query_rows(attention.h, frames)
    keys = torch.arange(frames)
    out = []
    for start in range(0, frames, rows):
        stop = min(frames, start + rows)
        ac = torch.matmul(q_u[:, :, start:stop], k.transpose(-2, -1))
        bd_all = torch.matmul(q_v[:, :, start:stop], p.transpose(-2, -1))  # (1, heads, rows, 2T - 1)
        # NeMo's rel_shift: query i meets key j at relative position i - j, column T - 1 - i + j
        columns = (frames - 1 - torch.arange(start, stop)).unsqueeze(1) + keys
        bd = torch.gather(bd_all, -1, columns.expand(*bd_all.shape[:2], -1, -1))
        scores = ((ac + bd) / attention.s_d_k).masked_fill(keys >= valid, -INF_VAL)
        attn = torch.softmax(scores, dim=-1).masked_fill(keys >= valid, 0.0)
        attn[:, :, max(0, valid - start):] = 0.0  # padding frames attend to nothing
        out.append(torch.matmul(attention.dropout(attn), v))
    x = torch.cat(out, dim=2).transpose(1, 2).reshape(q.size(0), frames, attention.h * attention.d_k)
    return attention.linear_out(x)


def applies(encoder) -> bool:
    """Full-context relative-position attention: the encoder NeMo masks with nothing but padding."""
    return encoder.self_attention_model == "rel_pos" and list(encoder.att_context_size) == [-1, -1]


@contextmanager
def linear_memory_attention(encoder) -> Iterator[None]:
    """Inside, ``encoder`` (a NeMo ConformerEncoder) runs one unpadded recording without the
    ``T x T`` mask and with ``blocked_attention``; batches, limited contexts and caches go through
    NeMo's own code."""
    if not applies(encoder):
        yield
        return
    create_masks = encoder._create_masks
    attentions = [layer.self_attn for layer in encoder.layers if isinstance(layer.self_attn,
                                                                            RelPositionMultiHeadAttention)]
    forwards = {a: a.forward for a in attentions}
    valid = {}  # the frames of the recording masks() last saw that are not padding

    def masks(att_context_size, padding_length, max_audio_length, offset, device):
        if padding_length.numel() == 1 and offset is None:
            valid["frames"] = int(padding_length[0])
            return torch.arange(max_audio_length, device=device).unsqueeze(0) >= valid["frames"], None
        valid.clear()
        return create_masks(att_context_size, padding_length, max_audio_length, offset, device)

    def forward_of(attention):
        def forward(query, key, value, mask, pos_emb, cache=None):
            if mask is None and cache is None and valid and not torch.is_autocast_enabled():
                return blocked_attention(attention, query, key, value, pos_emb, valid["frames"])
            return forwards[attention](query, key, value, mask, pos_emb, cache)
        return forward

    encoder._create_masks = masks
    for attention in attentions:
        attention.forward = forward_of(attention)
    try:
        yield
    finally:
        del encoder._create_masks
        for attention in attentions:
            del attention.forward

