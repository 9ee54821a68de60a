"""Bad input of every kind the fault sweep found ends in one clear line naming what is wrong
and what is expected, a non-zero exit, and nothing written."""

from __future__ import annotations

import errno
import json
import math
import re
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile

from cli.commands import chosen_variants
from cli.main import main
from exporters.quantize import parse_variant
from infra.errors import UserError
from reports.metadata import read_metadata, update_metadata
from tests.faults.conftest import convert, leftovers
from validation.audio import read_audio
from validation.tolerances import load_gates, load_tolerances


@pytest.fixture(scope="module")
def converted(fault_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "out"
    assert convert(fault_cache, out) == 0
    return out


def _last_error(code, captured, command="compare"):
    assert code == 2, captured.err
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith(f"parakeet-coreml {command}: error:"), captured.err
    return last


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_psnr_floor_is_refused_up_front(converted, fault_cache, value, capsys):
    before = (converted / "metadata.json").read_bytes()
    code = main(["compare", "--output-dir", str(converted), "--cache-dir", str(fault_cache), f"--psnr-floor={value}"])
    assert "expected a finite number" in _last_error(code, capsys.readouterr())
    assert (converted / "metadata.json").read_bytes() == before


@pytest.mark.parametrize("text", ["joint.logits:atol=inf", "joint.logits:rtol=nan"])
def test_a_non_finite_tolerance_is_refused(text):
    with pytest.raises(UserError, match="must be >= 0 and finite"):
        load_tolerances(None, [text])


def test_a_nan_metric_is_written_as_null_with_the_reason(tmp_path):
    description = {"model": "m", "model_source": {"content_sha256": "x"}}
    path = update_metadata(tmp_path, description, validation={"max_abs": math.nan, "psnr_db": math.inf, "ok": 1.0})
    block = json.loads(path.read_text())["validation"]
    assert block == {"max_abs": None, "psnr_db": None, "ok": 1.0, "non_finite": {"max_abs": "nan", "psnr_db": "inf"}}


def test_a_variant_name_that_is_no_identifier_is_refused_and_writes_nothing(converted, fault_cache, tmp_path, capsys):
    root = tmp_path / "quantized"
    code = main(["quantize", "--input-dir", str(converted), "--output-root", str(root), "--cache-dir",
                 str(fault_cache), "--variant", '../escaped={"joint": [{"kind": "linear"}]}', "--variants",
                 "../escaped"])
    assert "must be letters, digits, '_' and '-' only" in _last_error(code, capsys.readouterr(), "quantize")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--variants", ","], "--variants ',': names no variant; expected one or more of: int8_per_channel, "),
    (["--held-out", "bogus"], "--held-out 'bogus': bogus not among the variants swept; expected some of: "),
    (["--variants", "palettize_8bit", "--held-out", "int8_per_channel"],
     "--held-out 'int8_per_channel': int8_per_channel not among the variants swept; expected some of: palettize_8bit"),
    (["--held-out", ","], "--held-out ',': names no variant"),
    (["--gate", "palettize_8bit:flips=0"],
     "--gate palettize_8bit:flips: word flips and WER are counted on the held-out set; add the variant(s) to "
     "--held-out (now: int8_per_channel)"),
    (["--sensitivity", "palettize_8bit", "--variants", "int8_per_channel"],
     "--sensitivity 'palettize_8bit': palettize_8bit not among the variants swept; expected some of: "
     "int8_per_channel, or none"),
    (["--manifest", "no-such.jsonl"], "--manifest no-such.jsonl: no such file; expected NeMo's JSON-lines manifest"),
    (["--gate", "int8_per_channel:flips=0.5"], "int8_per_channel.flips = 0.5: expected a count of words, 0 or more"),
    (["--gate", "int8_per_channel:confident_flips=-1"],
     "int8_per_channel.confident_flips = -1: expected a count of words, 0 or more"),
    (["--search", "pruned_int8"], "--search pruned_int8: a scheme is mixed group by group, and "),
    (["--search", "palettize_8bit", "--variants", "int8_per_channel"],
     "--search 'palettize_8bit': palettize_8bit not among the variants swept"),
    (["--gate", "searched:flips=0"], "gate(s) for unknown variant(s) searched"),
    (["--search", "palettize_8bit", "--gate", "searched:wer_points=-1"],
     "searched.wer_points = -1: expected WER points, 0 to 100"),
    (["--variant", "no-such-recipe.json"],
     "--variant 'no-such-recipe.json': expected NAME=JSON, or a recipe file (a quantize run's searched/recipe.json) "
     "that exists"),
    (["--variant", 'b7={"minimum_deployment_target": "iOS18", "*": [{"kind": "linear", "dtype": "int4", '
                   '"granularity": "per_block", "block_size": 7}]}', "--variants", "b7"],
     "variant b7: block_size 7 divides none of the "),
    (["--variant", 'deep={"encoder": {"layer 99 attention": [{"kind": "linear"}]}}', "--variants", "deep"],
     "variant deep: encoder has no group(s) layer 99 attention in this model; its groups: layer 00 attention, "),
])
def test_an_empty_or_unknown_selection_of_variants_is_refused_and_writes_nothing(converted, fault_cache, tmp_path,
                                                                                 args, message, capsys):
    root = tmp_path / "quantized"
    code = main(["quantize", "--input-dir", str(converted), "--output-root", str(root), "--cache-dir",
                 str(fault_cache), *args])
    assert message in _last_error(code, capsys.readouterr(), "quantize")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_default_held_out_variant_is_checked_only_where_it_is_swept():
    default = ("int8_per_channel",)
    assert chosen_variants("--held-out", None, ["palettize_8bit"], default) == []
    assert chosen_variants("--held-out", None, ["palettize_8bit", "int8_per_channel"], default) == ["int8_per_channel"]
    assert chosen_variants("--held-out", "none", ["int8_per_channel"], default) == []


