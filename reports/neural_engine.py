"""The Neural Engine placement prediction of a package set: the ``neural_engine`` block of
``metadata.json`` and one plot per package (``validation.neural_engine``)."""

from __future__ import annotations

from pathlib import Path

from reports.metadata import update_metadata
from reports.plots import Caption, placement_plot
from validation.neural_engine import NEURAL_ENGINE, NO_COMPUTE, Placement, rule_sources

NEURAL_ENGINE_DIR = Path("plots") / "neural-engine"
PREDICTION_NOTE = ("a prediction from public evidence (each rule's source under 'sources'), not Core ML's decision: "
                   "on macOS, compare the package's compute plan (Xcode's performance report, or "
                   "coremltools.models.compute_plan)")


def placement_block(placements: dict[str, Placement], agreements: dict[str, dict] | None = None) -> dict:
    """Each component's summary and the ops predicted off the Neural Engine, with the rules'
    sources; with ``agreements`` (macOS: ``validation.neural_engine.agreement`` with Core ML's
    compute plan), how far Core ML agrees."""
    chips = {p.chip for p in placements.values()}
    return {
        "chip": chips.pop() if len(chips) == 1 else sorted(chips),
        "prediction": PREDICTION_NOTE,
        "components": {name: {**p.summary(), "off_neural_engine": [
            op.as_dict() for op in p.ops if op.device not in (NEURAL_ENGINE, NO_COMPUTE)],
            **({"core_ml_agreement": agreements[name]} if agreements and name in agreements else {})}
            for name, p in placements.items()},
        "sources": rule_sources(),
    }


def describe_placement(block: dict) -> list[str]:
    """One line per component: its ops and FLOPs on the Neural Engine, and the first op off it."""
    lines = []
    for name, c in block["components"].items():
        share = c["neural_engine_flop_share"]
        first = c["first_off"]
        lines.append(f"{name}: {c['by_device'].get(NEURAL_ENGINE, 0)} of {c['ops']} ops"
                     + (f", {100 * share:.0f}% of FLOPs" if share is not None else "")
                     + f", {c['transitions']} transition(s)"
                     + (f"; first off: {first['op_type']} ({first['reason']})" if first else "; none off inside")
                     + (f"; {c['by_rule']['boundary_cast']} cast(s) at its edges off it"
                        if c["by_rule"].get("boundary_cast") else "")
                     + (f"; {len(c['risks'])} risk(s)" if c["risks"] else "")
                     + (f"; Core ML's compute plan agrees on {c['core_ml_agreement']['agreeing']} of "
                        f"{c['core_ml_agreement']['compared']}" if "core_ml_agreement" in c else ""))
    return lines


def write_placement(directory: Path, description: dict, placements: dict[str, Placement],
                    agreements: dict[str, dict] | None = None) -> tuple[Path, list[Path], dict]:
    """The block into ``directory/metadata.json`` and a plot per package; returns the block too."""
    block = placement_block(placements, agreements)
    path = update_metadata(directory, description, neural_engine=block)
    chip = next(iter(placements.values())).chip if placements else "?"
    caption = Caption.of(description, f"predicted for {chip} from the packages' programs (no device ran them)")
    plots = [placement_plot(name, p, caption, Path(directory) / NEURAL_ENGINE_DIR) for name, p in placements.items()]
    return path, plots, block
