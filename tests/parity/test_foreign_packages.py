"""Package sets written the way other converters write them: plain ``coremltools.convert`` calls
with their own file names, precision and deployment target, a preprocessor with a ``RangeDim``
waveform, one with ``EnumeratedShapes``, an extra output, a wrong dtype. ``compare --packages``
passes where it should and says exactly what is wrong where it should not."""

from __future__ import annotations

import json
import shutil

import coremltools as ct
import numpy as np
import pytest
import soundfile
import torch

from cli.main import main
from exporters import torch_compat
from exporters.components import COMPONENTS, example_inputs, get_components
from exporters.quantize import GivenExports
from exporters.wrappers import wrapper
from reports.metadata import read_metadata
from runtimes.loader import LoadedPredictors
from runtimes.mil.model import load_program
from validation.audio import synthetic_speech
from validation.checks import ParityRunner, torch_reference
from validation.tolerances import load_tolerances

pytestmark = pytest.mark.parity

# names as the reference converter, apps and older exports spell them
FILE_NAMES = {"preprocessor": "Preprocessor", "encoder": "parakeet_encoder", "mel_encoder": "MelEncoder",
              "decoder": "decoder", "joint": "Joint", "joint_decision": "parakeet-joint-decision",
              "joint_decision_single_step": "JointDecisionSingleStep", "ctc_head": "CtcHead"}
# the checks of a whole set, by the model's family (the contract's check keys for its components)
CHECKS_OF_A_WHOLE_SET = {"tdt": 20, "tdt_ctc": 23}


class _WithExtraOutput(torch.nn.Module):
    """The component's outputs and one more, as some converters add for debugging."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        outputs = self.inner(*args)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return (*outputs, outputs[0].mean())


def write_package(model, dims, name: str, path, *, shapes=None, dtypes=None, output_names=None, extra_output=False):
    """One component converted directly with coremltools: fp32, iOS16, author and version set."""
    component = COMPONENTS[name]
    module = wrapper(name, model)
    if extra_output:
        module = _WithExtraOutput(module)
    specs = component.inputs(dims)
    example = example_inputs(component, dims)
    traced = torch.jit.trace(module, tuple(torch.from_numpy(example[s.name]) for s in specs), check_trace=False)
    outputs = [ct.TensorType(name=n) for n in (output_names or [s.name for s in component.outputs(dims)])]
    if extra_output:
        outputs.append(ct.TensorType(name="debug_mean"))
    with torch_compat.overrides():  # torch 2.13's converter gaps, which any converter on this torch needs filled
        package = ct.convert(
            traced, inputs=[ct.TensorType(name=s.name, shape=(shapes or {}).get(s.name, s.shape),
                                          dtype=(dtypes or {}).get(s.name, np.dtype(s.dtype).type)) for s in specs],
            outputs=outputs, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
            compute_precision=ct.precision.FLOAT32, skip_model_load=True)
    package.author = "another converter"
    package.version = "3.1"
    package.save(str(path))
    return path


@pytest.fixture(scope="module")
def foreign_set(torch_model, dims, tmp_path_factory):
    """Every component of the model's family (seven for a TDT model, and the CTC head of a hybrid),
    under other names; the preprocessor takes 1 to 240000 samples, as the public release's does."""
    directory = tmp_path_factory.mktemp("foreign") / "models"
    directory.mkdir()
    for name, stem in FILE_NAMES.items():
        if not COMPONENTS[name].fits(dims):
            continue
        shapes = {"audio_signal": (1, ct.RangeDim(1, dims.max_audio_samples, default=dims.max_audio_samples))} \
            if name == "preprocessor" else None
        write_package(torch_model, dims, name, directory / f"{stem}.mlpackage", shapes=shapes)
    (directory / "README.md").write_text("not a package\n")
    return directory


def _compare(model_source, export_cache, report, *args):
    return main(["compare", *args, *model_source.cli_args(), "--report-dir", str(report), "--cache-dir",
                 str(export_cache.root), "--backend", "mil", "--runs", "0"])


