"""The executor on packages compressed by ``coremltools.optimize.coreml``, saved and loaded back.

The oracle decompresses each weight with coremltools' own value inference of the constexpr
ops (code independent of ours) and applies the layer in float64 numpy.
"""

from __future__ import annotations

import coremltools as ct
import coremltools.optimize.coreml as cto
import numpy as np
import pytest
import torch
from coremltools.converters.mil.frontend.milproto.load import load

from runtimes.mil import MILModel

pytestmark = pytest.mark.filterwarnings("ignore")


def _config(kind: str):
    small = dict(weight_threshold=0)
    return {
        "int8_per_channel": (cto.OpLinearQuantizerConfig(mode="linear", granularity="per_channel", **small), False),
        "int8_per_tensor_symmetric": (cto.OpLinearQuantizerConfig(mode="linear_symmetric", granularity="per_tensor",
                                                                  **small), False),
        "int4_per_block": (cto.OpLinearQuantizerConfig(dtype="int4", granularity="per_block", block_size=8, **small),
                           False),
        "palettize_8bit": (cto.OpPalettizerConfig(nbits=8, **small), False),
        "palettize_6bit": (cto.OpPalettizerConfig(nbits=6, **small), False),
        "palettize_4bit_grouped": (cto.OpPalettizerConfig(nbits=4, granularity="per_grouped_channel", group_size=4,
                                                          **small), False),
        "palettize_2bit_vector": (cto.OpPalettizerConfig(nbits=2, cluster_dim=2, **small), False),
        "pruned": (cto.OpMagnitudePrunerConfig(target_sparsity=0.5, **small), False),
        "pruned_then_int8": (cto.OpLinearQuantizerConfig(mode="linear", granularity="per_channel", **small), True),
        "pruned_then_palettized": (cto.OpPalettizerConfig(nbits=4, **small), True),
    }[kind]


COMPRESS = {
    "int8_per_channel": "linear_quantize_weights", "int8_per_tensor_symmetric": "linear_quantize_weights",
    "int4_per_block": "linear_quantize_weights", "palettize_8bit": "palettize_weights",
    "palettize_6bit": "palettize_weights", "palettize_4bit_grouped": "palettize_weights",
    "palettize_2bit_vector": "palettize_weights", "pruned": "prune_weights",
    "pruned_then_int8": "linear_quantize_weights", "pruned_then_palettized": "palettize_weights",
}
IOS16_KINDS = (  # the rest need the iOS18 opset
    "int8_per_channel", "int8_per_tensor_symmetric", "palettize_8bit", "palettize_6bit", "pruned")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(8, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 12)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).transpose(1, 2))


def _reference(program, x):
    """Run Net from the weights coremltools itself decompresses."""
    weights = {}
    for op in program.functions["main"].operations:
        if op.op_type.startswith("constexpr_"):
            infer = getattr(op, "materialized_val_inference", None) or op.value_inference
            values = infer()
            weights[op.outputs[-1].name] = np.asarray(values[-1] if isinstance(values, tuple) else values)
    for op in program.functions["main"].operations:
        if op.op_type == "const":
            weights[op.outputs[0].name] = op.outputs[0].val
    conv = next(op for op in program.functions["main"].operations if op.op_type == "conv")
    linear = next(op for op in program.functions["main"].operations if op.op_type == "linear")
    w_conv = weights[conv.weight.name].astype(np.float64)
    w_fc = weights[linear.weight.name].astype(np.float64)
    h = torch.nn.functional.conv1d(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w_conv),
                                   torch.from_numpy(weights[conv.bias.name].astype(np.float64)), padding=1)
    h = torch.relu(h).transpose(1, 2).numpy()
    return h @ w_fc.T + weights[linear.bias.name].astype(np.float64)


@pytest.mark.parametrize("kind, target", [(kind, target) for kind in sorted(COMPRESS) for target in ("iOS16", "iOS18")
                                          if target == "iOS18" or kind in IOS16_KINDS])
def test_compressed_package_matches_its_decompressed_weights(kind, target, tmp_path):
    torch.manual_seed(0)
    net = Net().eval()
    x = np.random.default_rng(1).normal(size=(1, 8, 10)).astype(np.float32)
    traced = torch.jit.trace(net, torch.from_numpy(x))
    model = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=x.shape)], convert_to="mlprogram",
                       minimum_deployment_target=getattr(ct.target, target), compute_precision=ct.precision.FLOAT32,
                       skip_model_load=True)
    config, joint = _config(kind)
    if joint:
        model = cto.prune_weights(model, cto.OptimizationConfig(
            global_config=cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=0)))
    compress = getattr(cto, COMPRESS[kind])
    kwargs = {"joint_compression": True} if joint else {}
    model = compress(model, cto.OptimizationConfig(global_config=config), **kwargs)
    path = tmp_path / "net.mlpackage"
    model.save(str(path))

    reloaded = ct.models.MLModel(str(path), skip_model_load=True)
    spec = reloaded.get_spec()
    program = load(spec, spec.specificationVersion, file_weights_dir=reloaded.weights_dir)
    operations = program.functions["main"].operations
    constexpr = sorted({op.op_type for op in operations if op.op_type.startswith("constexpr")})
    assert constexpr, f"{kind} left no compressed weight in the program"

    out = MILModel(path).predict({"x": x})
    (name,) = out
    np.testing.assert_allclose(out[name], _reference(program, x), rtol=1e-5, atol=1e-5,
                               err_msg=f"{kind} on {target} ({', '.join(constexpr)})")
