"""Parity results of one session (pytest or ``compare``), and how they are written out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reports.metadata import TRANSCRIPT_BLOCKS, update_metadata, validation_block
from reports.plots import PARITY_DIR, Caption, parity_plots
from runtimes.base import describe_backend
from validation.checks import CTC_TRANSCRIPT_CHECK, SYMBOL_STEPS, TRANSCRIPT_CHECK


def parity_context(requested_backend: str, backend: str, precision: str, compute_units: str, tolerances) -> dict:
    """What a validation block was measured with."""
    return {"requested_backend": requested_backend, "backend": backend, "values_from": describe_backend(backend),
            "compute_precision": precision, "compute_units": compute_units, "tolerances": tolerances.as_dict(),
            "symbol_steps": SYMBOL_STEPS}


# plot series name -> the check whose L2 per step it draws
_L2_SERIES = {"encoder_l2": "encoder.encoder", "mel_encoder_l2": "mel_encoder.encoder",
              "decoder_l2": "decoder.decoder", "joint_l2": "joint.logits", "ctc_l2": "ctc_head.ctc_logits"}


def plot_series(run: dict) -> dict:
    """The run's series plus, per check that measured one, its L2 per step (reference, exported)."""
    series = {name: np.asarray(values) for name, values in run["series"].items()}
    for name, key in _L2_SERIES.items():
        result = run["results"].get(key)
        if result is not None and result.get("l2_per_step"):
            series[f"{name}_torch"] = result["l2_per_step"]["reference"]
            series[f"{name}_exported"] = result["l2_per_step"]["exported"]
    return series


@dataclass
class ParityReport:
    """Runs by precision and clip; ``precision`` is the one the ``validation`` block describes
    (end-to-end transcripts of other precisions are kept too)."""

    description: dict  # the export's metadata (``Exporter.metadata``)
    context: dict  # requested and resolved backend, precision, tolerances, symbol steps
    precision: str
    primary_clip: str
    runs: dict[str, dict[str, dict]] = field(default_factory=dict)  # precision -> clip -> ClipParity.record()
    held_out: dict | None = None  # ``validation.held_out``: WER of NeMo and each export on the test set

    def ready(self) -> bool:
        return bool(self.runs)

    def add(self, precision: str, run: dict) -> None:
        self.runs.setdefault(precision, {})[run["clip"]["name"]] = run

    def _transcripts(self) -> dict:
        """The transcript checks' results by block: the transducer's, and a CTC head's where the
        model has one (a hybrid's two decodings side by side)."""
        def results(key: str, keep) -> dict:
            return {precision: {name: run["results"][key] for name, run in runs.items()
                                if key in run["results"] and keep(run["results"][key])}
                    for precision, runs in self.runs.items()}

        blocks = {TRANSCRIPT_BLOCKS[TRANSCRIPT_CHECK]: results(TRANSCRIPT_CHECK, lambda result: True)}
        ctc = results(CTC_TRANSCRIPT_CHECK, lambda result: result["status"] != "skipped")
        if any(ctc.values()):
            blocks[TRANSCRIPT_BLOCKS[CTC_TRANSCRIPT_CHECK]] = ctc
        return blocks

    def caption(self) -> Caption:
        return Caption.of(self.description, f"backend {self.context['backend']} "
                                            f"({self.context['values_from']}) · {self.precision}")

    def write(self, directory: Path) -> tuple[Path, list[Path]]:
        """``metadata.json``'s validation block and the plots of the primary clip (the one whose
        record carries its series: a session that selected other clips only draws none)."""
        runs = self.runs.get(self.precision, {})
        if not runs:
            raise ValueError(f"no {self.precision} parity run to report")
        primary = self.primary_clip if self.primary_clip in runs else next(iter(runs))
        block = validation_block(runs, primary, self.context, self._transcripts(), self.held_out)
        path = update_metadata(directory, self.description, validation=block)
        plots = parity_plots(plot_series(runs[primary]), self.caption(), Path(directory) / PARITY_DIR,
                             token_classes=self.description["vocab_size"] + 1)
        return path, plots
