"""Compression variants: the table, user declarations refused with the reason, and a real
compressed package that is smaller, cached, and never a silent copy of the base."""

from __future__ import annotations

import pytest

from exporters.components import ExportError
from exporters.quantize import VARIANTS, Step, Variant, compress, parse_variant, variant_table


def test_table_has_the_variants_and_keeps_the_lstm():
    assert {"int8_per_channel", "int8_per_tensor_symmetric", "palettize_8bit", "palettize_6bit", "palettize_4bit",
            "int4_per_block", "pruned_int8", "mixed_8bit", "encoder_6bit_rest_int8"} <= set(VARIANTS)
    assert VARIANTS["int4_per_block"].minimum_deployment_target == "iOS18"
    mixed = VARIANTS["encoder_6bit_rest_int8"]
    assert dict(mixed.steps_for("encoder")[0].options)["nbits"] == 6
    assert mixed.steps_for("joint") == VARIANTS["int8_per_channel"].steps_for("joint")
    assert all(v.keep_lstm for v in VARIANTS.values())


@pytest.mark.parametrize("spec, message", [
    ({"encoder": [{"kind": "zip"}]}, "unknown compression step 'zip'"),
    ({"encoderr": [{"kind": "linear"}]}, "unknown component 'encoderr'"),
    ({"*": [{"kind": "palettize", "nbits": 9}]}, "palettize"),
    ({"*": {"kind": "linear"}}, "must be a list of steps"),
    ({"summary": "nothing"}, "no steps"),
    ("{not json", "not JSON"),
    ({"minimum_deployment_target": "iOS9", "*": [{"kind": "linear"}]}, "minimum_deployment_target 'iOS9'"),
])
def test_bad_declarations_are_refused_with_the_reason(spec, message):
    with pytest.raises(ExportError, match=message):
        parse_variant("mine", spec, "test")


def test_pyproject_extends_the_table(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.parakeet-coreml.quantization.variants.joint_only]\n'
                         'summary = "int8 joint"\njoint = [{ kind = "linear", granularity = "per_channel" }]\n')
    table = variant_table(pyproject)
    assert set(VARIANTS) < set(table)
    assert table["joint_only"].steps_for("joint") == (Step.of("linear", granularity="per_channel"),)
    assert table["joint_only"].steps_for("encoder") == ()


def test_int8_per_channel_is_smaller_cached_and_untouched_where_the_variant_says(session_exporters, export_cache):
    joint = session_exporters["float32"].export_all(["joint"])[0]
    variant = VARIANTS["int8_per_channel"]
    first = compress(joint, variant, export_cache)
    again = compress(joint, variant, export_cache)
    assert first.package == again.package and again.info["cached"]
    assert first.package != joint.package and first.size_bytes < 0.5 * joint.size_bytes
    untouched = compress(joint, Variant("encoder_only", "x", {"encoder": (Step.of("linear"),)}), export_cache)
    assert untouched.package == joint.package and untouched.info["uncompressed"]


def test_a_variant_that_cannot_be_built_is_an_error(session_exporters, export_cache):
    joint = session_exporters["float32"].export_all(["joint"])[0]  # an iOS17 package: int4 per block needs iOS18
    with pytest.raises(ExportError, match="variant int4_per_block cannot compress joint"):
        compress(joint, VARIANTS["int4_per_block"], export_cache)
