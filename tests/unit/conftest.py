"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest
from nemo.collections.asr.models import EncDecCTCModelBPE
from omegaconf import OmegaConf

from exporters.components import ModelDims
from exporters.presets import PRESETS, model_config, train_tokenizer

# The sizes of a 15 s window at 16 kHz, for tests that need no model.
DIMS = ModelDims(sample_rate=16000, max_audio_seconds=15.0, max_audio_samples=240000, n_mels=128, mel_frames=1501,
                 mel_length=1500, encoder_dim=64, encoder_frames=188, encoder_hop=1280, pred_hidden=48, pred_layers=2,
                 vocab_size=256, durations=(0, 1, 2, 3, 4))


@pytest.fixture(scope="session")
def ctc_nemo(tmp_path_factory):
    """A real NeMo CTC checkpoint: a valid .nemo that is not an RNNT/TDT model."""
    tiny = PRESETS["tiny"]
    tok_dir = tmp_path_factory.mktemp("ctc_tokenizer")
    train_tokenizer(tiny.vocab_size, 0, tok_dir)
    cfg = model_config(tiny, str(tok_dir))
    for key in ("decoder", "joint", "loss", "decoding", "model_defaults"):
        cfg.pop(key)
    cfg["decoder"] = {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": tiny.d_model,
                      "num_classes": -1, "vocabulary": []}
    path = tmp_path_factory.mktemp("nemo") / "ctc.nemo"
    EncDecCTCModelBPE(cfg=OmegaConf.create(cfg)).save_to(str(path))
    return path
