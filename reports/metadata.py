"""``metadata.json``: the export's description, and the blocks the suites add to it.

``convert`` writes the description; parity (``validation``), latency and quantization add their
blocks. A block is only ever written beside the description of the model it measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from exporters.components import ExportError
from exporters.publish import write_whole
from validation.checks import DECISION_CHECKS, FUSED_CHECKS, TORCH_CHECKS, TRANSCRIPT_CHECK
from validation.packages import METADATA


def json_safe(value):
    """``value`` with every NaN or infinite float written as null, and the reason beside it in
    its mapping's ``non_finite`` entry: a metric that went non-finite never costs the report."""
    if isinstance(value, dict):
        safe = {key: json_safe(item) for key, item in value.items()}
        reasons = {key: repr(item) for key, item in value.items()
                   if isinstance(item, float) and not math.isfinite(item)}
        if reasons:
            safe["non_finite"] = {**safe.get("non_finite", {}), **reasons}
        return safe
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def update_metadata(directory: Path, description: dict, **blocks) -> Path:
    """Set ``blocks`` in ``directory/metadata.json``, creating it from ``description`` if absent.

    Refuses (``ExportError``) a file that describes another model: its packages were not the
    ones measured. Written to a temporary file and renamed, so readers never see half a file.
    """
    path = Path(directory) / METADATA
    document = description
    if path.exists():
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ExportError(f"{path}: not readable JSON ({e}); remove it or choose another directory") from None
        theirs = document.get("model_source", {}).get("content_sha256")
        ours = description["model_source"]["content_sha256"]
        if theirs != ours:
            raise ExportError(f"{path} describes {document.get('model', 'another model')}, not "
                              f"{description['model']}; choose another directory")
    document.update(blocks)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n")
    return path


def earlier_blocks(directory: Path, names: list[str]) -> list[str]:
    """Which of the blocks ``names`` ``directory/metadata.json`` already holds: a command that
    replaces them says so."""
    try:
        document = json.loads((Path(directory) / METADATA).read_text())
    except (OSError, ValueError):
        return []
    return [name for name in names if isinstance(document, dict) and document.get(name) is not None]


def replaced_note(what: list[str]) -> str:
    """The summary line's tail naming earlier results this run replaced (empty if none)."""
    return f"; replaced the earlier {', '.join(what)}" if what else ""


def _place(key: str) -> tuple[str, str]:
    """The (component, output) a check key reports under."""
    if key in TORCH_CHECKS:
        return TORCH_CHECKS[key]
    if key in DECISION_CHECKS:
        return DECISION_CHECKS[key], "decisions"
    if key in FUSED_CHECKS:
        return FUSED_CHECKS[key], "fused_vs_separate"
    if key == TRANSCRIPT_CHECK:
        return "end_to_end", "transcript"
    raise KeyError(key)


def components_block(run: dict) -> dict:
    """Per component: each output's metrics with its match flag, the length check, any error."""
    block: dict[str, dict] = {}
    for key, result in run["results"].items():
        component, output = _place(key)
        entry = block.setdefault(component, {"outputs": {}, "error": None})
        if output.endswith("_length"):
            entry["length_match"] = result["status"] == "passed"
            entry[output] = result
            continue
        entry["outputs"][output] = result
        if result.get("error") and entry["error"] is None:
            entry["error"] = result["error"]
    return block


def validation_block(runs: dict[str, dict], primary: str, context: dict, transcripts: dict,
                     held_out: dict | None = None) -> dict:
    """The ``validation`` block: ``context`` (backend, precision, tolerances, symbol steps) plus
    the primary clip's components, every clip's checks, the end-to-end transcripts and, when
    the held-out set was transcribed, its WER per export."""
    statuses = [r["status"] for run in runs.values() for r in run["results"].values()]
    statuses += [t["status"] for by_clip in transcripts.values() for t in by_clip.values()]
    statuses += [held_out["status"]] if held_out else []
    status = "failed" if any(s in ("failed", "error") for s in statuses) else "passed"
    return {
        **context,
        "status": status,
        "audio": [run["clip"] for run in runs.values()],
        "primary_audio": primary,
        "components": components_block(runs[primary]),
        "clips": {name: run["results"] for name, run in runs.items()},
        "end_to_end": transcripts,
        "held_out": held_out,
    }
