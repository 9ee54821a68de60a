"""Compression variants: the table, user declarations refused with the reason, a real
compressed package that is smaller, cached, and never a silent copy of the base; and k-means
tables that are coremltools' own, computed once for the encoder and the mel_encoder."""

from __future__ import annotations

import json

import coremltools as ct
import numpy as np
import pytest
import torch
from coremltools.converters.mil.frontend.milproto.load import load
from coremltools.optimize.coreml._quantization_passes import palettize_weights
from hypothesis import given, settings
from hypothesis import strategies as st

from exporters.quantize import (
    INT8_PER_CHANNEL,
    PALETTE,
    VARIANTS,
    Palettes,
    Step,
    Variant,
    check_against_model,
    compress,
    group_of,
    grouped_weights,
    kmeans_table,
    parse_variant,
    variant_table,
)
from infra.cache import ExportCache
from infra.errors import UserError
from runtimes.mil import MILModel


def test_table_has_the_variants_and_keeps_the_lstm():
    assert {"int8_per_channel", "int8_per_tensor_symmetric", "palettize_8bit", "palettize_6bit", "palettize_4bit",
            "palettize_3bit", "palettize_2bit", "palettize_4bit_grouped", "palettize_4bit_uniform", "int4_per_channel",
            "int4_per_block", "int8_per_block", "pruned_50", "pruned_2of4", "pruned_int8", "pruned_palettize_4bit",
            "mixed_8bit", "encoder_6bit_rest_int8"} <= set(VARIANTS)
    # what only iOS 18's ops express (coremltools' documented targets): 3-bit tables, per-grouped-channel
    # tables, 4-bit linear, per-block scales, two steps on one weight
    assert {name for name, v in VARIANTS.items() if v.minimum_deployment_target == "iOS18"} == {
        "palettize_3bit", "palettize_4bit_grouped", "int4_per_channel", "int4_per_block", "int8_per_block",
        "pruned_int8", "pruned_palettize_4bit"}
    for variant in VARIANTS.values():  # each built-in passes the checks a declaration of it would meet
        declared = {key: value for key, value in variant.recipe().items() if key != "name"}
        assert parse_variant(variant.name, declared, "table") == variant
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
    with pytest.raises(UserError, match=message):
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
    with pytest.raises(UserError, match="variant int4_per_block cannot compress joint"):
        compress(joint, VARIANTS["int4_per_block"], export_cache)


@settings(max_examples=40, deadline=None)
@given(nbits=st.sampled_from([1, 2, 3, 4, 6, 8]), distinct=st.integers(1, 4000), size=st.integers(10_000, 30_000),
       zeros=st.sampled_from(["none", "positive", "negative", "both"]), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from([np.float16, np.float32]))
def test_a_kmeans_table_is_the_one_coremltools_computes(nbits, distinct, size, zeros, seed, dtype):
    """Bit for bit coremltools' k-means palettization (its own function is the oracle), for fp16
    weights (the counted path) and fp32 ones (coremltools' path), with few or many distinct
    values and zeros of either sign or both (numpy's unique takes them for one value)."""
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal(distinct) * 0.05).astype(dtype)
    values = rng.choice(pool, size=size)
    if zeros != "none":
        signed = {"positive": [0.0], "negative": [-0.0], "both": [0.0, -0.0]}[zeros]
        values[rng.integers(0, size, 50)] = rng.choice(np.array(signed, dtype), 50)
    values = values.reshape(2, -1) if size % 2 == 0 else values.reshape(1, -1)
    lut, indices = kmeans_table(values, nbits)
    expected_lut, expected_indices = palettize_weights._get_lut_and_indices(values, "KMEANS", nbits, None)
    assert lut.dtype == expected_lut.dtype and indices.dtype == expected_indices.dtype
    np.testing.assert_array_equal(lut.view(np.uint8), expected_lut.view(np.uint8))
    np.testing.assert_array_equal(indices, expected_indices.reshape(indices.shape))


def _compressed_constants(package) -> dict:
    """Every constant of a package, by the (position, op type, parameter) it feeds, read by
    coremltools. Positions, not names: an op a pass adds is named from a counter of the whole
    process (the same transpose came out transpose_24 in one package and transpose_16 in the
    other, after other compressions had run in the same test worker)."""
    model = ct.models.MLModel(str(package), skip_model_load=True)
    spec = model.get_spec()
    program = load(spec, spec.specificationVersion, file_weights_dir=model.weights_dir)
    readers = [op for op in program.functions["main"].operations if op.op_type != "const"]
    return {(i, op.op_type, param): var.val for i, op in enumerate(readers) for param, var in op.inputs.items()
            if not isinstance(var, (list, tuple)) and var.op is not None and var.op.op_type == "const"}