def test_a_set_written_by_another_converter_passes_every_check(foreign_set, model_source, export_cache, dims,
                                                                tmp_path, capsys):
    report = tmp_path / "report"
    code = _compare(model_source, export_cache, report, "--packages", str(foreign_set))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    checks = CHECKS_OF_A_WHOLE_SET[dims.family.name]
    assert f"[6/6] speech_1s: {checks} of {checks} checks passed" in captured.err
    metadata = read_metadata(report)
    assert metadata["validation"]["status"] == "passed"
    origin = metadata["packages"]
    assert origin["directory"] == str(foreign_set.resolve()) and origin["unmatched_files"] == []
    assert {n: c["file"] for n, c in origin["components"].items()} == {
        n: f"{stem}.mlpackage" for n, stem in FILE_NAMES.items()}
    encoder = origin["components"]["encoder"]["metadata"]
    assert encoder["author"] == "another converter" and encoder["version"] == "3.1"
    assert encoder["com.github.apple.coremltools.version"] == ct.__version__
    assert origin["components"]["preprocessor"]["flexible_inputs"] == ["audio_signal: float32[1, 1..240000]"]
    # fp32 packages are held to the fp32 rules (the whole transcript of a confident model)
    assert metadata["coreml"]["compute_precision"] == "float32"


