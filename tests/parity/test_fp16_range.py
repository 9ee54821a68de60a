"""The session's fp16 packages beside their fp32 shadow on every parity clip (speech, silence,
DC, full-scale clipping, noise): no op may pass fp16's largest value (the tolerance table's
``MAX_FP16_OVERFLOW_OPS``), and what the range check flags is named with its module."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from coremltools.converters.mil.mil import types

from exporters.components import COMPONENTS, ExportOptions
from exporters.convert import convert_component
from exporters.wrappers import wrapper
from runtimes.mil.model import MILModel, load_program
from validation.greedy import run_torch
from validation.ranges import package_ranges, ranges_block

pytestmark = pytest.mark.parity


def test_no_op_of_the_fp16_packages_overflows_on_the_parity_inputs(parity, clips, session_exporters, predictor):
    exported = {e.name: e for e in session_exporters["float16"].export_all()}
    runs = [parity("float16", name) for name in clips]
    reports, skipped = {}, {}
    for name, export in exported.items():
        if export.info["compute_precision"] == "float32":
            skipped[name] = "a float32 package"
            continue
        loaded = predictor(export.package)  # the executor the checks ran, where the backend is mil
        reports[name] = package_ranges(loaded if isinstance(loaded, MILModel) else export.package,
                                       [run.inputs[name] for run in runs])
    block = ranges_block(reports, lambda name: exported[name].op_origins(), skipped)
    assert block["status"] == "passed", block["failures"]
    assert set(skipped) == {"preprocessor"}  # the front end always exports fp32
    assert {name: c["inputs"] for name, c in block["components"].items()} == {name: len(runs) for name in reports}
    assert all(c["largest"] > 0 for c in block["components"].values())


def test_an_fp16_front_end_with_a_flexible_waveform_runs_past_two_seconds(torch_model, dims, tmp_path):
    """Another converter's fp16 preprocessor, flexible waveform: its length, read from the input's
    shape, goes through int16 (coremltools' add_int16_cast). Past 32,767 samples the executor
    wrapped it, the time mask came out empty and a later op failed deep inside: no real clip
    could be checked. Now the mel comes out with NeMo's length, and the narrowing is flagged."""
    component = dataclasses.replace(COMPONENTS["preprocessor"], fp32_scopes=())  # all of it in fp16
    package = tmp_path / "preprocessor.mlpackage"
    convert_component(torch_model, component, dims,
                      ExportOptions(compute_precision="float16", flexible_audio=True)).save(str(package))
    narrowing = [op for op in load_program(package).functions["main"].operations
                 if op.op_type == "cast" and op.outputs[0].dtype == types.int16]
    assert narrowing, "the converter no longer narrows the length: this test reproduces nothing"
    samples = 48_000  # 3 s, past int16's 32,767
    audio = np.sin(np.arange(samples, dtype=np.float32) * 0.05)[None] * 0.5
    feed = {"audio_signal": audio, "audio_length": np.array([samples], np.int32)}
    mel = MILModel(package).predict(feed)
    reference = run_torch(wrapper("preprocessor", torch_model), audio, feed["audio_length"])
    assert int(mel["mel_length"][0]) == int(reference[1][0]) > 0
    assert np.isfinite(mel["mel"]).all() and np.abs(mel["mel"]).max() > 0
    flagged = [risk for risks in package_ranges(package, [feed]).flagged().values() for risk in risks]
    assert any(risk.startswith(f"narrowed integer: values up to {samples:,} cast to int16") for risk in flagged)
