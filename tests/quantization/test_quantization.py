"""Every compression variant builds and is weighed; the gated ones meet their thresholds
(validation/tolerances.py, overridable from pyproject.toml and --gate)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from runtimes.mil import MILModel
from validation.tolerances import gate_failures

pytestmark = pytest.mark.quantization


def test_variant_builds_and_is_weighed(quantization_sweep, variant_name):
    result = quantization_sweep(variant_name)
    assert result.error is None, f"{variant_name} was not built: {result.error}"
    assert result.components, "no component was weighed"
    for name, component in result.components.items():
        # NaN fails both; an uncompressed component is the base package re-saved, so identical
        if component.uncompressed:
            assert component.quality == 1.0, (name, component.quality)
        else:
            assert 0.0 < component.quality <= 1.0, (name, component.quality)
        assert component.size_bytes > 0 and (component.uncompressed or component.size_bytes < component.base_size_bytes)
        assert component.uncompressed or component.extra["compress_seconds"] > 0, name
    assert result.end_to_end["reference_tokens"] > 0, "the uncompressed export transcribed nothing: no end-to-end check"


def test_gate(quantization_sweep, gate):
    variant, metric, minimum = gate
    result = quantization_sweep(variant)
    assert result.error is None, f"{variant} was not built: {result.error}"
    failures = gate_failures(variant, result.as_dict(), {variant: {metric: minimum}})
    assert not failures, "; ".join(failures)


def test_int8_per_channel_keeps_held_out_wer(held_out):
    """The int8 per-channel exports transcribe the held-out set within half a WER point of NeMo
    (the held-out check shared with the parity suite; it reaches the quantization summary)."""
    assert held_out.failure("int8_per_channel") is None, held_out.failure("int8_per_channel")


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", "", text.lower()).split()


def test_word_flips_against_fp16_are_where_the_words_changed(held_out):
    """Each export's word flips against the fp16 export it is compared with: some exactly in the
    utterances whose words (case and punctuation aside) differ from fp16's, each naming a word of
    the two transcripts."""
    for label in ("float32", "int8_per_channel"):
        for record in held_out.records:
            ours, theirs = _words(record["transcripts"][label]), _words(record["transcripts"]["float16"])
            flips = record["flips"][label]
            assert bool(flips) == (ours != theirs), (label, record["key"], flips)
            assert all(f["was"] in theirs for f in flips if f["was"]) and all(f["now"] in ours for f in flips
                                                                                if f["now"]), flips


def test_the_sensitivity_profile_covers_every_group_of_the_model(profiled, torch_model):
    layers = len(torch_model.encoder.layers)
    expected = {"subsampling", "decoder embedding", "joint"} | {
        f"layer {i:02d} {part}" for i in range(layers) for part in ("attention", "feed-forward", "convolution")}
    assert {row["group"] for row in profiled.sensitivity} == expected
    assert all(0.0 < row["quality"] < 1.0 and row["parameters"] > 0 for row in profiled.sensitivity)


def test_every_group_swapped_at_once_is_the_compressed_package(quantization_sweep, profiled):
    """The groups hold every weight the variant compressed: swapped in together, the uncompressed
    mel_encoder computes exactly what the variant's own package computes."""
    exports, reference = quantization_sweep.sweep.bases[profiled.variant.minimum_deployment_target]
    base, compressed = MILModel(exports["mel_encoder"].package), MILModel(profiled.packages["mel_encoder"])
    swaps = {constant: value for _, constant, value in base.weights_in(compressed)}
    inputs = reference.inputs["mel_encoder"]
    with base.constants_replaced(swaps):
        np.testing.assert_array_equal(base.predict(inputs)["encoder"], compressed.predict(inputs)["encoder"])
