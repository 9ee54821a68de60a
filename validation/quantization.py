"""How much a compressed variant departs from the uncompressed export: quality per output,
decision agreement, the end-to-end transcript, and size. Shared by ``pytest -m quantization``
and ``parakeet-coreml quantize``.

Every comparison is against the uncompressed export's own output on the same input (not
Torch): it isolates what compression did. The inputs are realistic: the speech clip for the
audio components, and what the uncompressed packages make of it for the rest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from exporters.components import (
    COMPONENTS,
    DECISION,
    ModelDims,
    decode_packages,
    decoder_inputs,
    example_inputs,
    zero_state,
)
from exporters.export import Exporter
from exporters.quantize import GivenExports, Palettes, compress
from infra.errors import UserError
from runtimes.base import describe_backend, package_size
from runtimes.coreml import compile_and_place, unavailable_reason
from validation.audio import Clip
from validation.evaluation import package_window_ctc_decoder, package_window_decoder
from validation.metrics import quality, token_edit_distance
from validation.timing import flags, load_average, summary, time_calls


def reference_inputs(base: dict, load, dims: ModelDims, clip: Clip) -> dict[str, dict[str, np.ndarray]]:
    """Per component, the input both the base and the variant get: the clip, the base
    preprocessor's mel, the base mel_encoder's encoder output (the CTC head's input; the joints'
    with the base decoder's output for the blank start, every frame, frame 0 for the single-step
    joint), a seeded decoder state."""
    audio = clip.inputs()
    inputs = {"preprocessor": audio, "mel_encoder": audio}
    if "preprocessor" in base:
        mel = load(base["preprocessor"]).predict(audio)
        inputs["encoder"] = {"mel": mel["mel"], "mel_length": mel["mel_length"]}
    inputs["decoder"] = example_inputs(COMPONENTS["decoder"], dims)
    encoder = load(base["mel_encoder"]).predict(audio)["encoder"] if "mel_encoder" in base else None
    if encoder is not None:
        inputs["ctc_head"] = {"encoder_output": encoder}
    if encoder is not None and "decoder" in base:
        zeros = zero_state(dims)
        decoded = load(base["decoder"]).predict(decoder_inputs(dims.blank_id, zeros, zeros))["decoder"]
        inputs["joint"] = inputs["joint_decision"] = {"encoder": encoder, "decoder": decoded}
        inputs["joint_decision_single_step"] = {"encoder_step": encoder[:, :, :1], "decoder_step": decoded}
    unfed = [name for name in base if name not in inputs]
    if unfed:  # each is weighed on what the base packages before it make of the clip
        joints = ("joint", "joint_decision", "joint_decision_single_step")
        fed_by = {"encoder": ("preprocessor",), "ctc_head": ("mel_encoder",),
                  **dict.fromkeys(joints, ("mel_encoder", "decoder"))}
        lacking = sorted({need for name in unfed for need in fed_by[name] if need not in base})
        raise UserError(f"quantize weighs {', '.join(unfed)} on the outputs of {', '.join(lacking)}, which the "
                          "package set lacks; convert them too (--components)")
    return {name: value for name, value in inputs.items() if name in base}


def decision_agreement(base: dict, variant: dict) -> dict:
    """Token-id and duration match rates and the token-probability MAE of a decision package."""
    return {"acc": float(np.mean(base["token_id"] == variant["token_id"])),
            "duration_match": float(np.mean(base["duration"] == variant["duration"])),
            "prob_mae": float(np.mean(np.abs(base["token_prob"].astype(np.float64) - variant["token_prob"])))}


@dataclass
class ComponentResult:
    name: str
    size_bytes: int
    base_size_bytes: int
    outputs: dict[str, float]  # quality per float output
    decisions: dict | None = None  # decision packages: acc, duration_match, prob_mae
    uncompressed: bool = False
    extra: dict = field(default_factory=dict)  # build time, latency, compile time, where measured

    @property
    def quality(self) -> float:
        return self.outputs[COMPONENTS[self.name].headline]

    def as_dict(self) -> dict:
        return {"quality": self.quality, "outputs": self.outputs, "size_bytes": self.size_bytes,
                "size_mb": self.size_bytes / 1e6, "base_size_bytes": self.base_size_bytes,
                "base_size_mb": self.base_size_bytes / 1e6,
                "compression_ratio": self.base_size_bytes / self.size_bytes, "uncompressed": self.uncompressed,
                **(self.decisions or {}), **self.extra}


def compare_component(name: str, reference: Reference, variant_package, load, uncompressed: bool = False
                      ) -> ComponentResult:
    base_out = reference.outputs[name]
    variant_out = load(variant_package).predict(reference.inputs[name])
    outputs = {key: quality(value, variant_out[key]) for key, value in base_out.items()
               if np.issubdtype(value.dtype, np.floating)}
    has_decisions = any(p.role == DECISION for p in COMPONENTS[name].output_ports)
    decisions = decision_agreement(base_out, variant_out) if has_decisions else None
    return ComponentResult(name, package_size(variant_package), package_size(reference.packages[name]), outputs,
                           decisions, uncompressed)


def token_error_rate(reference: list[int], candidate: list[int]) -> float:
    """Token edits over the reference's tokens (the uncompressed export's transcript)."""
    return token_edit_distance(reference, candidate) / max(1, len(reference))


@dataclass
class Reference:
    """What the uncompressed packages make of the clip, computed once per set of base exports and
    shared by every variant built from them: each component's input and outputs, and the
    transcript."""

    packages: dict  # component -> base package
    inputs: dict[str, dict[str, np.ndarray]]
    outputs: dict[str, dict[str, np.ndarray]]
    tokens: list[int] | None  # None: a component of the transcript was not exported
    latency: dict[str, dict] = field(default_factory=dict)  # component -> ``latency_of``, when timed


def transcribe(packages: dict, load, dims: ModelDims, clip: Clip) -> list[int]:
    """The clip's tokens through the packages of the model's first decoding (greedy TDT, or a CTC
    model's greedy CTC), as an app drives them."""
    decode = package_window_ctc_decoder if dims.family.decodings[0] == "ctc" else package_window_decoder
    return decode(packages, load, dims)(clip.samples, clip.length).tokens


def reference_of(base: dict, load, dims: ModelDims, clip: Clip) -> Reference:
    inputs = reference_inputs(base, load, dims, clip)
    outputs = {name: load(package).predict(inputs[name]) for name, package in base.items()}
    needed = decode_packages(dims.family.decodings[0])
    tokens = transcribe(base, load, dims, clip) if all(n in base for n in needed) else None
    return Reference(dict(base), inputs, outputs, tokens)


@dataclass
class VariantResult:
    variant: object  # exporters.quantize.Variant
    components: dict[str, ComponentResult] = field(default_factory=dict)
    packages: dict = field(default_factory=dict)  # component -> the variant's package
    end_to_end: dict = field(default_factory=dict)
    held_out: dict | None = None
    error: str | None = None
    sensitivity: list[dict] | None = None  # ``validation.sensitivity``: each group compressed alone

    def as_dict(self) -> dict:
        return {**self.variant.as_dict(), "error": self.error,
                "components": {name: c.as_dict() for name, c in self.components.items()},
                "end_to_end": self.end_to_end, "held_out": self.held_out,
                **({"sensitivity": self.sensitivity} if self.sensitivity is not None else {})}

    def record(self) -> dict:
        """The result as plain data, what the report is written from (and what crosses from an
        xdist worker): the variant's name, its summary entry and its packages."""
        return {"name": self.variant.name, "entry": self.as_dict(),
                "packages": {name: str(package) for name, package in self.packages.items()}}


def held_out_entry(block: dict, label: str) -> dict:
    """A variant's share of a held-out evaluation block (``label``: its export there): its WER
    against NeMo's on the same windows, what it fails of that gate, and the words it changes
    against the uncompressed export (``Evaluation.flips``)."""
    reference = block["paths"]["reference"]
    flips = block.get("flips", {}).get(label)
    return {"set": block.get("set"), "utterances": block["utterances"], "wer": block["wer"][label]["wer"],
            "wer_nemo": block["wer"][reference]["wer"],
            "wer_difference_to_nemo": block["decomposition_points"]["export"][label] / 100,
            # the export its words are held to (the uncompressed one): what ``wer_points`` gates against
            "wer_uncompressed": block["wer"][flips["against"]]["wer"] if flips else None,
            "failures": [f.removeprefix(f"{label}: ") for f in block["failures"] if f.startswith(f"{label}: ")],
            "flips": flips}


def flip_flags(variant: str, entry: dict) -> list[str]:
    """Why a variant should be read with care though its gates pass: words it changes against the
    uncompressed export while confident of them (a WER can stay equal while they flip)."""
    flips = (entry.get("held_out") or {}).get("flips")
    if not flips or not flips["confident"]:
        return []
    top = flips["most_confident"][0]
    return [f"{variant}: changes {flips['confident']} word(s) against {flips['against']} at confidence >= "
            f"{flips['confident_at_least']} (e.g. {top['was']!r} -> {top['now']!r} in {top['key']} at "
            f"{top['time_s']} s, {top['confidence']:.3f})"]


def latency_of(package, load, inputs: dict, runs: int, warmup: int) -> dict:
    """``runs`` calls of the package after ``warmup``: median, fastest, 90th percentile and CV (ms),
    and why they should not be read alone (a wide spread, a busy host), as ``compare`` flags them."""
    calls = summary(time_calls(lambda: load(package).predict(inputs), runs, warmup))
    return {**{k: calls[k] for k in ("median", "min", "p90", "cv", "rounds")},
            "flags": flags({"calls": calls}, load_average(), os.cpu_count())}


def timing_of(package, load, inputs: dict, backend: str, compute_units: str, runs: int, warmup: int) -> dict:
    """Latency of one package (median ms) and, on Core ML, its compile time; labelled with what
    measured it. Off macOS the compile time is null with the reason."""
    latency = latency_of(package, load, inputs, runs, warmup)
    found = {"latency_ms": latency["median"], "latency": latency, "latency_from": describe_backend(backend)}
    if backend == "coreml":
        placed = compile_and_place(package, compute_units)
        found.update(compile_ms=placed["compile_ms"], placement=placed["placement"])
    else:
        found.update(compile_ms=None, compile_skipped=unavailable_reason() or f"backend {backend} compiles nothing")
    return found


def compress_all(variant, base_exports: dict, cache, progress=lambda message: None) -> dict:
    """Each of ``base_exports`` compressed by ``variant``; the encoder's k-means tables serve
    the mel_encoder too, and are freed once the packages are built."""
    palettes = Palettes()
    return {name: compress(e, variant, cache, progress, palettes) for name, e in base_exports.items()}


def sweep_variant(variant, base_exports: dict, reference: Reference, cache, load, dims: ModelDims, clip: Clip, *,
                  backend: str, compute_units: str, runs: int = 0, warmup: int = 0, progress=lambda message: None
                  ) -> VariantResult:
    """Build ``variant`` from ``base_exports`` (component -> ExportedComponent of the variant's
    deployment target) and weigh it against their ``reference``. A variant that cannot be built
    comes back with its ``error``, never with the base packages in its place."""
    result = VariantResult(variant)
    try:
        compressed = compress_all(variant, base_exports, cache, progress)
    except UserError as e:
        result.error = str(e)
        return result
    result.packages = {name: c.package for name, c in compressed.items()}
    for name, c in compressed.items():
        component = compare_component(name, reference, c.package, load, uncompressed=bool(c.info.get("uncompressed")))
        if "compress_seconds" in c.info:  # how long the build took, when it was built (cached or not)
            component.extra["compress_seconds"] = c.info["compress_seconds"]
        if runs:
            component.extra.update(timing_of(c.package, load, reference.inputs[name], backend, compute_units, runs,
                                             warmup))
            base = reference.latency.get(name)
            component.extra.update(base_latency_ms=base and base["median"], base_latency=base)
        result.components[name] = component
    if reference.tokens is not None:
        candidate = transcribe(result.packages, load, dims, clip)
        result.end_to_end = {"clip": clip.name, "reference_tokens": len(reference.tokens), "tokens": len(candidate),
                             "edit_distance": token_edit_distance(reference.tokens, candidate),
                             "token_error_rate": token_error_rate(reference.tokens, candidate)}
    progress(f"  {variant.name}: " + ", ".join(f"{n} {c.quality:.3f}" for n, c in result.components.items())
             + (f"; token error rate {result.end_to_end['token_error_rate']:.3f}" if result.end_to_end else ""))
    return result


class QuantizationSweep:
    """``sweep(name)``: variant ``name`` of ``table`` built and weighed once, each against the
    uncompressed exports of its deployment target (exported, and their ``Reference`` computed,
    once per target). Shared by ``pytest -m quantization`` and ``parakeet-coreml quantize``;
    ``load`` is a ``runtimes.loader.LoadedPredictors`` (or has its ``release``)."""

    def __init__(self, table: dict, exports: Exporter | GivenExports, components: list[str] | None, cache,
                 load, dims: ModelDims, clip: Clip, *, backend: str, compute_units: str, runs: int, warmup: int,
                 progress=lambda message: None):
        self.table, self.exports, self.components = table, exports, components  # exports: of each target by for_target
        self.cache, self.load, self.dims, self.clip = cache, load, dims, clip
        self.timing = {"backend": backend, "compute_units": compute_units, "runs": runs, "warmup": warmup}
        self.progress = progress
        self.bases: dict[str, tuple[dict, Reference]] = {}  # deployment target -> (exports, reference)
        self.results: dict[str, VariantResult] = {}

    def base(self, target: str) -> tuple[dict, Reference]:
        """The uncompressed exports of ``target`` and what they make of the clip."""
        if target not in self.bases:
            exports = {e.name: e for e in self.exports.for_target(target).export_all(self.components)}
            self.progress(f"the uncompressed {target} exports on {self.clip.name} ...")
            reference = reference_of({n: e.package for n, e in exports.items()}, self.load, self.dims, self.clip)
            if self.timing["runs"]:  # the baseline the variants' latency is read against, timed alike
                reference.latency.update({
                    name: latency_of(package, self.load, reference.inputs[name], self.timing["runs"],
                                     self.timing["warmup"]) for name, package in reference.packages.items()})
            self.bases[target] = exports, reference
        return self.bases[target]

    def __call__(self, name: str) -> VariantResult:
        if name not in self.results:
            variant = self.table[name]
            # a variant's packages are new: what earlier ones loaded would only crowd the compression
            # (those held may take a third of the host's memory, on top of the compression's own)
            self.load.release()
            self.results[name] = sweep_variant(variant, *self.base(variant.minimum_deployment_target), self.cache,
                                               self.load, self.dims, self.clip, progress=self.progress, **self.timing)
        return self.results[name]
