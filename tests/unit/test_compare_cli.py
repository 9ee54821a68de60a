"""The ``compare`` command: the parity checks and timings on a convert output directory."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile

from cli.main import build_parser, main
from reports.metadata import read_metadata, update_metadata
from validation.corpus import HELD_OUT_SET
from validation.held_out import open_data_set
from validation.recipe_search import components_of

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def converted(session_exporters, model_source, export_cache, tmp_path_factory):
    session_exporters["float16"].export_all()  # into the session's cache, so convert only copies
    out = tmp_path_factory.mktemp("compare") / "parakeet_coreml"
    assert main(["convert", *model_source.cli_args(), "--output-dir", str(out),
                 "--cache-dir", str(export_cache.root)]) == 0
    return out


def _compare(out, export_cache, *args):
    return main(["compare", "--output-dir", str(out), "--cache-dir", str(export_cache.root), "--backend", "mil",
                 *args])


def test_compare_writes_validation_latency_and_plots(converted, export_cache, capsys):
    code = _compare(converted, export_cache, "--runs", "2", "--warmup", "1")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    meta = read_metadata(converted)
    validation = meta["validation"]
    assert validation["status"] == "passed" and validation["backend"] == "mil"
    assert "not Core ML" in validation["values_from"]
    assert validation["symbol_steps"] == 32 and validation["tolerances"]["psnr_floor_db"] == 35.0
    assert [a["name"] for a in validation["audio"]] == ["speech", "silence", "dc", "clipping", "white_noise",
                                                         "speech_1s"]
    encoder = validation["components"]["encoder"]
    assert encoder["length_match"] and encoder["outputs"]["encoder"]["match"]
    assert encoder["outputs"]["encoder"]["psnr_db"] > 35
    assert validation["end_to_end"]["float16"]["speech"]["status"] == "passed"
    latency = meta["latency"]
    assert latency["backend"] == "mil" and "not Core ML" in latency["values_from"]
    assert set(latency["components"]) == set(meta["components"])
    encoder = latency["components"]["encoder"]
    assert encoder["runs"] == 2 and encoder["warmup"] == 1 and encoder["backend_ms"]["rounds"] == 2
    assert encoder["backend_ms"]["median"] > 0 and encoder["load_ms"] > 0 and encoder["first_call_ms"] > 0
    low, high = encoder["speedup_ci95"]
    assert encoder["paired_rounds"] == 2 and low <= encoder["speedup"] <= high
    assert "speedup" in captured.err and "95% CI" in captured.err
    assert set(latency["fused"]) == {"mel_encoder", "joint_decision"}
    assert latency["end_to_end"]["greedy_tdt"]["rtf"]["backend"] > 0
    plots = sorted(p.name for p in (converted / "plots" / "compare-components").iterdir())
    # the trained test model is a hybrid: its CTC head's plot and checks beside the transducer's
    assert plots == ["ctc_head.png", "decoder_steps.png", "encoder_l2.png", "joint_decision.png",
                     "joint_topk_l2.png", "latency_fused_speedup.png", "latency_fused_vs_separate.png",
                     "latency_speedup.png", "latency_summary.png", "mel_composite.png"]
    assert "[6/6] speech_1s: 23 of 23 checks passed" in captured.err
    # parity first, then timing; the summary in short lines, parity's verdict first
    assert captured.err.index("[6/6] speech_1s") < captured.err.index("timing 11 case(s)")  # the CTC head too
    summary = captured.out.strip().splitlines()
    assert summary[0].startswith("parity passed on mil") and summary[1] == "  Neural Engine of A17, predicted:"
    assert [line.split(":")[0].strip() for line in summary[2:2 + len(meta["components"])]] == list(meta["components"])
    ranges = summary.index("  fp16 range on the parity inputs: passed")
    blocks = next(i for i, line in enumerate(summary) if line.startswith("  validation, neural_engine, fp16_range "
                                                                          "and latency blocks in "))
    assert 2 + len(meta["components"]) <= ranges < blocks
    assert max(len(line) for line in summary) < 300
    # the prediction and the fp16 range: a block each, and a plot per package
    placement, fp16 = meta["neural_engine"], meta["fp16_range"]
    assert placement["chip"] == "A17" and "prediction" in placement["prediction"]
    assert set(placement["components"]) == set(meta["components"])
    assert sorted(p.name for p in (converted / "plots" / "neural-engine").iterdir()) == sorted(
        f"{name}.png" for name in meta["components"])
    assert fp16["status"] == "passed" and set(fp16["skipped"]) == {"preprocessor"}
    assert {name: c["inputs"] for name, c in fp16["components"].items()} == {
        name: 6 for name in meta["components"] if name != "preprocessor"}
    assert sorted(p.name for p in (converted / "plots" / "fp16-range").iterdir()) == sorted(
        f"{name}.png" for name in fp16["components"])
    # metadata.json keeps the summary; the per-frame and per-chunk series are in the arrays file beside it
    assert (converted / "metadata.json").stat().st_size < 400_000


def test_a_tolerance_too_tight_fails_with_exit_1_and_says_where(converted, export_cache, capsys):
    update_metadata(converted, read_metadata(converted), validation={"status": "passed"})  # an earlier run's
    code = _compare(converted, export_cache, "--runs", "0", "--tolerance", "encoder.encoder:atol=1e-6,rtol=0")
    captured = capsys.readouterr()
    assert code == 1
    assert "encoder.encoder on speech:" in captured.err and "outside atol 1e-06, rtol 0" in captured.err
    assert "first diverging operations" in captured.err
    assert "third-party output of this run: " in captured.err  # a failure says where the libraries' lines went
    assert read_metadata(converted)["validation"]["status"] == "failed"
    assert "; replaced the earlier validation block" in captured.out


def _assert_refused(code, captured, message):
    assert code == 2, captured.err
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("parakeet-coreml compare: error:") and message in last, captured.err


def test_bad_input_is_refused_before_any_model_runs(converted, export_cache, tmp_path, capsys):
    before = (converted / "metadata.json").read_bytes()
    _assert_refused(_compare(tmp_path / "absent", export_cache), capsys.readouterr(),
                    f"{tmp_path / 'absent'}: no such folder; expected one that parakeet-coreml convert wrote")
    (tmp_path / "their_packages").mkdir()  # a folder, but not one convert wrote
    _assert_refused(_compare(tmp_path / "their_packages", export_cache), capsys.readouterr(),
                    "no metadata.json, so not a folder convert wrote; for packages of another converter")
    noisy = tmp_path / "nan.wav"
    soundfile.write(str(noisy), np.array([0.0, np.nan], np.float32), 16000, subtype="FLOAT")
    _assert_refused(_compare(converted, export_cache, "--audio", str(noisy)), capsys.readouterr(),
                    "1 NaN/Inf sample(s)")
    _assert_refused(_compare(converted, export_cache, "--tolerance", "encoder.nope:atol=1"), capsys.readouterr(),
                    "unknown tolerance 'encoder.nope'")
    assert (converted / "metadata.json").read_bytes() == before
    with pytest.raises(SystemExit) as exit_info:
        _compare(converted, export_cache, "--runs", "-1")
    assert exit_info.value.code == 2 and "expected a whole number >= 0" in capsys.readouterr().err


def test_a_directory_of_another_model_is_refused(converted, export_cache, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(converted, other)
    meta = read_metadata(other)
    meta["model_source"]["content_sha256"] = "0" * 64
    (other / "metadata.json").write_text(json.dumps(meta))
    _assert_refused(_compare(other, export_cache), capsys.readouterr(), "has changed since it was converted")


def test_quantize_gives_an_overall_verdict_and_the_uncompressed_baseline(converted, export_cache, tmp_path, capsys):
    """Two variants, one held to a gate it cannot meet (quality 1.0: compression changes every
    output): the summary's verdict says failed with the counts, the exit is 1, and the latency and
    size plots have the uncompressed export to read the variants against."""
    root = tmp_path / "quantized"
    code = main(["quantize", "--input-dir", str(converted), "--output-root", str(root), "--cache-dir",
                 str(export_cache.root), "--backend", "mil", "--variants", "int8_per_channel,palettize_8bit",
                 "--held-out", "none", "--runs", "2", "--warmup", "0", "--gate", "palettize_8bit:quality=1.0"])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    document = json.loads((root / "quantization_summary.json").read_text())
    overall = document["overall"]
    assert (overall["status"], overall["variants"], overall["passed"], overall["failed"], overall["error"]) == (
        "failed", 2, 1, 1, 0)
    assert overall["failures"] and all(f.startswith("palettize_8bit: ") for f in overall["failures"])
    assert "quantization failed: 2 variant(s)" in captured.out and "1 passed, 1 failed" in captured.out
    encoder = document["variants"]["int8_per_channel"]["components"]["encoder"]
    assert encoder["base_latency_ms"] > 0 and encoder["base_size_mb"] > encoder["size_mb"]
    # each timing keeps its spread and flags, as compare's do, for the plot's whiskers and hatching
    for side, median in (("latency", encoder["latency_ms"]), ("base_latency", encoder["base_latency_ms"])):
        timing = encoder[side]
        assert timing["rounds"] == 2 and timing["min"] <= timing["median"] == median <= timing["p90"]
        assert isinstance(timing["flags"], list)
    plots = {p.name for p in (root / "plots" / "quantize" / "ALL").iterdir()}
    assert {"quantize_latency.png", "quantize_size.png", "quantize_quality_vs_size.png"} <= plots


def test_the_psnr_floor_help_states_the_tables_default(monkeypatch):
    """It said "35 dB" in a string of its own, which a change of the table would leave wrong."""
    monkeypatch.setattr("cli.options.PSNR_FLOOR_DB", 31.5)
    help_text = build_parser().format_help() + build_parser()._subparsers._group_actions[0].choices[
        "compare"].format_help()
    assert "default 31.5 dB" in help_text and "35 dB" not in help_text


@pytest.fixture(scope="module")
def twenty_held_out(export_cache, dims, tmp_path_factory):
    """The held-out set's first 20 utterances (what decides whether the model is confident): a
    set a search tries whole models on in seconds."""
    path, _, _ = open_data_set(HELD_OUT_SET, export_cache, dims)
    lines = [json.loads(line) for line in path.read_text().splitlines()[:20]]
    manifest = tmp_path_factory.mktemp("twenty") / "twenty.jsonl"
    manifest.write_text("".join(json.dumps({**line, "audio_filepath": str(path.parent / line["audio_filepath"])})
                                + "\n" for line in lines))
    return manifest


def _quantize(converted, export_cache, root, *args):
    return main(["quantize", "--input-dir", str(converted), "--output-root", str(root), "--cache-dir",
                 str(export_cache.root), "--backend", "mil", "--runs", "0", *args])


def test_a_search_finds_a_recipe_that_passes_and_reads_back_as_the_same_variant(converted, export_cache,
                                                                               twenty_held_out, tmp_path, capsys):
    """The recipe found passes its gates on the set (no word changed), is the smallest try that
    passed, and its recipe file, given back to --variant, builds the same packages."""
    root = tmp_path / "searched"
    code = _quantize(converted, export_cache, root, "--variants", "palettize_8bit,palettize_4bit", "--held-out",
                     "palettize_4bit", "--search", "palettize_8bit,palettize_4bit", "--manifest", str(twenty_held_out))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = json.loads((root / "quantization_summary.json").read_text())
    search, searched = document["search"], document["variants"]["searched"]
    assert search["schemes"] == ["palettize_8bit", "palettize_4bit"] and search["gates"] == {"flips": 0}
    passed = [t for t in search["tries"] if t["passed"]]
    chosen = min(passed, key=lambda t: t["size_bytes"])
    assert search["chosen"] == chosen["name"] and chosen["flips"] == 0
    assert searched["gates"]["status"] == "passed" and searched["held_out"]["flips"]["words"] == 0
    assert searched["held_out"]["utterances"] == 20
    assert searched["components"]["encoder"]["size_bytes"] == chosen["encoder_size_bytes"]
    assert all(t["failures"] for t in search["tries"] if not t["passed"])
    assert set(search["front"]["wer"]) <= {t["name"] for t in search["tries"]}
    assert (root / "plots" / "quantize" / "ALL" / "search_pareto.png").is_file()
    assert "search: searched (" in captured.err and "read back with --variant" in captured.err
    recipe = root / "searched" / "recipe.json"
    again = tmp_path / "again"
    code = _quantize(converted, export_cache, again, "--variant", str(recipe), "--variants", "searched",
                     "--held-out", "none")
    assert code == 0, capsys.readouterr().err
    rebuilt = json.loads((again / "quantization_summary.json").read_text())["variants"]["searched"]
    for name, component in searched["components"].items():
        assert rebuilt["components"][name]["size_bytes"] == component["size_bytes"], name
        assert rebuilt["components"][name]["quality"] == component["quality"], name


def test_a_search_whose_gates_nothing_meets_says_what_came_closest(converted, export_cache, twenty_held_out,
                                                                    tmp_path, capsys):
    root = tmp_path / "unmet"
    code = _quantize(converted, export_cache, root, "--variants", "palettize_8bit", "--held-out", "none",
                     "--search", "palettize_8bit", "--gate", "searched:quality=1.0", "--manifest",
                     str(twenty_held_out))
    captured = capsys.readouterr()
    assert code == 1, captured.err
    document = json.loads((root / "quantization_summary.json").read_text())
    assert "searched" not in document["variants"] and document["search"]["chosen"] is None
    assert "not even the cheapest group" in document["search"]["stopped"]
    closest = document["search"]["closest"]
    assert closest["failures"] and all("quality" in f for f in closest["failures"])
    failure = document["overall"]["failures"][-1]
    assert failure.startswith("search: no recipe of palettize_8bit met the gates") and closest["name"] in failure
    assert not (root / "searched").exists()


def test_a_profile_on_the_set_is_what_a_package_compressing_the_group_alone_gives(converted, export_cache,
                                                                                 twenty_held_out, tmp_path, capsys):
    """Each group's held-out WER change and word flips come from the executor's swapped weights;
    a real package compressing only that group (a recipe) must transcribe the set the same."""
    root = tmp_path / "profiled"
    code = _quantize(converted, export_cache, root, "--variants", "palettize_2bit", "--held-out", "palettize_2bit",
                     "--sensitivity", "palettize_2bit", "--manifest", str(twenty_held_out))
    assert code == 1, capsys.readouterr().err  # 2-bit tables miss the held-out WER gate (measured: 10.5 %)
    rows = json.loads((root / "quantization_summary.json").read_text())["variants"]["palettize_2bit"]["sensitivity"]
    assert all(isinstance(r["flips"], int) and r["wer_difference_points"] is not None for r in rows)
    assert all(r["wer_difference_points"] == 0 for r in rows if r["flips"] == 0)  # the same words, the same WER
    row = max(rows, key=lambda r: r["flips"])
    assert row["flips"] > 0  # the premise: 2-bit tables change words (measured: the joint alone, 3 of them)
    step = [{"kind": "palettize", "mode": "kmeans", "nbits": 2, "granularity": "per_tensor"}]
    recipe = json.dumps({name: {"*": [], row["group"]: step} for name in components_of(row["group"])})
    again = tmp_path / "alone"
    code = _quantize(converted, export_cache, again, "--variant", f"alone={recipe}", "--variants", "alone",
                     "--held-out", "alone", "--manifest", str(twenty_held_out))
    assert code == (1 if row["wer_difference_points"] > 0.5 else 0), capsys.readouterr().err
    held_out = json.loads((again / "quantization_summary.json").read_text())["variants"]["alone"]["held_out"]
    assert held_out["flips"]["words"] == row["flips"], row
    assert 100 * (held_out["wer"] - held_out["wer_uncompressed"]) == pytest.approx(row["wer_difference_points"])
