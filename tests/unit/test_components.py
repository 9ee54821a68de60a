"""The I/O contract: every package and every Torch wrapper has the table's names, shapes and dtypes."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
import torch
from coremltools.proto import FeatureTypes_pb2

from exporters.components import COMPONENTS, example_inputs, get_components
from exporters.wrappers import Joint, JointDecision, raw_joint_logits, wrapper


def _package_io(path):
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    name_of = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name
    dtypes = {"FLOAT32": "float32", "INT32": "int32", "FLOAT16": "float16"}

    def describe(features):
        return [(f.name, tuple(f.type.multiArrayType.shape), dtypes[name_of(f.type.multiArrayType.dataType)])
                for f in features]

    return describe(spec.description.input), describe(spec.description.output)


def _table_io(component, dims):
    return ([(s.name, s.shape, s.dtype) for s in component.inputs(dims)],
            [(s.name, s.shape, s.dtype) for s in component.outputs(dims)])


def test_dims_come_from_the_loaded_model(torch_model, dims):
    assert dims.encoder_dim == torch_model.encoder.d_model
    assert dims.pred_hidden == torch_model.decoder.pred_hidden
    assert dims.pred_layers == torch_model.decoder.pred_rnn_layers
    assert dims.vocab_size == torch_model.tokenizer.vocab_size
    assert dims.joint_classes == torch_model.joint.num_classes_with_blank
    assert dims.n_mels == torch_model.cfg.preprocessor.features
    # 15 s at a 10 ms hop with a centred STFT, then three stride-2 stages.
    assert dims.max_audio_samples == 15 * dims.sample_rate
    assert dims.mel_frames == dims.max_audio_samples // 160 + 1
    frames = dims.mel_frames
    for _ in range(3):
        frames = (frames - 1) // 2 + 1
    assert dims.encoder_frames == frames
    assert dims.encoder_hop == 160 * 8  # 10 ms mel hop, 8x subsampling: 80 ms per encoder frame


@pytest.mark.parametrize("precision", ["float32", "float16"])
@pytest.mark.parametrize("name", list(COMPONENTS))
def test_package_matches_contract(having, name, precision):
    exporter = having(name)[precision]
    exported = exporter.export(COMPONENTS[name])
    assert _package_io(exported.package) == _table_io(COMPONENTS[name], exporter.dims)


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_wrapper_matches_contract(having, name):
    component = COMPONENTS[name]
    torch_model, dims = having(name)["float32"].model, having(name)["float32"].dims
    inputs = example_inputs(component, dims)
    with torch.no_grad():
        outputs = wrapper(component.name, torch_model)(*(torch.from_numpy(v) for v in inputs.values()))
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    got = [(s.name, tuple(o.shape), str(o.dtype).removeprefix("torch."))
           for s, o in zip(component.outputs(dims), outputs, strict=True)]
    assert got == _table_io(component, dims)[1]


def test_recorded_precision_is_the_programs(session_exporters):
    fp16 = {c.name: session_exporters["float16"].export(c).info
            for c in get_components(["preprocessor", "encoder", "mel_encoder"])}
    assert fp16["preprocessor"]["compute_precision"] == "float32"  # fp16 would overflow the power spectrum
    assert fp16["encoder"]["compute_precision"] == "float16"
    assert fp16["mel_encoder"]["compute_precision"] == "mixed"
    # the fused package keeps exactly the preprocessor's ops in fp32
    assert fp16["mel_encoder"]["fp32_ops"] == fp16["preprocessor"]["fp32_ops"]
    fp32 = session_exporters["float32"].export(COMPONENTS["encoder"]).info
    assert (fp32["compute_precision"], fp32["fp16_ops"]) == ("float32", 0)


def test_joint_returns_raw_logits_not_nemos_cpu_log_softmax(torch_model, dims):
    """NeMo's joint log-softmaxes tokens and durations together on CPU; ours must not."""
    inputs = example_inputs(COMPONENTS["joint"], dims)
    enc, dec = (torch.from_numpy(v) for v in inputs.values())
    with torch.no_grad():
        raw = Joint(torch_model)(enc, dec)
        nemo = torch_model.joint.joint(enc.transpose(1, 2), dec.transpose(1, 2))
    assert torch_model.joint.log_softmax is None  # the model is untouched
    assert not torch.allclose(raw.exp().sum(-1), torch.ones(()), atol=1e-3)
    torch.testing.assert_close(torch.log_softmax(raw, dim=-1), nemo, rtol=1e-5, atol=1e-5)


def test_joint_decision_semantics(torch_model, dims):
    """Decision = argmax over vocab+1 token logits, its softmax probability, argmax of the durations."""
    inputs = example_inputs(COMPONENTS["joint_decision"], dims, seed=3)
    enc, dec = (torch.from_numpy(v) for v in inputs.values())
    with torch.no_grad():
        logits = raw_joint_logits(torch_model.joint, enc, dec).numpy()
        token_id, token_prob, duration = (t.numpy() for t in JointDecision(torch_model)(enc, dec))
    v1 = dims.vocab_size + 1
    tokens = logits[..., :v1].astype(np.float64)
    probs = np.exp(tokens - tokens.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_array_equal(token_id, tokens.argmax(-1))
    np.testing.assert_allclose(token_prob, probs.max(-1), rtol=1e-5)
    np.testing.assert_array_equal(duration, logits[..., v1:].argmax(-1))
    assert logits.shape[-1] - v1 == len(dims.durations)
