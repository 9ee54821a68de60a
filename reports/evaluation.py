"""The ``evaluation`` block of metadata.json and its plots: per-utterance WER of the export
against NeMo's on the same windows, the distribution of their differences, and the gap taken
apart into model, windowing and export numerics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reports.metadata import update_metadata
from reports.plots import _figure, _save

EVALUATION_DIR = Path("plots") / "evaluation"
REFERENCE = "nemo_windowed"


def evaluation_plots(block: dict, records: list[dict], title: str, out_dir: Path) -> tuple[list[Path], list[str]]:
    """The plots, and a line for each one that cannot be drawn (no reference texts)."""
    drawn, skipped = [], []
    scored = [r for r in records if "wer" in r]
    exports = list(block["agreement_with_nemo_windowed"])
    if not scored:
        skipped.append("per-utterance WER and its differences: no utterance has a reference text")
    else:
        plt, fig, (ax,) = _figure(1, height=5.0)
        reference = np.array([100 * r["wer"][REFERENCE]["wer"] for r in scored])
        top = max(1.0, float(reference.max()))
        for label in exports:
            values = np.array([100 * r["wer"][label]["wer"] for r in scored])
            top = max(top, float(values.max()))
            ax.scatter(reference, values, s=14, alpha=0.6, label=f"{label} ({len(values)} utterances)")
        ax.plot([0, top], [0, top], color="grey", linewidth=0.8, label="equal WER")
        ax.set_xlabel("NeMo on the same windows: WER per utterance (%)")
        ax.set_ylabel("export: WER per utterance (%)")
        ax.legend(fontsize=8, loc="upper left")
        drawn.append(_save(plt, fig, title, "Per-utterance WER, export against NeMo", out_dir / "wer_scatter.png"))

        plt, fig, (ax,) = _figure(1, height=3.4)
        for label in exports:
            differences = [100 * (r["wer"][label]["wer"] - r["wer"][REFERENCE]["wer"]) for r in scored]
            ax.hist(differences, bins=41, alpha=0.6, label=f"{label}: {sum(d != 0 for d in differences)} of "
                                                           f"{len(differences)} utterances differ")
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel("export WER − NeMo WER on the same windows, per utterance (points)")
        ax.set_ylabel("utterances")
        ax.legend(fontsize=8)
        drawn.append(_save(plt, fig, title, "Per-utterance WER differences", out_dir / "wer_differences.png"))

    parts = block["decomposition_points"]
    if parts["model"] is None:
        skipped.append("WER decomposition: no utterance has a reference text")
    else:
        plt, fig, (ax,) = _figure(1, height=3.6)
        names = ["model\n(NeMo, whole utterances,\nagainst the text)", "windowing\n(NeMo on windows\n− NeMo whole)",
                 *[f"export numerics\n({label} − NeMo\non the same windows)" for label in exports]]
        values = [parts["model"], parts["windowing"], *[parts["export"][label] for label in exports]]
        bars = ax.bar(names, values, color=["#4c72b0", "#dd8452", *["#55a868"] * len(exports)])
        ax.bar_label(bars, labels=[f"{v:+.2f}" if i else f"{v:.2f}" for i, v in enumerate(values)], fontsize=8)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_ylabel("WER points")
        ax.tick_params(axis="x", labelsize=8)
        drawn.append(_save(plt, fig, title, "Where the WER comes from", out_dir / "wer_decomposition.png"))
    return drawn, skipped


def write_evaluation(directory: Path, description: dict, block: dict, records: list[dict]
                     ) -> tuple[Path, list[Path], list[str]]:
    """The ``evaluation`` block into ``directory``/metadata.json, and the plots beside it."""
    path = update_metadata(directory, description, evaluation=block)
    model = Path(description["model"]).name if "/" in description["model"] else description["model"]
    title = (f"{model} · {block['utterances']} utterances · backend {block.get('backend', '?')} · "
             f"{block['normalizer']} normaliser")
    plots, skipped = evaluation_plots(block, records, title, Path(directory) / EVALUATION_DIR)
    return path, plots, skipped
