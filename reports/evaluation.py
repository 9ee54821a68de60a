"""The ``evaluation`` block of metadata.json and its plots (``reports.plots.evaluation_plots``)."""

from __future__ import annotations

from pathlib import Path

from reports.metadata import update_metadata
from reports.plots import EVALUATION_DIR, Caption, evaluation_plots, long_audio_plots


def evaluation_dir(name: str = "evaluation") -> Path:
    """Where an evaluation block's plots go: a CTC decoding's beside the default decoding's."""
    return EVALUATION_DIR if name == "evaluation" else EVALUATION_DIR.with_name(name.replace("_", "-"))


def write_evaluation(directory: Path, description: dict, block: dict, records: list[dict], name: str = "evaluation"
                     ) -> tuple[Path, list[Path], list[str]]:
    """The evaluation block ``name`` (``evaluation``; ``evaluation_ctc``, a hybrid's CTC decoding
    beside it) into ``directory``/metadata.json, and the plots beside it."""
    path = update_metadata(directory, description, **{name: block})
    decoding = f" · {block['decoding']} decoding" if "ctc" in description.get("family", "") else ""
    caption = Caption.of(description, f"{block['utterances']} utterances · backend {block.get('backend', '?')} · "
                                      f"{block['normalizer']} normaliser{decoding}")
    plots, skipped = evaluation_plots(block, records, caption, Path(directory) / evaluation_dir(name))
    return path, plots, skipped


def write_long_audio(directory: Path, description: dict, sets: dict[str, dict]) -> tuple[Path, list[Path]]:
    """The ``long_audio`` block (each set's evaluation block, every strategy in it) into
    ``directory``/metadata.json, and the strategies × sets plots beside it."""
    path = update_metadata(directory, description, long_audio=sets)
    first = next(iter(sets.values()))
    caption = Caption.of(description, f"{', '.join(sets)} · backend {first.get('backend', '?')} · "
                                      f"{first['normalizer']} normaliser")
    return path, long_audio_plots(sets, caption, Path(directory) / EVALUATION_DIR)
