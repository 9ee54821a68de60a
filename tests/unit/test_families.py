"""The model families on the command line: what each family converts, package sets read by
interface and by family, and what each command refuses of a family."""

from __future__ import annotations

import json
import shutil

import pytest

from cli.commands import _evaluated_decodings
from cli.main import main
from exporters.components import COMPONENTS, ExportOptions
from exporters.export import Exporter
from exporters.sources import HYBRID_PRESET, ModelSource
from infra.errors import UserError
from validation.packages import read_interface, settle_by_interface


def _last_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("preset, family, components", [
    ("tiny-ctc", "ctc", ["preprocessor", "encoder", "mel_encoder", "ctc_head"]),
    ("tiny-tdt-ctc", "tdt_ctc", list(COMPONENTS)),
])
def test_convert_writes_the_familys_components_and_records_the_family(preset, family, components, export_cache,
                                                                      tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", "--preset", preset, "--output-dir", str(out), "--cache-dir", str(export_cache.root)]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert (meta["family"], list(meta["components"])) == (family, components)
    assert meta["ctc_classes"] == meta["vocab_size"] + 1
    assert meta["components"]["ctc_head"]["outputs"] == [
        {"name": "ctc_logits", "shape": [1, meta["encoder_frames"], meta["vocab_size"] + 1], "dtype": "float32"}]


def test_convert_refuses_a_component_the_family_lacks(export_cache, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["convert", "--preset", "tiny", "--components", "ctc_head", "--output-dir", str(out),
                 "--cache-dir", str(export_cache.root)])
    assert code == 2 and not out.exists()
    assert _last_line(capsys).endswith(
        "ctc_head needs a model with a CTC head; this model is of the tdt family (TDT transducer: LSTM prediction "
        "network, joint with token and duration logits): its components are preprocessor, encoder, mel_encoder, "
        "decoder, joint, joint_decision, joint_decision_single_step")


@pytest.fixture(scope="module")
def hybrid_packages(export_cache):
    """The tiny hybrid's fp16 mel_encoder and CTC head (257 classes), exported into the session's cache."""
    exporter = Exporter(ModelSource.from_options(preset=HYBRID_PRESET), ExportOptions(), export_cache,
                        progress=lambda message: None)
    return {name: exporter.export(COMPONENTS[name]).package for name in ("mel_encoder", "ctc_head")}, exporter.dims


def test_a_fused_front_end_named_preprocessor_is_checked_as_the_mel_encoder(hybrid_packages, tmp_path):
    """The 110M release ships its mel_encoder as Preprocessor.mlpackage."""
    packages, dims = hybrid_packages
    shutil.copytree(packages["mel_encoder"], tmp_path / "Preprocessor.mlpackage")
    found = {"preprocessor": tmp_path / "Preprocessor.mlpackage"}
    interfaces = {"preprocessor": read_interface(found["preprocessor"])}
    notes = settle_by_interface(found, interfaces, dims)
    assert found == {"mel_encoder": tmp_path / "Preprocessor.mlpackage"} and list(interfaces) == ["mel_encoder"]
    assert notes == ["Preprocessor.mlpackage: named like the preprocessor but has the mel_encoder's inputs and "
                     "outputs; checked as the mel_encoder"]


def test_a_ctc_head_beside_a_tdt_model_is_refused(hybrid_packages, export_cache, tmp_path, capsys):
    theirs = tmp_path / "theirs"
    shutil.copytree(hybrid_packages[0]["ctc_head"], theirs / "CtcHead.mlpackage")
    code = main(["compare", "--packages", str(theirs), "--preset", "tiny", "--report-dir", str(tmp_path / "report"),
                 "--cache-dir", str(export_cache.root)])
    assert code == 2 and not (tmp_path / "report").exists()
    assert _last_line(capsys).endswith(
        "ctc_head (CtcHead.mlpackage): preset:tiny is of the tdt family (TDT transducer: LSTM prediction network, "
        "joint with token and duration logits), which has no ctc_head; its components: preprocessor, encoder, "
        "mel_encoder, decoder, joint, joint_decision, joint_decision_single_step")


def test_compare_checks_a_ctc_models_package_set(export_cache, tmp_path, capsys):
    """The tiny CTC model's own exports, found by name in a folder as another converter would write them."""
    source = ModelSource.from_options(preset="tiny-ctc")
    theirs = tmp_path / "theirs"
    exporter = Exporter(source, ExportOptions(), export_cache, progress=lambda message: None)
    for name, file in (("mel_encoder", "MelEncoder"), ("ctc_head", "CtcHead")):
        shutil.copytree(exporter.export(COMPONENTS[name]).package, theirs / f"{file}.mlpackage")
    report = tmp_path / "report"
    code = main(["compare", "--packages", str(theirs), "--preset", "tiny-ctc", "--report-dir", str(report),
                 "--cache-dir", str(export_cache.root), "--runs", "0"])
    assert code == 0, capsys.readouterr().err[-2000:]
    clips = json.loads((report / "metadata.json").read_text())["validation"]["clips"]
    speech = clips["speech"]
    assert {key: speech[key]["status"] for key in ("ctc_head.ctc_logits", "decisions.ctc_head", "transcript.ctc")} \
        == {"ctc_head.ctc_logits": "passed", "decisions.ctc_head": "passed", "transcript.ctc": "passed"}
    assert speech["decoder.decoder"]["reason"].startswith("the model is of the ctc family")


@pytest.mark.parametrize("family, present, message", [
    ("tdt_ctc", ["mel_encoder"],
     "evaluate decodes the tdt_ctc family's tdt with mel_encoder, decoder, joint_decision_single_step or ctc with "
     "mel_encoder, ctc_head; absent: decoder, joint_decision_single_step, ctc_head"),
    ("ctc", ["mel_encoder"], "evaluate decodes the ctc family's ctc with mel_encoder, ctc_head; absent: ctc_head"),
])
def test_evaluate_names_what_the_familys_decodings_lack(family, present, message):
    with pytest.raises(UserError, match=f"^{message} "):
        _evaluated_decodings({"family": family}, dict.fromkeys(present), streaming=False)


def test_evaluate_runs_every_decoding_of_a_hybrid_whose_packages_are_there(capsys):
    packages = dict.fromkeys(["mel_encoder", "decoder", "joint_decision_single_step", "ctc_head"])
    assert _evaluated_decodings({"family": "tdt_ctc"}, packages, streaming=False) == {
        "tdt": ["mel_encoder", "decoder", "joint_decision_single_step"], "ctc": ["mel_encoder", "ctc_head"]}
    del packages["ctc_head"]
    assert _evaluated_decodings({"family": "tdt_ctc"}, packages, streaming=False) == {
        "tdt": ["mel_encoder", "decoder", "joint_decision_single_step"]}
    assert "the ctc decoding is not evaluated: ctc_head absent" in capsys.readouterr().err


def test_quantize_covers_a_ctc_model(export_cache, tmp_path, capsys):
    """The CTC head is compressed like any component, and the end-to-end transcript is greedy CTC
    on the variant's mel_encoder and CTC head."""
    converted = tmp_path / "ctc"
    assert main(["convert", "--preset", "tiny-ctc", "--output-dir", str(converted), "--cache-dir",
                 str(export_cache.root)]) == 0
    root = tmp_path / "quantized"
    code = main(["quantize", "--input-dir", str(converted), "--output-root", str(root), "--cache-dir",
                 str(export_cache.root), "--backend", "mil", "--runs", "0", "--variants", "int8_per_channel"])
    assert code == 0, capsys.readouterr().err[-2000:]
    variant = json.loads((root / "quantization_summary.json").read_text())["variants"]["int8_per_channel"]
    assert set(variant["components"]) == {"preprocessor", "encoder", "mel_encoder", "ctc_head"}
    head = variant["components"]["ctc_head"]
    assert head["size_bytes"] < head["base_size_bytes"] and head["outputs"]["ctc_logits"] > 0.9, head
    assert variant["end_to_end"]["reference_tokens"] > 0, variant["end_to_end"]


def test_a_ctc_head_of_another_vocabulary_is_refused_in_a_package_set(hybrid_packages, export_cache, tmp_path,
                                                                      capsys):
    """The tiny hybrid's CTC head (257 classes) given for a model of 129: the trained test model's
    128 pieces and the blank."""
    theirs = tmp_path / "theirs"
    shutil.copytree(hybrid_packages[0]["ctc_head"], theirs / "CtcHead.mlpackage")
    code = main(["compare", "--packages", str(theirs), "--preset", "parakeet-tdt-tiny-trained", "--report-dir",
                 str(tmp_path / "report"), "--cache-dir", str(export_cache.root)])
    assert code == 2 and not (tmp_path / "report").exists()
    assert "output 'ctc_logits' has 257 classes, expected 129 (the model's vocabulary of 128 pieces and the blank)" \
        in _last_line(capsys)
