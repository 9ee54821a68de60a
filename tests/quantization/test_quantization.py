"""Every compression variant builds and is weighed; the gated ones meet their thresholds
(validation/tolerances.py, overridable from pyproject.toml and --gate)."""

from __future__ import annotations

import pytest

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
