"""How much a compressed variant departs from the uncompressed export: quality per output,
decision agreement, the end-to-end transcript, and size. Shared by ``pytest -m quantization``
and ``parakeet-coreml quantize``.

Every comparison is against the uncompressed export's own output on the same input (not
Torch): it isolates what compression did. The inputs are realistic: the speech clip for the
audio components, and what the uncompressed packages make of it for the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from exporters.components import COMPONENTS, ModelDims, example_inputs
from validation.audio import Clip
from validation.held_out import package_transcriber
from validation.metrics import quality, token_edit_distance

# The output whose quality stands for the component's (plots, gates).
PRIMARY_OUTPUT = {"preprocessor": "mel", "encoder": "encoder", "mel_encoder": "encoder", "decoder": "decoder",
                  "joint": "logits", "joint_decision": "token_prob", "joint_decision_single_step": "token_prob"}
DECISIONS = ("joint_decision", "joint_decision_single_step")
TRANSCRIBE = ("mel_encoder", "decoder", "joint_decision_single_step")


def reference_inputs(base: dict, load, dims: ModelDims, clip: Clip) -> dict[str, dict[str, np.ndarray]]:
    """Per component, the input both the base and the variant get: the clip, the base
    preprocessor's mel, the base mel_encoder's encoder output with the base decoder's output for
    the blank start (every frame; frame 0 for the single-step joint), a seeded decoder state."""
    audio = clip.inputs()
    inputs = {"preprocessor": audio, "mel_encoder": audio}
    if "preprocessor" in base:
        mel = load(base["preprocessor"]).predict(audio)
        inputs["encoder"] = {"mel": mel["mel"], "mel_length": mel["mel_length"]}
    inputs["decoder"] = example_inputs(COMPONENTS["decoder"], dims)
    if "mel_encoder" in base and "decoder" in base:
        encoder = load(base["mel_encoder"]).predict(audio)["encoder"]
        zeros = np.zeros((dims.pred_layers, 1, dims.pred_hidden), np.float32)
        decoded = load(base["decoder"]).predict({"targets": np.array([[dims.blank_id]], np.int32),
                                                 "target_length": np.ones(1, np.int32), "h_in": zeros,
                                                 "c_in": zeros})["decoder"]
        inputs["joint"] = inputs["joint_decision"] = {"encoder": encoder, "decoder": decoded}
        inputs["joint_decision_single_step"] = {"encoder_step": encoder[:, :, :1], "decoder_step": decoded}
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
        return self.outputs[PRIMARY_OUTPUT[self.name]]

    def as_dict(self) -> dict:
        return {"quality": self.quality, "outputs": self.outputs, "size_bytes": self.size_bytes,
                "size_mb": self.size_bytes / 1e6, "base_size_bytes": self.base_size_bytes,
                "compression_ratio": self.base_size_bytes / self.size_bytes, "uncompressed": self.uncompressed,
                **(self.decisions or {}), **self.extra}


def compare_component(name: str, reference: "Reference", variant_package, load, uncompressed: bool = False
                      ) -> ComponentResult:
    from exporters.export import package_size

    base_out = reference.outputs[name]
    variant_out = load(variant_package).predict(reference.inputs[name])
    outputs = {key: quality(value, variant_out[key]) for key, value in base_out.items()
               if np.issubdtype(value.dtype, np.floating)}
    decisions = decision_agreement(base_out, variant_out) if name in DECISIONS else None
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


def reference_of(base: dict, load, dims: ModelDims, clip: Clip) -> Reference:
    inputs = reference_inputs(base, load, dims, clip)
    outputs = {name: load(package).predict(inputs[name]) for name, package in base.items()}
    tokens = package_transcriber(base, load, dims)(clip) if all(n in base for n in TRANSCRIBE) else None
    return Reference(dict(base), inputs, outputs, tokens)


@dataclass
class VariantResult:
    variant: object  # exporters.quantize.Variant
    components: dict[str, ComponentResult] = field(default_factory=dict)
    packages: dict = field(default_factory=dict)  # component -> the variant's package
    end_to_end: dict = field(default_factory=dict)
    held_out: dict | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        return {**self.variant.as_dict(), "error": self.error,
                "components": {name: c.as_dict() for name, c in self.components.items()},
                "end_to_end": self.end_to_end, "held_out": self.held_out}


def timing_of(package, load, inputs: dict, backend: str, compute_units: str, runs: int, warmup: int) -> dict:
    """Latency of one package (median, mean, std ms) and, on Core ML, its compile time; labelled
    with what measured it. Off macOS the compile time is null with the reason."""
    from runtimes.base import describe_backend
    from validation.timing import summary, time_calls

    found = {"latency_ms": summary(time_calls(lambda: load(package).predict(inputs), runs, warmup))["median"],
             "latency_from": describe_backend(backend)}
    if backend == "coreml":
        from runtimes.coreml import compile_and_place

        placed = compile_and_place(package, compute_units)
        found.update(compile_ms=placed["compile_ms"], placement=placed["placement"])
    else:
        from runtimes.coreml import unavailable_reason

        found.update(compile_ms=None, compile_skipped=unavailable_reason() or f"backend {backend} compiles nothing")
    return found


def sweep_variant(variant, base_exports: dict, reference: Reference, cache, load, dims: ModelDims, clip: Clip, *,
                  backend: str, compute_units: str, runs: int = 0, warmup: int = 0, progress=lambda message: None
                  ) -> VariantResult:
    """Build ``variant`` from ``base_exports`` (component -> ExportedComponent of the variant's
    deployment target) and weigh it against their ``reference``. A variant that cannot be built
    comes back with its ``error``, never with the base packages in its place."""
    from exporters.components import ExportError
    from exporters.quantize import compress

    result = VariantResult(variant)
    try:
        compressed = {name: compress(e, variant, cache, progress) for name, e in base_exports.items()}
    except ExportError as e:
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
        result.components[name] = component
    if reference.tokens is not None:
        candidate = package_transcriber(result.packages, load, dims)(clip)
        result.end_to_end = {"clip": clip.name, "reference_tokens": len(reference.tokens), "tokens": len(candidate),
                             "edit_distance": token_edit_distance(reference.tokens, candidate),
                             "token_error_rate": token_error_rate(reference.tokens, candidate)}
    progress(f"  {variant.name}: " + ", ".join(f"{n} {c.quality:.3f}" for n, c in result.components.items())
             + (f"; token error rate {result.end_to_end['token_error_rate']:.3f}" if result.end_to_end else ""))
    return result
