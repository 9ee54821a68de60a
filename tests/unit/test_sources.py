"""Model sources: a real .nemo round trip, bad checkpoints, the offline hub, the presets."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile

import huggingface_hub
import pytest
import torch

from exporters.presets import PRESETS, TDT_DURATIONS, TRAINED_PRESETS, build_model
from exporters.sources import ModelSource, _hub_checkpoint, _initializers_skipped, _restore, unexportable
from exporters.wrappers import model_dims
from infra.errors import UserError


@pytest.fixture(scope="session")
def tiny_model():
    return ModelSource("preset", "tiny").load()


@pytest.fixture(scope="session")
def tiny_nemo(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("nemo") / "tiny.nemo"
    tiny_model.save_to(str(path))
    return path


def test_nemo_round_trip_loads_the_same_weights(tiny_nemo, tiny_model):
    source = ModelSource.from_options(nemo_path=str(tiny_nemo))
    restored = source.load()
    assert type(restored).__name__ == "EncDecRNNTBPEModel"
    ours, theirs = tiny_model.state_dict(), restored.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], rtol=0, atol=0, msg=name)
    assert source.key() == hashlib.sha256(tiny_nemo.read_bytes()).hexdigest()
    assert restored.preprocessor.featurizer.dither == 0.0 and not restored.training


def test_the_weights_are_read_out_of_the_archive_not_extracted(tiny_nemo, tiny_model, monkeypatch):
    """torch.load gets the archive's member, a file object, not a path extracted to disk."""
    loaded_from = []
    real_load = torch.load

    def load(source, *args, **kwargs):
        loaded_from.append(source)
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    restored = _restore(tiny_nemo)
    assert len(loaded_from) == 1 and isinstance(loaded_from[0], io.IOBase), loaded_from
    for name, value in tiny_model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_a_compressed_nemo_restores_through_nemos_own_extraction(tiny_nemo, tiny_model, tmp_path):
    packed = tmp_path / "tiny.nemo"
    with tarfile.open(tiny_nemo, "r:") as plain, tarfile.open(packed, "w:gz") as compressed:
        for member in plain.getmembers():
            compressed.addfile(member, plain.extractfile(member) if member.isfile() else None)
    restored = _restore(packed)
    for name, value in tiny_model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_initializers_skipped_while_restoring_only():
    weight = torch.full((3, 3), 7.0)
    with _initializers_skipped():
        torch.nn.init.kaiming_uniform_(weight)
        torch.nn.init.zeros_(weight)
        assert torch.equal(weight, torch.full((3, 3), 7.0))
    with pytest.raises(RuntimeError), _initializers_skipped():
        raise RuntimeError("a restore that fails")
    torch.nn.init.zeros_(weight)
    assert torch.equal(weight, torch.zeros(3, 3))


def assert_parakeet_topology(model):
    cfg = model.cfg
    assert type(model).__name__ in ("EncDecRNNTBPEModel", "EncDecHybridRNNTCTCBPEModel")
    assert (cfg.preprocessor.features, cfg.preprocessor.normalize) == (128, "per_feature")
    assert (cfg.encoder.subsampling, cfg.encoder.subsampling_factor) == ("dw_striding", 8)
    assert (cfg.encoder.self_attention_model, cfg.encoder.conv_kernel_size) == ("rel_pos", 9)
    assert list(cfg.decoding.durations) == list(TDT_DURATIONS) and cfg.decoding.model_type == "tdt"
    assert model.decoder.blank_as_pad and model.decoder.pred_rnn_layers == 2
    assert type(model.tokenizer).__name__ == "SentencePieceTokenizer"


def test_preset_is_deterministic_and_parakeet_shaped(tiny_model):
    """Same recipe, same weights: the cache keys a preset by its recipe alone."""
    model = tiny_model
    again = build_model(PRESETS["tiny"])
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    assert_parakeet_topology(model)
    assert model.tokenizer.vocab_size == PRESETS["tiny"].vocab_size


