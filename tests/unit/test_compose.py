"""The mel_encoder exported as the converted preprocessor and encoder chained, held to the traced
mel_encoder it replaces: the same outputs, bit for bit, on the executor."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil import Function, Program, types

import exporters.export
from exporters.components import COMPONENTS, ExportOptions
from exporters.compose import NotChainable, chain
from exporters.convert import convert_component, op_origins
from exporters.export import Exporter
from infra.cache import ExportCache
from infra.compat import mil_program
from runtimes.mil import MILModel

MEL_ENCODER = COMPONENTS["mel_encoder"]


def _inputs(dims, length: int, seed: int, scale: float = 0.1) -> dict[str, np.ndarray]:
    audio = np.random.default_rng(seed).standard_normal((1, dims.max_audio_samples)) * scale
    audio[:, length:] = 0.0
    return {"audio_signal": audio.astype(np.float32), "audio_length": np.array([length], np.int32)}


@pytest.fixture(scope="module", params=["float16", "float32"])
def packages(request, model_source, torch_model, dims, tmp_path_factory):
    """(the chained mel_encoder, the traced one) at one precision, both converted now, in a
    cache of their own, from the session's model. Taken from the session's cache instead, the
    parts were converted at another point of the suite, and in the whole suite the traced
    reference differed from them by fp16 steps (not in this file alone, nor with a long input
    passed through the model first); what this test compares is chaining against tracing."""
    options = ExportOptions(compute_precision=request.param)
    chained = Exporter(model_source, options, ExportCache(tmp_path_factory.mktemp("cache")),
                       progress=lambda message: None).export(MEL_ENCODER)
    traced = convert_component(torch_model, MEL_ENCODER, dims, options)
    path = tmp_path_factory.mktemp("traced") / "mel_encoder.mlpackage"
    traced.save(str(path))
    return chained, path, op_origins(mil_program(traced))


@pytest.mark.parametrize("length, seed, scale", [(240000, 0, 0.1), (100000, 1, 0.5), (1, 2, 0.1), (240000, 3, 0.0)],
                         ids=["full", "part", "one sample", "silence"])
def test_the_chained_mel_encoder_computes_what_the_traced_one_does(packages, dims, length, seed, scale):
    chained, traced, _ = packages
    assert chained.info["compute_precision"] == ("mixed" if chained.info["options"]["compute_precision"] == "float16"
                                                 else "float32")
    inputs = _inputs(dims, min(length, dims.max_audio_samples), seed, scale)
    ours, theirs = MILModel(chained.package).predict(inputs), MILModel(traced).predict(inputs)
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        assert ours[name].dtype == value.dtype and ours[name].tobytes() == value.tobytes(), name


def test_the_chained_op_origins_name_the_traced_modules(packages):
    chained, _, traced_origins = packages
    origins = chained.op_origins()
    assert set(origins.values()) == set(traced_origins.values())
    # every op's origin from the part it came from: a name both parts use (renamed in the first)
    # once took the encoder's origin, and the quantizer compressed a front-end op as the encoder's
    model = MILModel(chained.package)
    front = {name for name, origin in origins.items() if origin.startswith("preprocessor")}
    assert front == {step.name for step in model.steps[:len(front)]}


def test_a_fresh_run_chains_the_parts_it_converted_without_reading_them_back(model_source, tmp_path, monkeypatch):
    def read_back(package):
        raise AssertionError(f"read {package} back")

    monkeypatch.setattr(exporters.export, "load_program", read_back)
    lines = []
    exporter = Exporter(model_source, ExportOptions(), ExportCache(tmp_path), progress=lines.append)
    exported = exporter.export_all(["preprocessor", "encoder", "mel_encoder"])
    assert any("mel_encoder: chaining the converted preprocessor and encoder" in line for line in lines), lines
    assert exported[-1].info["fp32_ops"] > 0  # the preprocessor's part stays fp32


def test_parts_that_cannot_be_chained_are_traced(model_source, tmp_path, monkeypatch):
    def refuse(programs, component, options):
        raise NotChainable("an op with nested blocks (cond, while_loop)")

    monkeypatch.setattr(exporters.export, "convert_chained", refuse)
    lines = []
    exporter = Exporter(model_source, ExportOptions(), ExportCache(tmp_path), progress=lines.append)
    exported = exporter.export(MEL_ENCODER)
    assert any("cannot chain the converted parts (an op with nested blocks" in line for line in lines), lines
    assert any("mel_encoder: tracing and converting" in line for line in lines), lines
    assert MILModel(exported.package).output_names == ["encoder", "encoder_length"]


def test_with_flexible_audio_the_mel_encoder_keeps_the_window(session_exporters, dims, tmp_path):
    fixed = session_exporters["float16"]
    lines = []
    flexible = Exporter(fixed.source, dataclasses.replace(fixed.options, flexible_audio=True), ExportCache(tmp_path),
                        progress=lines.append)
    model = MILModel(flexible.export(MEL_ENCODER).package)
    assert sum(line.startswith("loading ") for line in lines) == 1, lines  # the fixed window's part: no second load
    assert [(s.name, s.shape, s.ranges) for s in model.input_specs] == [
        ("audio_signal", (1, dims.max_audio_samples), None), ("audio_length", (1,), None)]
    inputs = _inputs(dims, 150000, 4)
    reference = MILModel(fixed.export(MEL_ENCODER).package).predict(inputs)
    assert all(np.array_equal(model.predict(inputs)[k], v) for k, v in reference.items())


def _program(build, shape=(2,)) -> Program:
    with Function({"x": mb.placeholder(shape=shape, dtype=types.fp32)}) as function:
        function.set_outputs(build(function.inputs["x"]))
    program = Program()
    program.add_function("main", function)
    return program


def test_chain_feeds_each_program_the_earlier_outputs_of_its_input_names():
    first = _program(lambda x: [mb.mul(x=x, y=2.0, name="x")])  # outputs "x": the next one's input
    second = _program(lambda x: [mb.add(x=x, y=1.0, name="y")])
    program, renamed = chain([first, second], ["first_", ""])
    result = MILModel(program).predict({"x": np.array([1.0, -3.0], np.float32)})
    assert np.array_equal(result["y"], np.array([3.0, -5.0], np.float32)) and renamed == [{}, {}]


def test_chain_renames_an_earlier_name_a_later_program_uses():
    first = _program(lambda x: [mb.relu(x=mb.mul(x=x, y=2.0, name="shared"), name="x")])
    second = _program(lambda x: [mb.mul(x=x, y=3.0, name="shared")])
    program, renamed = chain([first, second], ["first_", ""])
    assert renamed == [{"shared": "first_shared"}, {}]  # the later program's "shared" keeps its name
    assert MILModel(program).predict({"x": np.array([1.0, -1.0], np.float32)})["shared"].tolist() == [6.0, 0.0]


def _named(var, name: str):
    var.set_name(name)  # an output named apart from its op, as converted programs have them
    return var


def test_chain_renames_an_earlier_op_name_a_later_program_uses():
    """Two ops of one name in the chained program made coremltools' compression refuse it ("compression
    config conflict detected between ops"): op names are renamed too, not only output names."""
    first = _program(lambda x: [mb.relu(x=_named(mb.mul(x=x, y=2.0, name="op_1"), "a"), name="x")])
    second = _program(lambda x: [_named(mb.mul(x=x, y=3.0, name="op_1"), "b")])
    program, _ = chain([first, second], ["first_", ""])
    names = [op.name for op in program.functions["main"].operations if op.op_type != "const"]
    assert len(names) == len(set(names)) and "first_op_1" in names, names
    assert MILModel(program).predict({"x": np.array([1.0, -1.0], np.float32)})["b"].tolist() == [6.0, 0.0]


def test_chain_refuses_what_it_cannot_chain():
    looped = _program(lambda x: [mb.cond(pred=mb.greater(x=mb.reduce_sum(x=x), y=0.0),
                                         _true_fn=lambda: mb.mul(x=x, y=2.0), _false_fn=lambda: x)])
    with pytest.raises(NotChainable, match="nested blocks"):
        chain([looped, looped], ["first_", ""])
    unfed = _program(lambda x: [mb.relu(x=x, name="not_x")])
    with pytest.raises(NotChainable, match=r"no earlier program outputs \['x'\]"):
        chain([unfed, unfed], ["first_", ""])
