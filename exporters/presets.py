"""Built-in model presets: Parakeet-TDT's architecture rebuilt offline with deterministic weights.

The released checkpoint cannot be downloaded here, so a preset builds NeMo's own classes
(``EncDecRNNTBPEModel`` with a FastConformer encoder, an LSTM prediction network and a TDT
joint) from the released model's configuration, seeds torch, and trains a SentencePiece BPE
tokenizer of the released vocabulary size on a seeded pseudo-word corpus. What differs from
the release is only the weights (seeded, untrained) and the tokenizer's pieces.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import sentencepiece as spm

TDT_DURATIONS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class Preset:
    """The widths that distinguish one preset; everything else is Parakeet-TDT v3's config."""

    name: str
    summary: str
    d_model: int
    n_layers: int
    n_heads: int
    subsampling_conv_channels: int
    pred_hidden: int
    pred_rnn_layers: int
    joint_hidden: int
    vocab_size: int
    n_mels: int = 128
    conv_kernel_size: int = 9
    ff_expansion_factor: int = 4
    seed: int = 0
    decoder: str = "tdt"  # "tdt" (token and duration), "rnnt" (token only) or "ctc" (a CTC head alone)
    aux_ctc: bool = False  # a CTC head beside the transducer: NeMo's hybrid TDT-CTC (or RNNT-CTC) model
    # cache-aware streaming: the [left, right] attention contexts it streams with (the first is its
    # default; right + 1 encoder frames of 80 ms make a chunk); empty: offline, full context
    att_context_sizes: tuple[tuple[int, int], ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="parakeet-tdt-0.6b-v3",
            summary="nvidia/parakeet-tdt-0.6b-v3's exact architecture (~627M parameters), seeded weights",
            d_model=1024,
            n_layers=24,
            n_heads=8,
            subsampling_conv_channels=256,
            pred_hidden=640,
            pred_rnn_layers=2,
            joint_hidden=640,
            vocab_size=8192,
        ),
        Preset(
            name="tiny",
            summary="the same topology with small widths, for CI and fast tests",
            d_model=64,
            n_layers=2,
            n_heads=4,
            subsampling_conv_channels=32,
            pred_hidden=48,
            pred_rnn_layers=2,
            joint_hidden=48,
            vocab_size=256,
        ),
        Preset(
            name="parakeet-realtime-eou-120m",
            summary="nvidia/parakeet_realtime_eou_120m-v1's architecture: cache-aware FastConformer-RNNT, 160 ms "
                    "chunks, seeded weights",
            d_model=512,
            n_layers=17,
            n_heads=8,
            subsampling_conv_channels=256,
            pred_hidden=640,
            pred_rnn_layers=1,
            joint_hidden=640,
            vocab_size=1026,
            decoder="rnnt",
            att_context_sizes=((70, 1),),
        ),
    )
}


# Nemotron's streaming model: Parakeet-TDT v3's widths with the cache-aware encoder and an RNNT decoder.
PRESETS["nemotron-speech-streaming-0.6b"] = replace(
    PRESETS["parakeet-tdt-0.6b-v3"], name="nemotron-speech-streaming-0.6b", vocab_size=1024, decoder="rnnt",
    att_context_sizes=((70, 13), (70, 6), (70, 1), (70, 0)),
    summary="nvidia/nemotron-speech-streaming-en-0.6b's architecture: cache-aware FastConformer-RNNT of the 0.6B "
            "width, 80/160/560/1120 ms chunks, seeded weights")
# The tiny preset with the cache-aware encoder, for fast streaming tests.
PRESETS["tiny-streaming"] = replace(PRESETS["tiny"], name="tiny-streaming", att_context_sizes=((70, 1),),
                                    summary="the tiny preset, cache-aware (160 ms chunks), for fast streaming tests")
# ... and with an RNNT decoder, as the streaming releases have, for fast tests of what RNNT changes.
PRESETS["tiny-streaming-rnnt"] = replace(PRESETS["tiny-streaming"], name="tiny-streaming-rnnt", decoder="rnnt",
                                         summary="the tiny streaming preset with an RNNT decoder, as the streaming "
                                                 "releases have, for fast tests")


# The family's siblings, with the widths of their model cards: v2 is v3's architecture with an
# English vocabulary of 1,024 pieces; the 110M hybrid a 17-layer FastConformer of width 512 with a
# one-layer prediction network, a TDT joint and a CTC head on the same encoder; the CTC model v3's
# encoder with a CTC head alone.
PRESETS["parakeet-tdt-0.6b-v2"] = replace(
    PRESETS["parakeet-tdt-0.6b-v3"], name="parakeet-tdt-0.6b-v2", vocab_size=1024,
    summary="nvidia/parakeet-tdt-0.6b-v2's architecture (English, 1,024 pieces), seeded weights")