def test_a_flexible_preprocessor_is_fed_the_unpadded_clip(foreign_set, torch_model, dims, export_cache):
    """As an app feeds it: the clip's own samples, compared against Torch on the same samples."""
    packages = {"preprocessor": foreign_set / "Preprocessor.mlpackage"}
    runner = ParityRunner(torch_model, dims, packages, LoadedPredictors("mil"), load_tolerances(None, [], None),
                          "mil", "float32")
    clip = synthetic_speech(export_cache, dims)
    run = runner.run_component("preprocessor", torch_reference(runner.wrappers, dims, clip))
    assert clip.length < dims.max_audio_samples
    assert run.inputs["audio_signal"].shape == (1, clip.length)
    assert run.exported["mel"].shape == run.reference["mel"].shape == (1, dims.n_mels, clip.length // 160 + 1)


def test_an_extra_output_and_enumerated_shapes_pass_and_absent_components_skip(torch_model, dims, model_source,
                                                                               export_cache, tmp_path, capsys):
    joint = write_package(torch_model, dims, "joint", tmp_path / "my-joint.mlpackage", extra_output=True)
    front = write_package(torch_model, dims, "preprocessor", tmp_path / "front.mlpackage",
                          shapes={"audio_signal": ct.EnumeratedShapes(
                              shapes=[(1, dims.max_audio_samples), (1, dims.max_audio_samples // 2)],
                              default=(1, dims.max_audio_samples))})
    report = tmp_path / "report"
    code = _compare(model_source, export_cache, report, "--component", f"joint={joint}", "--component",
                    f"preprocessor={front}")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    clips = read_metadata(report)["validation"]["clips"]
    speech = clips["speech"]
    assert speech["joint.logits"]["status"] == "passed" and speech["preprocessor.mel"]["status"] == "passed"
    assert speech["encoder.encoder"]["status"] == "skipped"
    assert speech["encoder.encoder"]["reason"] == "no package: encoder"


def test_contract_differences_are_one_error_naming_each(torch_model, dims, model_source, export_cache, tmp_path,
                                                        capsys):
    """A float16 input where the contract has float32, and an output under another name: refused
    before anything runs, every difference listed, nothing written."""
    directory = tmp_path / "bad"
    directory.mkdir()
    write_package(torch_model, dims, "joint", directory / "Joint.mlpackage", dtypes={"decoder": np.float16})
    write_package(torch_model, dims, "decoder", directory / "Decoder.mlpackage",
                  output_names=["decoder_out", "h_out", "c_out"])
    report = tmp_path / "report"
    code = _compare(model_source, export_cache, report, "--packages", str(directory))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert last.startswith("parakeet-coreml compare: error: the packages do not follow the I/O contract")
    assert "decoder (Decoder.mlpackage): output 'decoder' missing" in last
    assert "joint (Joint.mlpackage): input 'decoder' is float16, expected float32" in last
    assert not report.exists()


def test_quantize_and_evaluate_take_a_package_set(foreign_set, model_source, export_cache, dims, tmp_path, capsys):
    """The variants are built from the packages as found and labelled with where they came from;
    evaluate decodes with them."""
    root = tmp_path / "quantized"
    code = main(["quantize", "--packages", str(foreign_set), *model_source.cli_args(), "--output-root", str(root),
                 "--cache-dir", str(export_cache.root), "--backend", "mil", "--variants", "palettize_8bit",
                 "--held-out", "none", "--runs", "0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    entry = json.loads((root / "quantization_summary.json").read_text())["variants"]["palettize_8bit"]
    # its gate holds only with the front end inside MelEncoder left as it was: found by the weights
    # it shares with Preprocessor (compressed with the rest, mel_encoder's quality was 0.946)
    assert entry["error"] is None and entry["gates"]["status"] == "passed"
    assert entry["components"]["mel_encoder"]["quality"] > 0.95
    assert entry["measured_with"]["packages"]["components"]["encoder"]["file"] == "parakeet_encoder.mlpackage"
    assert entry["components"]["encoder"]["compression_ratio"] > 1.5  # fp32 weights to 8-bit indices
    speech = tmp_path / "speech.wav"
    clip = synthetic_speech(export_cache, dims)
    soundfile.write(str(speech), clip.samples[:clip.length], dims.sample_rate)
    report = tmp_path / "report"
    code = main(["evaluate", "--packages", str(foreign_set), *model_source.cli_args(), "--audio", str(speech),
                 "--report-dir", str(report), "--cache-dir", str(export_cache.root), "--backend", "mil"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    block = read_metadata(report)["evaluation"]
    assert block["status"] == "passed" and block["utterances"] == 1


def test_the_front_end_of_a_given_mel_encoder_is_found_by_the_weights_it_shares(foreign_set):
    given = GivenExports({"preprocessor": foreign_set / "Preprocessor.mlpackage",
                          "mel_encoder": foreign_set / "MelEncoder.mlpackage",
                          "encoder": foreign_set / "parakeet_encoder.mlpackage"}).packages
    program = load_program(given["mel_encoder"].package)
    front = given["mel_encoder"].front_end_ops(program)
    ops = {op.name: op.op_type for op in program.functions["main"].operations}
    assert any(ops[name] == "const" for name in front) and any(ops[name] != "const" for name in front)
    assert given["encoder"].front_end_ops(load_program(given["encoder"].package)) == ()  # shares none


@pytest.fixture(scope="module")
def streaming_set(streaming, tmp_path_factory):
    """The streaming model's fp32 streaming packages, renamed as an app bundles them."""
    exporter = streaming[0]["float32"]
    folder = tmp_path_factory.mktemp("foreign-streaming")
    for name, file in (("encoder_streaming_first", "Parakeet_Encoder_Streaming_First"),
                       ("encoder_streaming", "parakeetEncoderStreaming")):
        shutil.copytree(exporter.export(get_components([name])[0]).package, folder / f"{file}.mlpackage")
    return folder, exporter


def test_a_streaming_set_is_found_by_name_and_checked_chunk_by_chunk(streaming_set, export_cache, tmp_path, capsys):
    folder, exporter = streaming_set
    report = tmp_path / "report"
    code = main(["compare", "--packages", str(folder), *exporter.source.cli_args(), "--runs", "0", "--cache-dir",
                 str(export_cache.root), "--report-dir", str(report), "--backend", "mil"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert ("package(s) from " in captured.err and "encoder_streaming_first=Parakeet_Encoder_Streaming_First.mlpackage"
            in captured.err and "encoder_streaming=parakeetEncoderStreaming.mlpackage" in captured.err)
    block = read_metadata(report)["streaming_validation"]
    assert block["status"] == "passed" and list(block["runs"]) == ["float32"], block["failures"]


def test_a_streaming_set_is_held_to_the_chunk_and_to_a_cache_aware_model(streaming_set, export_cache, tmp_path,
                                                                          capsys):
    folder, exporter = streaming_set
    first = next(folder.glob("*First.mlpackage"))
    code = main(["compare", "--component", f"encoder_streaming={first}", *exporter.source.cli_args(), "--runs", "0",
                 "--cache-dir", str(export_cache.root), "--report-dir", str(tmp_path / "r"), "--backend", "mil"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    dims = exporter.streaming_dims
    assert code == 2 and (f"streaming packages whose mel takes encoder_streaming {dims.first_chunk_mel_frames} frames "
                          f"fit none of") in last and f"160 ms: encoder_streaming {dims.chunk_mel_frames}" in last, last
    code = main(["compare", "--packages", str(folder), "--preset", "tiny", "--runs", "0", "--cache-dir",
                 str(export_cache.root), "--report-dir", str(tmp_path / "r"), "--backend", "mil"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "streaming packages, but preset:tiny is not a cache-aware model" in last, last