def test_trained_preset_is_its_shipped_checkpoint_loaded_like_nemo_path():
    path = TRAINED_PRESETS["parakeet-tdt-tiny-trained"]
    source = ModelSource.from_options(preset="parakeet-tdt-tiny-trained")
    assert source == ModelSource("nemo", str(path))
    assert path.stat().st_size <= 25e6, "the shipped checkpoint must stay under 25 MB"
    model = source.load()
    assert_parakeet_topology(model)
    # a hybrid: restored as one (its config names the class), its CTC head beside the TDT decoder
    assert (type(model).__name__, model_dims(model).family.name) == ("EncDecHybridRNNTCTCBPEModel", "tdt_ctc")
    assert path.with_suffix(".md").is_file(), "the trained checkpoint ships with its model card"


def test_missing_trained_checkpoint_says_how_to_rebuild_it(monkeypatch, tmp_path):
    monkeypatch.setitem(TRAINED_PRESETS, "parakeet-tdt-tiny-trained", tmp_path / "gone.nemo")
    with pytest.raises(UserError, match=r"gone.nemo is missing.*python -m training.train_tiny"):
        ModelSource.from_options(preset="parakeet-tdt-tiny-trained")


@pytest.mark.slow
def test_full_preset_has_parakeet_v3_size():
    model = ModelSource("preset", "parakeet-tdt-0.6b-v3").load()
    assert 620e6 < sum(p.numel() for p in model.parameters()) < 635e6
    assert model.joint.num_classes_with_blank == 8192 + 1 + 5


@pytest.mark.slow
@pytest.mark.parametrize("name, kind, family, layers, d_model, vocab, millions", [
    ("parakeet-tdt-0.6b-v2", "EncDecRNNTBPEModel", "tdt", 24, 1024, 1024, (600, 620)),
    ("parakeet-tdt_ctc-110m", "EncDecHybridRNNTCTCBPEModel", "tdt_ctc", 17, 512, 1024, (110, 118)),
    ("parakeet-ctc-0.6b", "EncDecCTCModelBPE", "ctc", 24, 1024, 1024, (600, 620)),
])
def test_the_family_presets_have_their_model_cards_architecture(name, kind, family, layers, d_model, vocab, millions):
    """The sizes the model cards give: 0.6B (v2, CTC) and 114M (the hybrid) parameters."""
    model = build_model(PRESETS[name])
    dims = model_dims(model)
    assert (type(model).__name__, dims.family.name, len(model.encoder.layers), dims.encoder_dim, dims.vocab_size) == (
        kind, family, layers, d_model, vocab)
    assert millions[0] * 1e6 < sum(p.numel() for p in model.parameters()) < millions[1] * 1e6
    assert dims.ctc_classes == (vocab + 1 if "ctc" in family else 0)


def test_the_tiny_hybrid_has_a_tdt_decoder_and_a_ctc_head_over_one_vocabulary():
    dims = model_dims(build_model(PRESETS["tiny-tdt-ctc"]))
    assert (dims.family.name, dims.durations, dims.ctc_classes, dims.joint_classes) == (
        "tdt_ctc", TDT_DURATIONS, 257, 257 + len(TDT_DURATIONS))


def test_a_ctc_head_of_another_vocabulary_is_refused():
    model = build_model(PRESETS["tiny-tdt-ctc"])
    head = model.ctc_decoder  # as a checkpoint whose CTC head was trained on another tokenizer
    head.decoder_layers[0] = torch.nn.Conv1d(head.decoder_layers[0].in_channels, 301, kernel_size=1)
    head._num_classes = 301
    with pytest.raises(UserError, match=r"^the CTC head has 301 classes; expected the vocabulary's 256 pieces and the "
                                        r"blank, 257$"):
        model_dims(model)


