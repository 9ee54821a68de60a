"""A quantization sweep written out: each variant's folder (its packages and
``quantization_metadata.json``), ``quantization_summary.json`` and the plots under
``plots/quantize/<compute_units>/``. Used by ``parakeet-coreml quantize`` and the pytest plugin."""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

from reports.metadata import json_safe
from reports.plots import QUANTIZE_DIR, quantization_plots
from validation.tolerances import gate_failures

SUMMARY = "quantization_summary.json"
VARIANT_METADATA = "quantization_metadata.json"


def summary_of(records: list[dict], context: dict, gates: dict) -> dict:
    """{variant: {summary, steps, components: {name: {quality, size_bytes, size_mb, compression_ratio,
    latency_ms, compile_ms, ...}}, end_to_end, held_out, gates, measured_with}}."""
    summary = {}
    for record in records:
        name, entry = record["name"], dict(record["entry"])
        gated = gates.get(name, {})
        failures = gate_failures(name, entry, gates) if not entry["error"] else []
        entry["gates"] = {"thresholds": gated, "status": ("error" if entry["error"] else "failed" if failures
                                                          else "passed" if gated else "not gated"),
                          "failures": failures}
        entry["measured_with"] = context
        summary[name] = entry
    return summary


def title_of(context: dict) -> str:
    return (f"{context['model']} · {context['backend']} ({context['values_from']}) · {context['compute_units']} · "
            f"{platform.system()} {platform.machine()}")


def write_quantization(directory: Path, records: list[dict], context: dict, gates: dict
                       ) -> tuple[Path, list[Path], list[str]]:
    """Write the sweep (``VariantResult.record()`` of each variant) into ``directory`` (a staging
    directory the caller publishes)."""
    directory = Path(directory)
    summary = summary_of(records, context, gates)
    for record in records:
        folder = directory / record["name"]
        folder.mkdir(parents=True, exist_ok=True)
        for name, package in record["packages"].items():
            shutil.copytree(package, folder / f"{name}.mlpackage")
        variant_summary = json_safe(summary[record["name"]])
        (folder / VARIANT_METADATA).write_text(json.dumps(variant_summary, indent=2, allow_nan=False) + "\n")
    plots, skipped = quantization_plots(summary, title_of(context), directory / QUANTIZE_DIR / context["compute_units"])
    path = directory / SUMMARY
    path.write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
    return path, plots, skipped
