"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest
from nemo.collections.asr.models import EncDecClassificationModel
from omegaconf import OmegaConf

from exporters.components import ModelDims
from exporters.presets import PRESETS, build_model

# The sizes of a 15 s window at 16 kHz, for tests that need no model.
DIMS = ModelDims(sample_rate=16000, max_audio_seconds=15.0, max_audio_samples=240000, n_mels=128, mel_frames=1501,
                 mel_length=1500, encoder_dim=64, encoder_frames=188, encoder_hop=1280, pred_hidden=48, pred_layers=2,
                 vocab_size=256, durations=(0, 1, 2, 3, 4))


@pytest.fixture(scope="session")
def ctc_nemo(tmp_path_factory):
    """A real NeMo CTC checkpoint (the tiny-ctc preset saved as a .nemo): the CTC family."""
    path = tmp_path_factory.mktemp("nemo") / "ctc.nemo"
    build_model(PRESETS["tiny-ctc"]).save_to(str(path))
    return path


@pytest.fixture(scope="session")
def classification_nemo(tmp_path_factory):
    """A real NeMo checkpoint of another kind: a keyword classifier (MatchboxNet's layout, one block)."""
    cfg = {"sample_rate": 16000, "labels": ["yes", "no"], "timesteps": 128,
           "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMFCCPreprocessor", "window_size": 0.025,
                            "window_stride": 0.01, "n_mfcc": 64, "n_mels": 64},
           "encoder": {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": 64, "activation": "relu",
                       "conv_mask": True, "jasper": [{"filters": 32, "repeat": 1, "kernel": [11], "stride": [1],
                                                      "dilation": [1], "dropout": 0.0, "residual": False,
                                                      "separable": True}]},
           "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoderClassification", "feat_in": 32,
                       "num_classes": 2, "return_logits": True, "pooling_type": "avg"}}
    path = tmp_path_factory.mktemp("nemo") / "classifier.nemo"
    EncDecClassificationModel(cfg=OmegaConf.create(cfg)).save_to(str(path))
    return path
