"""The ``streaming_validation`` block of metadata.json and its plot (``reports.plots.streaming_plot``)."""

from __future__ import annotations

from pathlib import Path

from reports.metadata import update_metadata
from reports.plots import STREAMING_DIR, Caption, streaming_plot
from runtimes.base import describe_backend
from validation.streaming import COMPONENT, COMPONENT_VALUES, MAX_ERROR_GROWTH

STREAMING_REPORT_DIR = "streaming"  # the suite's streaming report, beside the offline one: another model


def run_label(precision: str, cache_state: bool) -> str:
    """A streaming run's name in the block and the plot."""
    return f"{precision}, caches as states" if cache_state else precision


def streaming_context(backend: str, clip: str, tolerances) -> dict:
    """What a streaming block was measured with: the backend, the stream, each output's tolerance."""
    return {"backend": backend, "values_from": describe_backend(backend), "clip": clip,
            "tolerances": {o: tolerances[COMPONENT.output(o).tolerance].as_dict() for o in COMPONENT_VALUES},
            "max_error_growth": MAX_ERROR_GROWTH}


def streaming_block(records: dict[str, dict], context: dict) -> dict:
    """Per precision (``StreamParity.record()``): the chunks, per-chunk errors, growth and
    failures; the verdict over all of them."""
    failures = [f"{precision}: {line}" for precision, record in records.items() for line in record["failures"]]
    first = next(iter(records.values()))
    return {**context, "status": "failed" if failures else "passed", "failures": failures,
            "chunk_ms": round(1000 * first["chunk_seconds"]), "runs": records}


def write_streaming(directory: Path, description: dict, block: dict) -> tuple[Path, Path]:
    """The block into ``directory``/metadata.json, and its plot beside it."""
    path = update_metadata(directory, description, streaming_validation=block)
    caption = Caption.of(description, f"{block['clip']} · backend {block['backend']} · {', '.join(block['runs'])}")
    return path, streaming_plot(block, caption, Path(directory) / STREAMING_DIR)