@pytest.mark.parametrize("bits", [8, 4])
def test_shared_tables_compress_the_encoders_as_coremltools_alone_does(session_exporters, tmp_path, bits):
    """The mel_encoder takes the encoder's tables instead of computing them again, and both
    packages come out with the weights, and the outputs, they have without the sharing."""
    exports = {e.name: e for e in session_exporters["float16"].export_all(["encoder", "mel_encoder"])}
    variant = Variant(f"palettize_{bits}bit", "test", {"*": (PALETTE[bits],)})
    palettes = Palettes()
    shared = {"encoder": compress(exports["encoder"], variant, ExportCache(tmp_path / "shared"), palettes=palettes)}
    for_the_encoder = palettes.computed
    shared["mel_encoder"] = compress(exports["mel_encoder"], variant, ExportCache(tmp_path / "shared"),
                                     palettes=palettes)
    alone = {name: compress(e, variant, ExportCache(tmp_path / "alone")) for name, e in exports.items()}
    palettized = sum(key[2] == "lut" for key in _compressed_constants(alone["encoder"].package))
    # the mel_encoder computes only what it does not share (measured: 45 weights, 49 tables for the
    # encoder, 4 of them its folded position projections seen transposed; 4 more for the mel_encoder)
    assert palettized > 20 and for_the_encoder >= palettized
    assert palettes.computed - for_the_encoder < 0.25 * for_the_encoder
    for name in exports:
        ours, theirs = _compressed_constants(shared[name].package), _compressed_constants(alone[name].package)
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            np.testing.assert_array_equal(ours[key], value, err_msg=str(key))
        left, right = MILModel(shared[name].package), MILModel(alone[name].package)
        inputs = {s.name: np.random.default_rng(0).standard_normal(s.shape).astype(s.dtype) if s.dtype.kind == "f"
                  else np.full(s.shape, s.shape[-1] if len(s.shape) else 1, s.dtype) for s in left.input_specs}
        for output, value in right.predict(inputs).items():
            np.testing.assert_array_equal(left.predict(inputs)[output], value)


@pytest.mark.parametrize("spec, message", [
    ({"encoder": {"layer 00 attentoin": [{"kind": "linear"}]}}, "unknown group 'layer 00 attentoin'"),
    ({"decoder": {"decoder LSTM": [{"kind": "linear"}]}}, "'decoder LSTM' is kept as exported"),
    ({"preprocessor": {"joint": [{"kind": "linear"}]}}, "front end"),
    ({"encoder": {"*": [{"kind": "linear"}]}}, "names no group"),
    ({"minimum_deployment_target": "iOS18",
      "encoder": {"joint": [{"kind": "prune", "target_sparsity": 0.5}, {"kind": "linear"}]}}, "one step per group"),
    ({"minimum_deployment_target": "iOS18", "encoder": {"joint": [{"kind": "linear"}]},
      "*": [{"kind": "prune", "target_sparsity": 0.5}, {"kind": "linear"}]}, "cannot be mixed"),
    ({"encoder": {"joint": [{"kind": "palettize", "nbits": 3}]}}, "3 bits needs minimum_deployment_target iOS18"),
])
def test_bad_recipes_are_refused_with_the_reason(spec, message):
    with pytest.raises(UserError, match=message):
        parse_variant("mine", spec, "test")


def test_a_recipe_reads_back_as_the_variant_it_was_written_from():
    declared = {"summary": "searched", "minimum_deployment_target": "iOS18",
                "mel_encoder": {"*": [{"kind": "palettize", "nbits": 4}], "layer 01 attention": [],
                                "subsampling": [{"kind": "palettize", "nbits": 3}]},
                "joint": [{"kind": "linear", "granularity": "per_channel"}],
                "decoder": [{"kind": "prune", "n_m_ratio": [2, 4]}]}  # a list, as JSON gives it
    variant = parse_variant("searched", declared, "test")
    assert variant.steps_for("mel_encoder") == (Step.of("palettize", nbits=4),)
    assert variant.groups == {"mel_encoder": {"layer 01 attention": (),
                                              "subsampling": (Step.of("palettize", nbits=3),)}}
    recipe = json.loads(json.dumps(variant.recipe()))  # through the file's JSON
    assert parse_variant(recipe.pop("name"), recipe, "again") == variant
    assert len({step for steps in variant.steps.values() for step in steps}) == 3  # hashable, the list too