PRESETS["parakeet-tdt_ctc-110m"] = replace(
    PRESETS["parakeet-realtime-eou-120m"], name="parakeet-tdt_ctc-110m", vocab_size=1024, decoder="tdt", aux_ctc=True,
    att_context_sizes=(), summary="nvidia/parakeet-tdt_ctc-110m's architecture: hybrid FastConformer with a TDT "
                                  "decoder and a CTC head, seeded weights")
PRESETS["parakeet-ctc-0.6b"] = replace(
    PRESETS["parakeet-tdt-0.6b-v3"], name="parakeet-ctc-0.6b", vocab_size=1024, decoder="ctc",
    summary="nvidia/parakeet-ctc-0.6b's architecture: FastConformer with a CTC head alone, seeded weights")
# The tiny preset as a CTC model and as a hybrid, for fast tests of each family.
PRESETS["tiny-ctc"] = replace(PRESETS["tiny"], name="tiny-ctc", decoder="ctc",
                              summary="the tiny preset's encoder with a CTC head alone, for fast tests")
PRESETS["tiny-tdt-ctc"] = replace(PRESETS["tiny"], name="tiny-tdt-ctc", aux_ctc=True,
                                  summary="the tiny preset with a CTC head beside its TDT decoder (a hybrid), for "
                                          "fast tests")


# Presets that are trained checkpoints shipped with the package, loaded like --nemo-path.
# ``python -m training.train_tiny`` reproduces this one; its model card sits beside it.
TRAINED_PRESETS: dict[str, Path] = {
    name: Path(__file__).resolve().parent / "models" / f"{name}.nemo"
    for name in ("parakeet-tdt-tiny-trained", "parakeet-tdt-tiny-streaming-trained")
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted([*PRESETS, *TRAINED_PRESETS]))
        raise ValueError(f"unknown preset {name!r}; expected one of: {known}") from None


def write_tokenizer(sentences, vocab_size: int, out_dir: Path) -> Path:
    """Train a SentencePiece BPE model of ``vocab_size`` pieces on ``sentences`` into ``out_dir``,
    with the vocab.txt NeMo's BPE tokenizer setup registers beside it."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        bos_id=-1,
        eos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return save_tokenizer(model.getvalue(), out_dir)


def save_tokenizer(proto: bytes, out_dir: Path) -> Path:
    """A SentencePiece model (its serialized bytes) as the directory NeMo's BPE tokenizer reads:
    ``tokenizer.model`` and the ``vocab.txt`` its setup registers beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "tokenizer.model"
    path.write_bytes(proto)
    processor = spm.SentencePieceProcessor(model_proto=proto)
    pieces = (processor.id_to_piece(i) for i in range(processor.get_piece_size()))
    (out_dir / "vocab.txt").write_text("".join(f"{p}\n" for p in pieces), encoding="utf-8")
    return path


def train_tokenizer(vocab_size: int, seed: int, out_dir: Path) -> Path:
    """A tokenizer of ``vocab_size`` pieces on a seeded pseudo-word corpus: the same bytes on
    every machine for a given (vocab_size, seed)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    n_sentences = max(2000, vocab_size * 3)

    def sentences():
        for _ in range(n_sentences):
            n_words = rng.integers(4, 12)
            yield " ".join("".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(n_words))

    return write_tokenizer(sentences(), vocab_size, out_dir)


def model_config(preset: Preset, tokenizer_dir: str) -> dict:
    """NeMo model config of Parakeet-TDT v3 with the preset's widths (and decoder, and the
    cache-aware encoder of the streaming releases where the preset streams)."""
    durations = list(TDT_DURATIONS) if preset.decoder == "tdt" else []
    cfg = {
        "sample_rate": 16000,
        "model_defaults": {
            "enc_hidden": preset.d_model,
            "pred_hidden": preset.pred_hidden,
            "joint_hidden": preset.joint_hidden,
            "tdt_durations": durations,
            "num_tdt_durations": len(durations),
        },
        "tokenizer": {"dir": tokenizer_dir, "type": "bpe"},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000,
            "normalize": "per_feature",
            "window_size": 0.025,
            "window_stride": 0.01,
            "window": "hann",
            "features": preset.n_mels,
            "n_fft": 512,
            "log": True,
            "frame_splicing": 1,
            "dither": 1.0e-05,
            "pad_to": 0,
            "pad_value": 0.0,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": preset.n_mels,
            "feat_out": -1,
            "n_layers": preset.n_layers,
            "d_model": preset.d_model,
            "use_bias": False,
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": preset.subsampling_conv_channels,
            "causal_downsampling": False,
            "ff_expansion_factor": preset.ff_expansion_factor,
            "self_attention_model": "rel_pos",
            "n_heads": preset.n_heads,
            "att_context_size": [-1, -1],
            "att_context_style": "regular",
            "xscaling": False,
            "untie_biases": True,
            "pos_emb_max_len": 5000,
            "conv_kernel_size": preset.conv_kernel_size,
            "conv_norm_type": "batch_norm",
            "conv_context_size": None,
            "dropout": 0.1,
            "dropout_pre_encoder": 0.1,
            "dropout_emb": 0.0,
            "dropout_att": 0.1,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "normalization_mode": None,
            "random_state_sampling": False,
            "blank_as_pad": True,
            "prednet": {"pred_hidden": preset.pred_hidden, "pred_rnn_layers": preset.pred_rnn_layers, "dropout": 0.2},
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "log_softmax": None,
            "preserve_memory": False,
            "fuse_loss_wer": False,
            "num_extra_outputs": len(durations),
            "jointnet": {"joint_hidden": preset.joint_hidden, "activation": "relu", "dropout": 0.2},
        },
        "decoding": {
            "strategy": "greedy",
            "model_type": "tdt",
            "durations": durations,
            "greedy": {"max_symbols": 10},
        },
        "loss": {
            "loss_name": "tdt",
            "tdt_kwargs": {"fastemit_lambda": 0.0, "clamp": -1.0, "durations": durations, "sigma": 0.02, "omega": 0.1},
        },
        "optim": {"name": "adamw", "lr": 1e-3},
    }
    if preset.decoder in ("rnnt", "ctc"):
        cfg["decoding"] = {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}}
        cfg["loss"] = {"loss_name": "default"}
        for key in ("tdt_durations", "num_tdt_durations"):
            cfg["model_defaults"].pop(key)
    if preset.decoder == "ctc":
        for key in ("joint", "loss", "pred_hidden", "joint_hidden"):
            cfg.pop(key, None)
            cfg["model_defaults"].pop(key, None)
        cfg["decoder"], cfg["decoding"] = ctc_head_config(preset.d_model), {"strategy": "greedy_batch"}
    elif preset.aux_ctc:
        cfg["aux_ctc"] = aux_ctc_config(preset.d_model)
    return cache_aware_config(cfg, preset.att_context_sizes) if preset.att_context_sizes else cfg


def ctc_head_config(d_model: int) -> dict:
    """NeMo's CTC decoder: a kernel-1 convolution of the encoding to the vocabulary and the blank."""
    return {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": d_model, "num_classes": -1,
            "vocabulary": []}


