"""The full-context reference on long recordings: NeMo's encoder with its attention computed a block
of query frames at a time gives NeMo's own numbers, and its largest tensor grows linearly with the
length where NeMo's own grows with its square."""

from __future__ import annotations

import pytest
import torch
from nemo.collections.asr.modules import ConformerEncoder
from torch.utils._python_dispatch import TorchDispatchMode

import validation.full_context as full_context
from validation.full_context import linear_memory_attention


def _encoder(**overrides) -> ConformerEncoder:
    """A seeded FastConformer of the released topology at a small width."""
    torch.manual_seed(0)
    settings = dict(feat_in=16, n_layers=2, d_model=32, n_heads=4, subsampling="dw_striding", subsampling_factor=8,
                    subsampling_conv_channels=16, ff_expansion_factor=2, self_attention_model="rel_pos",
                    conv_kernel_size=9, dropout=0.0, dropout_pre_encoder=0.0, dropout_emb=0.0, dropout_att=0.0)
    encoder = ConformerEncoder(**{**settings, **overrides}).eval()
    with torch.no_grad():  # NeMo starts the position biases at zero: give them values, so they are tested
        for layer in encoder.layers:
            layer.self_attn.pos_bias_u.normal_()
            layer.self_attn.pos_bias_v.normal_()
    return encoder


def _mel(frames: int) -> torch.Tensor:
    return torch.randn(1, 16, frames, generator=torch.Generator().manual_seed(frames))


class _LargestTensor(TorchDispatchMode):
    """The most bytes any one tensor an operation returned held."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.bytes = max(self.bytes, tensor.numel() * tensor.element_size())
        return out


def _largest(encoder, frames: int, blocked: bool) -> int:
    mel = _mel(frames)
    with torch.no_grad(), _LargestTensor() as largest:
        if blocked:
            with linear_memory_attention(encoder):
                encoder(audio_signal=mel, length=torch.tensor([frames]))
        else:
            encoder(audio_signal=mel, length=torch.tensor([frames]))
    return largest.bytes


@pytest.mark.parametrize("valid", [4000, 3333], ids=["whole", "padded"])
def test_blocked_attention_gives_nemos_own_encoder_output(monkeypatch, valid):
    monkeypatch.setattr(full_context, "BLOCK_SCORE_BYTES", 20_000)  # blocks of 3 query frames: many blocks
    encoder, mel, length = _encoder(), _mel(4000), torch.tensor([valid])
    with torch.no_grad():
        nemo, nemo_length = encoder(audio_signal=mel, length=length)
        with linear_memory_attention(encoder):
            ours, our_length = encoder(audio_signal=mel, length=length)
    assert torch.equal(nemo_length, our_length)
    # measured: 0.0 (the same products, summed in the same order, row by row)
    assert torch.allclose(ours, nemo, rtol=0, atol=1e-5), (ours - nemo).abs().max()


def test_the_encoder_is_nemos_own_again_after_the_block():
    encoder = _encoder()
    with linear_memory_attention(encoder):
        pass
    assert "_create_masks" not in vars(encoder)
    assert all("forward" not in vars(layer.self_attn) for layer in encoder.layers)


def test_a_limited_context_goes_through_nemos_own_code(monkeypatch):
    def refuse(*args):
        raise AssertionError("blocked attention used on a limited-context encoder")

    monkeypatch.setattr(full_context, "blocked_attention", refuse)
    encoder = _encoder(att_context_size=[16, 16])
    with torch.no_grad(), linear_memory_attention(encoder):
        encoder(audio_signal=_mel(800), length=torch.tensor([800]))


def test_the_largest_tensor_grows_linearly_with_the_length_not_with_its_square(monkeypatch):
    monkeypatch.setattr(full_context, "BLOCK_SCORE_BYTES", 200_000)
    encoder = _encoder()
    nemo = [_largest(encoder, frames, blocked=False) for frames in (8000, 16000)]
    ours = [_largest(encoder, frames, blocked=True) for frames in (8000, 16000)]
    assert nemo[1] / nemo[0] > 3.5, nemo  # the measurement sees NeMo's (heads, T, 2T - 1) scores
    assert ours[1] / ours[0] <= 2.1, ours
    assert ours[1] < nemo[1] / 4, (ours, nemo)