def test_a_gate_of_an_unknown_variant_is_an_error_naming_the_known_ones():
    with pytest.raises(UserError, match=r"unknown variant\(s\) nope; the variants are: int8_per_channel, "):
        load_gates(None, ["nope:quality=0.5"], ["int8_per_channel", "palettize_8bit"])
    assert load_gates(None, ["palettize_8bit:quality=0.5"], ["int8_per_channel", "palettize_8bit"])


def test_palettization_bits_the_target_cannot_take_are_refused_at_once():
    with pytest.raises(UserError, match="nbits 3 is not possible for iOS17.*3 bits needs minimum_deployment_target"):
        parse_variant("p3", {"joint": [{"kind": "palettize", "nbits": 3}]}, "--variant p3")
    assert parse_variant("p3", {"joint": [{"kind": "palettize", "nbits": 3}], "minimum_deployment_target": "iOS18"},
                         "--variant p3").minimum_deployment_target == "iOS18"


@pytest.mark.parametrize(("steps", "message"), [
    ([{"kind": "linear", "dtype": "int4", "granularity": "per_channel"}], "4-bit linear quantization"),
    ([{"kind": "linear", "granularity": "per_block", "block_size": 32}], "per-block scales"),
    ([{"kind": "palettize", "nbits": 4, "granularity": "per_grouped_channel", "group_size": 16}],
     "per-grouped-channel lookup tables"),
    ([{"kind": "prune", "target_sparsity": 0.5}, {"kind": "linear"}], "2 steps on one weight (joint compression)"),
])
def test_a_scheme_only_ios18_expresses_is_refused_for_ios17_at_once(steps, message):
    """coremltools refused these only when it compressed, after the sweep had exported and weighed
    every variant before them ('not built: ... The 4-bit quantization is supported since iOS18')."""
    with pytest.raises(UserError, match=f"--variant v: joint: {re.escape(message)} needs? minimum_deployment_target "
                                        r"iOS18 \(the variant says iOS17\)"):
        parse_variant("v", {"joint": steps}, "--variant v")
    assert parse_variant("v", {"joint": steps, "minimum_deployment_target": "iOS18"},
                         "--variant v").minimum_deployment_target == "iOS18"