def aux_ctc_config(d_model: int, ctc_loss_weight: float = 0.3) -> dict:
    """A hybrid model's CTC section: its head, decoding and the CTC loss's share of the training
    loss (0.3 in NVIDIA's hybrid recipes)."""
    return {"ctc_loss_weight": ctc_loss_weight, "use_cer": False, "ctc_reduction": "mean_batch",
            "decoder": ctc_head_config(d_model), "decoding": {"strategy": "greedy_batch"}}


# The cache-aware (streaming) FastConformer of NVIDIA's streaming releases: chunked attention
# (70 frames, 5.6 s, of left context in every release), causal convolutions and subsampling, and
# the un-normalised log-mel (a per-feature mean needs the whole recording).
CACHE_AWARE_ENCODER = {"att_context_style": "chunked_limited", "conv_context_size": "causal",
                       "causal_downsampling": True}
CACHE_AWARE_PREPROCESSOR = {"normalize": "NA"}


def cache_aware_config(cfg: dict, att_context_sizes=((70, 1),)) -> dict:
    """``cfg`` (a NeMo model config) with the encoder and front end of the cache-aware releases,
    streaming with ``att_context_sizes`` (several: NeMo's multi-look-ahead, the first the default).
    The weights keep their shapes but the subsampler's output projection's (causal subsampling pads
    one more frequency bin)."""
    contexts = [list(c) for c in att_context_sizes]
    return {**cfg, "encoder": {**cfg["encoder"], **CACHE_AWARE_ENCODER,
                               "att_context_size": contexts[0] if len(contexts) == 1 else contexts},
            "preprocessor": {**cfg["preprocessor"], **CACHE_AWARE_PREPROCESSOR}}


def build_model(preset: Preset):
    """Build the preset as a NeMo model in eval mode with seeded weights: ``EncDecRNNTBPEModel``,
    ``EncDecCTCModelBPE``, or ``EncDecHybridRNNTCTCBPEModel`` for a transducer with a CTC head."""
    import torch  # lazy: torch and NeMo only when a preset is built, not when its key is computed
    from nemo.collections.asr import models  # lazy: see above
    from omegaconf import OmegaConf  # lazy: see above

    # NeMo keeps the tokenizer's path and copies it on save_to, so the directory lives as
    # long as the model does.
    tok_dir = tempfile.TemporaryDirectory(prefix="parakeet-tokenizer-")
    train_tokenizer(preset.vocab_size, preset.seed, Path(tok_dir.name))
    cfg = OmegaConf.create(model_config(preset, tok_dir.name))
    torch.manual_seed(preset.seed)
    kind = ("EncDecCTCModelBPE" if preset.decoder == "ctc" else "EncDecHybridRNNTCTCBPEModel" if preset.aux_ctc
            else "EncDecRNNTBPEModel")
    model = getattr(models, kind)(cfg=cfg, trainer=None)
    model._preset_tokenizer_dir = tok_dir
    return model.eval()
