"""A quantization sweep written out: each variant's folder (its packages and
``quantization_metadata.json``), ``quantization_summary.json`` (the overall verdict, then each
variant) and the plots under ``plots/quantize/<compute_units>/``. Used by ``parakeet-coreml
quantize`` and the pytest plugin."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from reports.metadata import json_safe
from reports.plots import QUANTIZE_DIR, Caption, quantization_plots, search_plot
from validation.quantization import flip_flags
from validation.recipe_search import RECIPE_FILE, SEARCHED
from validation.tolerances import gate_failures

SUMMARY = "quantization_summary.json"
VARIANT_METADATA = "quantization_metadata.json"


def summary_of(records: list[dict], context: dict, gates: dict) -> dict:
    """{variant: {summary, steps, components: {name: {quality, size_bytes, size_mb, compression_ratio,
    latency_ms, compile_ms, base_size_mb, base_latency_ms, ...}}, end_to_end, held_out, gates,
    flags, measured_with}}."""
    summary = {}
    for record in records:
        name, entry = record["name"], dict(record["entry"])
        gated = gates.get(name, {})
        failures = gate_failures(name, entry, gates) if not entry["error"] else []
        held_out_gated = "failures" in (entry.get("held_out") or {})  # its WER held to NeMo's
        entry["gates"] = {"thresholds": gated, "status": ("error" if entry["error"] else "failed" if failures
                                                          else "passed" if gated or held_out_gated else "not gated"),
                          "failures": failures}
        entry["flags"] = flip_flags(name, entry)
        entry["measured_with"] = context
        summary[name] = entry
    return summary


def overall(summary: dict, search: dict | None = None) -> dict:
    """The sweep's verdict, as ``metadata.json``'s validation block gives one: failed when a gate
    failed, a variant could not be built or a search found no recipe; counts of each gate status."""
    counts = {status: sum(entry["gates"]["status"] == status for entry in summary.values())
              for status in ("passed", "failed", "not gated", "error")}
    unfound = [search_failure(search)] if search is not None and search["chosen"] is None else []
    return {"status": "failed" if counts["failed"] or counts["error"] or unfound else "passed",
            "variants": len(summary), **{status.replace(" ", "_"): n for status, n in counts.items()},
            "failures": [f for entry in summary.values() for f in entry["gates"]["failures"]]
            + [f"{name}: not built: {entry['error']}" for name, entry in summary.items() if entry["error"]] + unfound,
            "flags": [f for entry in summary.values() for f in entry.get("flags", [])]}


def search_failure(search: dict) -> str:
    """What a search that found nothing came closest to."""
    closest = search["closest"]
    return (f"search: no recipe of {', '.join(search['schemes'])} met the gates in {len(search['tries'])} tries; "
            f"closest: {closest['name']} (encoder {100 * closest['encoder_fraction']:.0f}% of fp16), which "
            f"failed {'; '.join(closest['failures'])}")


def caption_of(context: dict) -> Caption:
    return Caption.of(context, f"{context['backend']} ({context['values_from']}) · "
                               f"{context['compute_units']} · {context['compute_precision']}")


def write_quantization(directory: Path, records: list[dict], context: dict, gates: dict, search: dict | None = None
                       ) -> tuple[Path, list[Path], list[str]]:
    """Write the sweep (``VariantResult.record()`` of each variant) into ``directory`` (a staging
    directory the caller publishes); with a recipe ``search``, its block, its recipe file in the
    searched variant's folder, and its Pareto plot."""
    directory = Path(directory)
    summary = summary_of(records, context, gates)
    for record in records:
        folder = directory / record["name"]
        folder.mkdir(parents=True, exist_ok=True)
        for name, package in record["packages"].items():
            shutil.copytree(package, folder / f"{name}.mlpackage")
        variant_summary = json_safe(summary[record["name"]])
        (folder / VARIANT_METADATA).write_text(json.dumps(variant_summary, indent=2, allow_nan=False) + "\n")
    plots, skipped = quantization_plots(summary, caption_of(context),
                                        directory / QUANTIZE_DIR / context["compute_units"])
    if search is not None:
        if search["recipe"] is not None:
            (directory / SEARCHED / RECIPE_FILE).write_text(json.dumps(search["recipe"], indent=2) + "\n")
        plots.append(search_plot(search, summary, caption_of(context),
                                 directory / QUANTIZE_DIR / context["compute_units"]))
    path = directory / SUMMARY
    document = {"overall": overall(summary, search), "variants": summary,
                **({"search": search} if search is not None else {})}
    path.write_text(json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n")
    return path, plots, skipped