def test_a_sparsity_out_of_range_is_one_short_line():
    with pytest.raises(UserError) as raised:
        parse_variant("p", {"joint": [{"kind": "prune", "target_sparsity": 2}]}, "--variant p")
    assert "expected a fraction in [0, 1)" in str(raised.value) and len(str(raised.value)) < 160


def test_a_directory_given_as_a_file_is_named_as_such(tmp_path, capsys):
    code = main(["convert", "--nemo-path", str(tmp_path), "--output-dir", str(tmp_path / "out")])
    assert "is a directory; expected a .nemo checkpoint file" in _last_error(code, capsys.readouterr(), "convert")
    with pytest.raises(UserError, match="is a directory; expected an audio file"):
        read_audio(tmp_path)


def test_a_null_component_in_metadata_is_named(converted, fault_cache, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(converted, broken)
    meta = read_metadata(broken)
    meta["components"]["joint"] = None
    (broken / "metadata.json").write_text(json.dumps(meta))
    code = main(["compare", "--output-dir", str(broken), "--cache-dir", str(fault_cache)])
    assert "no package path for component(s) joint" in _last_error(code, capsys.readouterr())


def test_an_rnnt_model_is_refused_by_compare_up_front_saying_why(converted, fault_cache, tmp_path, capsys):
    """An RNNT model (no durations) converts; compare's decision checks read TDT durations and ended
    in a raw ValueError (argmax of an empty sequence) after loading the model."""
    rnnt = tmp_path / "rnnt"
    shutil.copytree(converted, rnnt)
    meta = read_metadata(rnnt)
    meta["durations"], meta["family"], meta["decodings"] = [], "rnnt", ["rnnt"]  # what an RNNT model's records
    (rnnt / "metadata.json").write_text(json.dumps(meta))
    code = main(["compare", "--output-dir", str(rnnt), "--cache-dir", str(fault_cache)])
    last = _last_error(code, capsys.readouterr())
    assert "has no TDT durations (an RNNT model): its packages convert, but compare checks decisions" in last
    assert "checks only an RNNT model's streaming packages" in last and "none here" in last


def test_a_full_disk_is_one_line_with_the_place_and_the_size(fault_cache, tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full)  # what copytree's copy2 writes each file with
    out = tmp_path / "out"
    code = convert(fault_cache, out)
    last = _last_error(code, capsys.readouterr(), "convert")
    assert "no space left on the device of" in last and "MB are free" in last and "decoder.mlpackage needs" in last
    assert not out.exists() and leftovers(tmp_path) == []


def test_reading_a_long_recording_takes_memory_for_the_window_only(tmp_path):
    path = tmp_path / "long.wav"
    rate, seconds = 48000, 180
    with soundfile.SoundFile(str(path), "w", rate, 2, subtype="PCM_16") as f:
        for _ in range(seconds // 10):
            f.write(np.zeros((rate * 10, 2), np.int16))
    tracemalloc.start()
    try:
        samples, got_rate, notes = read_audio(path, 15.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    window_bytes = 15 * rate * 2 * 4  # the window's frames, both channels, float32
    assert samples.size == 15 * rate and got_rate == rate
    assert "trimmed from 180.00 s to the 15 s window" in notes
    assert peak < 2.5 * window_bytes, f"peak {peak / 1e6:.1f} MB for a {window_bytes / 1e6:.1f} MB window"


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "Encoder.mlpackage").write_bytes(bytes(range(256)) * 4),
     "Encoder.mlpackage: not a readable Core ML package"),
    (lambda d: ((d / "Joint.mlmodelc").mkdir(), (d / "Joint.mlmodelc" / "metadata.json").write_text("[]")),
     "Joint.mlmodelc: "),  # (why depends on the backend: only Core ML loads compiled bundles)
])
def test_an_unreadable_package_is_bad_input(tmp_path, capsys, make, message):
    """A damaged package is a damaged input: exit 2 and one line, not exit 1 with PackageError or IndexError."""
    packages = tmp_path / "theirs"
    packages.mkdir()
    make(packages)
    code = main(["compare", "--packages", str(packages), "--preset", "tiny", "--report-dir", str(tmp_path / "r")])
    assert message in _last_error(code, capsys.readouterr(), "compare")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device", "/out/metadata.json"),
                                   shutil.Error([("a", "b", "[Errno 28] No space left on device")])])
