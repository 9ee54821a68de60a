"""Finding a package set's components by file name, settling names by hand, and compiled bundles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli.main import main
from infra.errors import UserError
from runtimes.base import compiled_interface
from runtimes.loader import load_predictor
from validation.packages import component_of, find_packages, parse_named


@pytest.mark.parametrize("file, component", [
    ("encoder.mlpackage", "encoder"), ("Encoder.mlpackage", "encoder"), ("parakeet_encoder.mlpackage", "encoder"),
    ("MelEncoder.mlpackage", "mel_encoder"), ("mel-encoder.mlmodelc", "mel_encoder"),
    ("parakeet_decoder.mlpackage", "decoder"), ("JointDecision.mlmodelc", "joint_decision"),
    ("joint_decision_single_step.mlpackage", "joint_decision_single_step"), ("Joint.mlpackage", "joint"),
    ("ParakeetPreprocessor_v3.mlpackage", "preprocessor"), ("vocoder.mlpackage", None),
])
def test_a_file_name_names_its_component(file, component):
    assert component_of(file) == component


def _touch(directory, *names):
    for name in names:
        (directory / name).mkdir()


def test_a_folder_is_matched_and_what_names_nothing_is_listed(tmp_path):
    _touch(tmp_path, "Encoder.mlpackage", "MelEncoder.mlpackage", "vocoder.mlpackage")
    (tmp_path / "notes.txt").write_text("")
    packages, unmatched = find_packages(tmp_path, {})
    assert {n: p.name for n, p in packages.items()} == {"encoder": "Encoder.mlpackage",
                                                        "mel_encoder": "MelEncoder.mlpackage"}
    assert unmatched == ["vocoder.mlpackage"]


def test_two_files_naming_one_component_need_a_component_option(tmp_path):
    _touch(tmp_path, "encoder.mlpackage", "parakeet_encoder.mlpackage")
    with pytest.raises(UserError, match=r"encoder.mlpackage, parakeet_encoder.mlpackage all name encoder; "
                                          r"say which with --component encoder=PATH"):
        find_packages(tmp_path, {})
    settled, _ = find_packages(tmp_path, parse_named([f"encoder={tmp_path / 'encoder.mlpackage'}"]))
    assert settled == {"encoder": tmp_path / "encoder.mlpackage"}


def test_a_package_beside_its_compiled_bundle_is_taken_over_it(tmp_path):
    _touch(tmp_path, "Joint.mlmodelc", "Joint.mlpackage")
    assert find_packages(tmp_path, {})[0] == {"joint": tmp_path / "Joint.mlpackage"}


@pytest.mark.parametrize("text, message", [
    ("encoder", "expected NAME=PATH"), ("vocoder=x", "unknown component 'vocoder'"),
    ("encoder=/nonexistent.mlpackage", "no such package /nonexistent.mlpackage"),
])
def test_a_bad_component_option_says_what_is_expected(text, message):
    with pytest.raises(UserError, match=message):
        parse_named([text])


def test_a_folder_without_any_component_is_refused(tmp_path):
    _touch(tmp_path, "vocoder.mlpackage")
    with pytest.raises(UserError, match="no package names a component .* found vocoder.mlpackage"):
        find_packages(tmp_path, {})


def _bundle(tmp_path):
    bundle = tmp_path / "JointDecision.mlmodelc"
    bundle.mkdir()
    (bundle / "metadata.json").write_text(json.dumps([{
        "author": "someone", "version": "2",
        "userDefinedMetadata": {"com.github.apple.coremltools.version": "8.3.0"},
        "inputSchema": [{"name": "encoder", "dataType": "Float32", "shape": "[1, 1024, 188]"}],
        "outputSchema": [{"name": "token_id", "dataType": "Int32", "shape": "[1, 188, 1]"}]}]))
    return bundle


def test_a_compiled_bundle_says_its_interface_through_its_metadata(tmp_path):
    inputs, outputs, metadata = compiled_interface(_bundle(tmp_path))
    assert [(s.name, s.shape, s.dtype) for s in inputs] == [("encoder", (1, 1024, 188), np.dtype(np.float32))]
    assert outputs == {"token_id": ("int32", (1, 188, 1))}
    assert metadata == {"author": "someone", "version": "2", "com.github.apple.coremltools.version": "8.3.0"}
    assert compiled_interface(tmp_path) is None  # no metadata.json


def test_a_compiled_bundle_is_refused_off_core_ml_with_the_reason(tmp_path, model_source, export_cache, capsys):
    bundle = tmp_path / "JointDecision.mlmodelc"  # no metadata.json: its interface is Core ML's to check
    bundle.mkdir()
    with pytest.raises(TypeError, match="only Core ML .* loads those; the MIL executor reads .mlpackage"):
        load_predictor(bundle, "mil")
    code = main(["compare", "--component", f"joint_decision={bundle}", *model_source.cli_args(), "--backend", "mil",
                 "--report-dir", str(tmp_path / "report"), "--cache-dir", str(export_cache.root)])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "JointDecision.mlmodelc: compiled .mlmodelc bundles run only on Core ML" in last


def test_plots_of_someone_elses_packages_say_so_in_their_titles():
    from reports.plots import Caption  # lazy: only this test reads the plots module

    theirs = Caption.of({"model": "/tmp/x/my.nemo", "packages": {"directory": "/data/their_models"}}, "mil")
    assert theirs.subject_suffix == "my.nemo, packages from their_models/ (not exported here)"
    assert Caption.of({"model": "preset:tiny"}, "mil").subject_suffix == "tiny (preset)"
    assert Caption.of({"model": "hub:nvidia/parakeet-tdt-0.6b-v3"}, "mil").subject_suffix == (
        "nvidia/parakeet-tdt-0.6b-v3 (hub)")