def test_a_ctc_checkpoint_loads_as_the_ctc_family(ctc_nemo):
    model = ModelSource.from_options(nemo_path=str(ctc_nemo)).load()
    dims = model_dims(model)
    assert (type(model).__name__, dims.family.name, dims.ctc_classes, dims.transducer) == \
        ("EncDecCTCModelBPE", "ctc", PRESETS["tiny-ctc"].vocab_size + 1, False)


def test_a_checkpoint_of_another_kind_is_refused(classification_nemo):
    with pytest.raises(UserError, match=r"classifier.nemo: the checkpoint is a EncDecClassificationModel \(a "
                                        r"classification model\); expected a Parakeet-family ASR model of one of "
                                        r"these classes: EncDecRNNTBPEModel"):
        ModelSource.from_options(nemo_path=str(classification_nemo)).load()


def test_a_transducer_whose_encoder_is_not_a_conformer_is_refused():
    model = build_model(PRESETS["tiny"])
    model.cfg.encoder._target_ = "nemo.collections.asr.modules.ConvASREncoder"  # a Citrinet-like config
    assert unexportable(model) == ("the checkpoint's encoder is ConvASREncoder; expected ConformerEncoder (a "
                                   "EncDecRNNTBPEModel of the Parakeet family)")


def test_missing_and_corrupt_checkpoints_are_refused(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        ModelSource.from_options(nemo_path=str(tmp_path / "absent.nemo"))
    (tmp_path / "text.nemo").write_text("not a tar")
    with pytest.raises(UserError, match="not a NeMo checkpoint"):
        ModelSource.from_options(nemo_path=str(tmp_path / "text.nemo"))
    with tarfile.open(tmp_path / "empty.nemo", "w") as tar:
        info = tarfile.TarInfo("readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UserError, match="could not restore the checkpoint"):
        ModelSource.from_options(nemo_path=str(tmp_path / "empty.nemo")).load()


@pytest.mark.parametrize("kwargs, message", [
    ({}, "no model given"),
    ({"preset": "tiny", "model_id": "a/b"}, "not several"),
    ({"preset": "huge"}, "unknown preset 'huge'; expected one of"),
    ({"model_id": "parakeet"}, "expected OWNER/NAME"),
])
def test_bad_source_options(kwargs, message):
    with pytest.raises(UserError, match=message):
        ModelSource.from_options(**kwargs).key()


def test_unreachable_hub_fails_fast_with_one_line(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "convert", "--model-id", "nvidia/parakeet-tdt-0.6b-v3",
         "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "--nemo-path" in lines[0] and "nvidia/parakeet-tdt-0.6b-v3" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_model_loaded_inside_a_command_is_not_reused_after_its_scratch_is_gone(tmp_path):
    """A command loads the model under its scratch directory, where the model keeps its tokenizer,
    and removes the scratch when it ends. Reused after that, the model could not be saved (seen as
    a missing tokenizer.model when the fault tests ran before the source tests in one process)."""
    from infra.cache import ExportCache  # lazy: only this test opens a scratch of its own

    source = ModelSource("preset", "tiny")
    with ExportCache(tmp_path / "cache").scratch():
        inside = source.load()
    after = source.load()
    assert after is not inside and after is source.load()
    after.save_to(str(tmp_path / "after.nemo"))  # reads its tokenizer from where it was built
    assert (tmp_path / "after.nemo").stat().st_size > 0


def test_only_a_checkpoint_missing_from_the_hub_cache_falls_through_to_the_hub(monkeypatch):
    """The cache lookup used to swallow every exception, a damaged cache's PermissionError too."""
    def damaged(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/cache/models--nvidia--x/snapshots")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", damaged)
    with pytest.raises(PermissionError):
        _hub_checkpoint("nvidia/x")

    def missing(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", missing)
    monkeypatch.setattr("exporters.sources._hub_reachable", lambda: False)
    with pytest.raises(UserError, match="not in the local Hugging Face cache and the hub could not be reached"):
        _hub_checkpoint("nvidia/x")