def test_a_recipe_naming_a_layer_the_model_lacks_is_refused_before_any_work(torch_model):
    layers = len(torch_model.encoder.layers)
    ok = parse_variant("ok", {"encoder": {"layer 00 attention": [{"kind": "linear"}]}}, "test")
    assert check_against_model(ok, torch_model) == []
    late = parse_variant("late", {"encoder": {f"layer {layers:02d} attention": [{"kind": "linear"}]}}, "test")
    with pytest.raises(UserError, match=f"encoder has no group\\(s\\) layer {layers:02d} attention in this model"):
        check_against_model(late, torch_model)


def _blocks(size: int, kind: str = "linear") -> Variant:
    step = {"kind": "linear", "dtype": "int4", "granularity": "per_block", "block_size": size} if kind == "linear" \
        else {"kind": "palettize", "nbits": 4, "granularity": "per_grouped_channel", "group_size": size}
    return parse_variant(f"{kind}{size}", {"minimum_deployment_target": "iOS18", "*": [step]}, "test")


def test_a_block_size_that_divides_no_weights_channels_is_refused_before_any_work(torch_model):
    """Blocks of 7 would compress nothing (coremltools leaves such a weight as it is, with a
    warning): the variant would be the uncompressed export under another name."""
    channels = sorted({p.shape[1] for p in torch_model.encoder.parameters() if p.dim() > 1 and p.numel() > 2048})
    assert all(c % 7 for c in channels)  # the premise: a width of 7 is no channel count of the test model
    with pytest.raises(UserError, match="variant linear7: block_size 7 divides none of the .* weights it would "
                                        "compress \\(their input channels: "):
        check_against_model(_blocks(7), torch_model)
    with pytest.raises(UserError, match="group_size 7 divides none .*their output channels"):
        check_against_model(_blocks(7, "palettize"), torch_model)


def test_a_block_size_that_divides_some_channels_is_noted():
    """A model whose weights have 96 and 64 input channels: blocks of 32 take all, of 64 some."""
    class Part(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(96, 64), torch.nn.Linear(64, 96)

    model = torch.nn.Module()
    model.encoder = Part()
    assert check_against_model(_blocks(32), model) == []
    notes = check_against_model(_blocks(64), model)
    assert len(notes) == 1 and "block_size 64 leaves 1 of 2 weights as exported" in notes[0] and "96" in notes[0]


def test_a_recipe_compresses_each_group_exactly_as_its_scheme_does_alone(session_exporters, export_cache):
    """A mixed package holds, weight for weight, what the uniform variant of each group's step
    holds: layer 0's attention palettized to 4 bits, nothing of layer 0's feed-forward, int8 per
    channel for the rest."""
    base = session_exporters["float16"].export_all(["mel_encoder"])[0]
    recipe = Variant("recipe", "test", {"mel_encoder": (INT8_PER_CHANNEL,)}, groups={
        "mel_encoder": {"layer 00 attention": (PALETTE[4],), "layer 00 feed-forward": ()}})
    uniform = {step: compress(base, Variant(f"all_{i}", "test", {"*": (step,)}), export_cache)
               for i, step in enumerate((PALETTE[4], INT8_PER_CHANNEL))}
    mixed = compress(base, recipe, export_cache)
    origins = base.op_origins()
    plain = MILModel(base.package)

    def values(package):  # constant -> (group, decompressed value)
        return {constant: (group_of("mel_encoder", origins.get(reader, "")), value)
                for reader, constant, value in plain.weights_in(MILModel(package))}

    found = values(mixed.package)
    by_step = {step: values(c.package) for step, c in uniform.items()}
    groups = set(grouped_weights(base, keep_lstm=True).values())
    assert {"layer 00 attention", "layer 00 feed-forward"} < groups
    assert {group for group, _ in found.values()} == groups - {"layer 00 feed-forward"}
    for constant, (group, value) in found.items():
        step = PALETTE[4] if group == "layer 00 attention" else INT8_PER_CHANNEL
        np.testing.assert_array_equal(value, by_step[step][constant][1], err_msg=f"{group} {constant}")
    assert uniform[PALETTE[4]].size_bytes < mixed.size_bytes < base.size_bytes  # (a feed-forward kept fp16)