def test_a_full_disk_anywhere_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys, error):
    def full(args):
        raise error

    monkeypatch.setattr("cli.commands.run_convert", full)
    code = main(["convert", "--preset", "tiny", "--output-dir", str(tmp_path / "out")])
    assert "no space left on the device" in _last_error(code, capsys.readouterr(), "convert")


def test_a_report_target_that_cannot_be_written_is_refused_before_the_work(converted, fault_cache, tmp_path,
                                                                             monkeypatch, capsys):
    """A file as --report-dir, or a convert directory this user cannot write, used to be found only
    after the work, with exit 1 and a raw error."""
    (tmp_path / "a_file").write_text("x")
    code = main(["compare", "--output-dir", str(converted), "--cache-dir", str(fault_cache), "--report-dir",
                 str(tmp_path / "a_file")])
    captured = capsys.readouterr()
    assert "a_file: exists and is not a directory" in _last_error(code, captured)
    assert "loading" not in captured.err
    monkeypatch.setattr("os.access", lambda path, mode: Path(path) != converted.absolute())  # root writes anywhere
    code = main(["evaluate", "--output-dir", str(converted), "--cache-dir", str(fault_cache), "--audio",
                 str(tmp_path / "a_file")])
    assert f"--output-dir {converted}: {converted.absolute()} is not writable" in _last_error(
        code, capsys.readouterr(), "evaluate")


def test_a_variant_named_like_the_plots_folder_is_refused(converted, fault_cache, tmp_path, capsys):
    code = main(["quantize", "--output-dir", str(converted), "--output-root", str(tmp_path / "q"), "--cache-dir",
                 str(fault_cache), "--variant", 'plots={"joint": [{"kind": "linear"}]}', "--variants", "plots"])
    assert "variant name 'plots' is the output's own folder for the plots" in _last_error(
        code, capsys.readouterr(), "quantize")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("option", ["--sensitivity", "--search"])
def test_a_sensitivity_profile_of_a_package_set_is_refused_before_any_work(converted, fault_cache, tmp_path, capsys,
                                                                           option):
    """A package set records no op origins, so its weights have no groups: told before the model loads."""
    code = main(["quantize", "--packages", str(converted), "--preset", "tiny", "--output-root",
                 str(tmp_path / "q"), "--cache-dir", str(fault_cache), option, "int8_per_channel"])
    captured = capsys.readouterr()
    assert f"{option} groups weights by the Torch module their ops came from" in _last_error(
        code, captured, "quantize")
    assert "loading" not in captured.err and not (tmp_path / "q").exists()


@pytest.mark.parametrize("components, args, message", [
    # a search decodes every try as an app does (mel_encoder, decoder, single-step joint): told before the model loads
    ("mel_encoder,decoder,joint", [],
     "--search weighs whole models, decoded as an app decodes them, and the convert folder lacks "
     "joint_decision_single_step; convert them too (--components)"),
    # measured on the held-out set, which the seeded tiny model cannot transcribe (it decides once it loads)
    ("mel_encoder,decoder,joint,joint_decision_single_step", ["--gate", "searched:flips=0"],
     "--gate searched:flips is measured on builtin:held-out, and this model cannot be held to it: the model is not "
     "confident"),
])
def test_a_search_that_cannot_be_weighed_is_refused_before_any_work(fault_cache, tmp_path, capsys, components, args,
                                                                     message):
    converted = tmp_path / "converted"
    assert main(["convert", "--preset", "tiny", "--components", components, "--output-dir", str(converted),
                 "--cache-dir", str(fault_cache)]) == 0
    capsys.readouterr()  # convert's own lines
    code = main(["quantize", "--input-dir", str(converted), "--output-root", str(tmp_path / "q"), "--cache-dir",
                 str(fault_cache), "--search", "palettize_8bit", *args])
    assert message in _last_error(code, capsys.readouterr(), "quantize")
    assert not (tmp_path / "q").exists()


