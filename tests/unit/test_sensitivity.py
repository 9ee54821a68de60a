"""The sensitivity profile's parts: weights grouped by the Torch module their ops came from, and
a compressed program's weights swapped into the uncompressed one by the executor."""

from __future__ import annotations

import coremltools as ct
import coremltools.optimize.coreml as cto
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb

from runtimes.mil import MILModel
from validation.sensitivity import group_of


@pytest.mark.parametrize(("component", "origin", "group"), [
    ("mel_encoder", "encoder.encoder.3.self_attn", "layer 03 attention"),
    ("encoder", "encoder.layers.12.feed_forward2.linear1", "layer 12 feed-forward"),
    ("encoder", "encoder.0.feed_forward1", "layer 00 feed-forward"),
    ("mel_encoder", "encoder.encoder.1.conv.depthwise_conv", "layer 01 convolution"),
    ("mel_encoder", "encoder.encoder.pre_encode.out", "subsampling"),
    ("mel_encoder", "encoder.encoder.0.norm_out", "other (encoder.encoder.0.norm_out)"),
    ("mel_encoder", "", "other (no module)"),
    ("decoder", "dec_rnn.lstm", "decoder LSTM"),
    ("decoder", "embed", "decoder embedding"),
    ("joint_decision_single_step", "joint_net.1", "joint"),
])
def test_a_weight_belongs_to_the_group_of_the_module_that_reads_it(component, origin, group):
    assert group_of(component, origin) == group


def _two_linears(tmp_path):
    """A program of two 64x64 linears and its 4-bit palettized copy, as packages."""
    rng = np.random.default_rng(0)
    first, second = (rng.standard_normal((64, 64)).astype(np.float32) for _ in range(2))

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 64))], opset_version=ct.target.iOS17)
    def program(x):
        return mb.linear(x=mb.relu(x=mb.linear(x=x, weight=first, name="first")), weight=second, name="second")

    base = ct.convert(program, minimum_deployment_target=ct.target.iOS17, convert_to="mlprogram")
    config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=4, weight_threshold=1))
    compressed = cto.palettize_weights(base, config)
    paths = tmp_path / "base.mlpackage", tmp_path / "compressed.mlpackage"
    base.save(str(paths[0]))
    compressed.save(str(paths[1]))
    return paths


def test_the_compressed_weights_swapped_in_give_the_compressed_program(tmp_path):
    base_path, compressed_path = _two_linears(tmp_path)
    base, compressed = MILModel(base_path), MILModel(compressed_path)
    x = {"x": np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)}
    (out,) = base.output_names
    plain, target = base.predict(x)[out], compressed.predict(x)[out]
    assert not np.array_equal(plain, target)  # 4 bits moved the output
    swaps = base.weights_in(compressed)
    assert sorted({reader.split("_")[0] for reader, _, _ in swaps}) == ["first", "second"]  # (first_cast_fp16)
    with base.constants_replaced({constant: value for _, constant, value in swaps}):
        np.testing.assert_array_equal(base.predict(x)[out], target)
    with base.constants_replaced({constant: value for reader, constant, value in swaps if reader.startswith("first")}):
        alone = base.predict(x)[out]
    assert not np.array_equal(alone, plain) and not np.array_equal(alone, target)
    np.testing.assert_array_equal(base.predict(x)[out], plain)  # put back on the way out
