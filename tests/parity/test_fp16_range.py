"""The session's fp16 packages beside their fp32 shadow on every parity clip (speech, silence,
DC, full-scale clipping, noise): no op may pass fp16's largest value (the tolerance table's
``MAX_FP16_OVERFLOW_OPS``), and what the range check flags is named with its module."""

from __future__ import annotations

import pytest

from validation.ranges import package_ranges, ranges_block

pytestmark = pytest.mark.parity


def test_no_op_of_the_fp16_packages_overflows_on_the_parity_inputs(parity, clips, session_exporters):
    exported = {e.name: e for e in session_exporters["float16"].export_all()}
    runs = [parity("float16", name) for name in clips]
    reports, skipped = {}, {}
    for name, export in exported.items():
        if export.info["compute_precision"] == "float32":
            skipped[name] = "a float32 package"
            continue
        reports[name] = package_ranges(export.package, [run.inputs[name] for run in runs])
    block = ranges_block(reports, lambda name: exported[name].op_origins(), skipped)
    assert block["status"] == "passed", block["failures"]
    assert set(skipped) == {"preprocessor"}  # the front end always exports fp32
    assert {name: c["inputs"] for name, c in block["components"].items()} == {name: len(runs) for name in reports}
    assert all(c["largest"] > 0 for c in block["components"].values())