def test_one_quantize_run_owns_its_output_root(fault_cache, tmp_path, capsys):
    """A second run into the same root used to leave the first run's variant folders beside a
    summary that listed only its own."""
    converted = tmp_path / "converted"
    assert main(["convert", "--preset", "tiny", "--components", "mel_encoder,decoder,joint", "--output-dir",
                 str(converted), "--cache-dir", str(fault_cache)]) == 0
    root = tmp_path / "q"
    (tmp_path / "q").mkdir()
    (root / "notes.txt").write_text("mine")  # not a variant: left alone
    common = ["quantize", "--output-dir", str(converted), "--output-root", str(root), "--cache-dir", str(fault_cache),
              "--backend", "mil", "--runs", "0", "--held-out", "none"]
    main([*common, "--variants", "int8_per_channel"])
    assert "replaced" not in capsys.readouterr().out
    main([*common, "--variants", "palettize_8bit"])
    summary_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary_line.endswith("; replaced the earlier run's quantization_summary.json and variants, variant "
                                 "folder(s) not swept now, removed: int8_per_channel")
    summary = json.loads((root / "quantization_summary.json").read_text())
    assert list(summary["variants"]) == ["palettize_8bit"]
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt", "palettize_8bit", "plots",
                                                      "quantization_summary.json"]


def test_a_folder_without_what_a_component_is_weighed_on_is_one_line(converted, fault_cache, tmp_path, capsys):
    """decoder and joint alone: the joint is weighed on the mel_encoder's output, which used to end
    quantize in a raw KeyError: 'joint'."""
    code = main(["quantize", "--output-dir", str(converted), "--output-root", str(tmp_path / "q"), "--cache-dir",
                 str(fault_cache), "--backend", "mil", "--runs", "0", "--held-out", "none", "--variants",
                 "int8_per_channel"])
    assert ("quantize weighs joint on the outputs of mel_encoder, which the package set lacks; convert them too "
            "(--components)") in _last_error(code, capsys.readouterr(), "quantize")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize(("extra", "expected"), [
    (["--preset", "tiny"], "--cache-state: preset:tiny is not a cache-aware model"),
    (["--preset", "tiny-streaming", "--components", "encoder_streaming_first"],
     "with --components, name encoder_streaming_state (or encoder_streaming) among them instead"),
], ids=["offline-model", "with-components"])
def test_cache_state_without_caches_to_keep_is_refused_writing_nothing(fault_cache, tmp_path, capsys, extra,
                                                                       expected):
    code = main(["convert", *extra, "--cache-state", "--output-dir", str(tmp_path / "out"), "--cache-dir",
                 str(fault_cache)])
    assert expected in _last_error(code, capsys.readouterr(), "convert")
    assert not (tmp_path / "out").exists()


def test_compare_checks_an_rnnt_models_streaming_packages(fault_cache, tmp_path, capsys):
    """An RNNT model's offline checks read TDT durations; its streaming packages are checked."""
    out = tmp_path / "rnnt"
    assert main(["convert", "--preset", "tiny-streaming-rnnt", "--output-dir", str(out), "--cache-dir",
                 str(fault_cache), "--compute-precision", "float32", "--components", "encoder_streaming_first",
                 "encoder_streaming"]) == 0
    capsys.readouterr()
    code = main(["compare", "--output-dir", str(out), "--cache-dir", str(fault_cache), "--backend", "mil"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert "an RNNT model: the offline packages' checks" in captured.err
    assert "end of utterance (float32): the model's tokenizer has no <EOU> piece" in captured.err
    run = read_metadata(out)["streaming_validation"]["runs"]["float32"]
    assert run["decisions"] is None and run["transcripts"]["export_edits_to_nemo_streaming"] == 0
    assert "validation" not in read_metadata(out)
