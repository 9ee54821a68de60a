"""``metadata.json``: the export's description, and the blocks the suites add to it.

``convert`` writes the description; parity (``validation``), latency and quantization add their
blocks. A block is only ever written beside the description of the model it measured.

metadata.json stays a summary a person can read: every long series of numbers (per-frame L2,
per-chunk times and errors) goes into a file of its own beside it, ``metadata_arrays.<hash>.json``,
and its place in metadata.json says where (``{"array": KEY, "length": N, "min": ..., "max": ...}``).
The file's name carries its content's hash and metadata.json names it, so a run killed between
writing the two leaves the earlier pair whole. :func:`read_metadata` puts the arrays back.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from infra.errors import UserError
from infra.publish import write_whole
from validation.checks import CTC_TRANSCRIPT_CHECK, DECISION_CHECKS, FUSED_CHECKS, TORCH_CHECKS, TRANSCRIPT_CHECK
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


ARRAYS_GLOB = "metadata_arrays.*.json"
# what the checks add to convert's description: a new report folder starts without another run's
REPORT_BLOCKS = ("validation", "latency", "evaluation", "evaluation_ctc", "long_audio", "streaming_validation",
                 "neural_engine", "fp16_range", "arrays_file")
# a list of more numbers than this is an array: it goes into the arrays file
ARRAY_LENGTH = 32


def _is_array(value) -> bool:
    return (isinstance(value, list) and len(value) > ARRAY_LENGTH
            and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value))


def split_arrays(value, key: str = "") -> tuple[object, dict[str, list]]:
    """``value`` with each array replaced by a note of where it went, and the arrays by key (the
    path of keys and indices down to it, joined by "/")."""
    arrays: dict[str, list] = {}

    def walk(item, at: str):
        if _is_array(item):
            arrays[at] = item
            numbers = [v for v in item if v is not None]
            return {"array": at, "length": len(item), "min": min(numbers, default=None),
                    "max": max(numbers, default=None)}
        if isinstance(item, dict):
            return {k: walk(v, f"{at}/{k}") for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v, f"{at}/{i}") for i, v in enumerate(item)]
        return item

    return walk(value, key), arrays


def join_arrays(value, arrays: dict[str, list], source: Path):
    """``value`` with each array note replaced by the array it names."""
    if isinstance(value, dict):
        if set(value) == {"array", "length", "min", "max"}:
            if value["array"] not in arrays:
                raise UserError(f"{source}: no array {value['array']!r}; the reports' files do not belong "
                                  "together (write the reports again)")
            return arrays[value["array"]]
        return {k: join_arrays(v, arrays, source) for k, v in value.items()}
    if isinstance(value, list):
        return [join_arrays(v, arrays, source) for v in value]
    return value


def read_metadata(directory: Path) -> dict:
    """``directory/metadata.json`` whole: its arrays put back from the arrays file it names."""
    path = Path(directory) / METADATA
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({e}); remove it or choose another directory") from None
    name = document.pop("arrays_file", None)
    if name is None:
        return document
    arrays_path = Path(directory) / name
    try:
        arrays = json.loads(arrays_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{arrays_path}, named by {path}: not readable ({e}); write the reports again") from None
    return join_arrays(document, arrays, arrays_path)


def update_metadata(directory: Path, description: dict, **blocks) -> Path:
    """Set ``blocks`` in ``directory/metadata.json``, creating it from ``description`` if absent.

    Refuses (``UserError``) a file that describes another model: its packages were not the
    ones measured. Each file is written to a temporary one and renamed, the arrays first, so
    readers never see half a file or a metadata.json without its arrays.
    """
    directory = Path(directory)
    path = directory / METADATA
    document = {key: value for key, value in description.items() if key not in REPORT_BLOCKS}
    if path.exists():
        document = read_metadata(directory)
        theirs = document.get("model_source", {}).get("content_sha256")
        ours = description["model_source"]["content_sha256"]
        if theirs != ours:
            raise UserError(f"{path} describes {document.get('model', 'another model')}, not "
                              f"{description['model']}; choose another directory")
    document.update(blocks)
    summary, arrays = split_arrays(json_safe(document))
    directory.mkdir(parents=True, exist_ok=True)
    earlier = set(directory.glob(ARRAYS_GLOB))
    if arrays:
        text = json.dumps(arrays, separators=(",", ":"), allow_nan=False) + "\n"
        arrays_path = directory / ARRAYS_GLOB.replace("*", hashlib.sha256(text.encode()).hexdigest()[:16])
        write_whole(arrays_path, text)
        earlier.discard(arrays_path)
        summary = {**summary, "arrays_file": arrays_path.name}
    write_whole(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    for stale in earlier:  # the arrays of the metadata.json just replaced
        stale.unlink(missing_ok=True)
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


# The validation block's key of each transcript check's results (precision -> clip -> result).
TRANSCRIPT_BLOCKS = {TRANSCRIPT_CHECK: "end_to_end", CTC_TRANSCRIPT_CHECK: "end_to_end_ctc"}


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
    if key == CTC_TRANSCRIPT_CHECK:
        return "end_to_end", "transcript_ctc"
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


def validation_block(runs: dict[str, dict], primary: str, context: dict, transcripts: dict[str, dict],
                     held_out: dict | None = None) -> dict:
    """The ``validation`` block: ``context`` (backend, precision, tolerances, symbol steps) plus
    the primary clip's components, every clip's checks, the end-to-end transcripts (by block:
    ``end_to_end`` the transducer's, ``end_to_end_ctc`` a CTC head's, side by side for a hybrid;
    each precision -> clip -> check) and, when the held-out set was transcribed, its WER per export."""
    statuses = [r["status"] for run in runs.values() for r in run["results"].values()]
    statuses += [t["status"] for block in transcripts.values() for by_clip in block.values()
                 for t in by_clip.values()]
    statuses += [held_out["status"]] if held_out else []
    status = "failed" if any(s in ("failed", "error") for s in statuses) else "passed"
    return {
        **context,
        "status": status,
        "audio": [run["clip"] for run in runs.values()],
        "primary_audio": primary,
        "components": components_block(runs[primary]),
        "clips": {name: run["results"] for name, run in runs.items()},
        **transcripts,
        "held_out": held_out,
    }
