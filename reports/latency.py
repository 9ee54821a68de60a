"""Latency results of one session (the latency suite or ``compare --runs``), written out as the
``latency`` block of ``metadata.json`` and the latency plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reports.metadata import update_metadata
from reports.plots import PARITY_DIR, latency_plots
from validation.timing import Case, case_entry, latency_block


def write_latency(directory: Path, description: dict, block: dict) -> tuple[Path, list[Path]]:
    path = update_metadata(directory, description, latency=block)
    return path, latency_plots(block, description["model"], Path(directory) / PARITY_DIR)


@dataclass
class LatencyReport:
    """Samples gathered side by side as the suite's benchmarks finish; a case enters the block
    once both of its sides were timed."""

    description: dict  # the export's metadata (``Exporter.metadata``)
    environment: dict  # ``validation.timing.environment``
    audio_seconds: float
    runs: int
    warmup: int
    cases: dict[str, Case] = field(default_factory=dict)
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    first_calls: dict[str, dict] = field(default_factory=dict)

    def add(self, case: Case, side: str, samples_ms: list[float], first: dict | None = None) -> None:
        self.cases[case.id] = case
        self.samples.setdefault(case.id, {})[side] = samples_ms
        if first:
            self.first_calls.setdefault(case.id, {}).update(first)

    def complete(self) -> list[str]:
        return [i for i, case in self.cases.items() if all(s in self.samples[i] for s in case.sides)]

    def ready(self) -> bool:
        return bool(self.complete())

    def block(self) -> dict:
        entries = {
            case_id: (self.cases[case_id], case_entry(self.cases[case_id], self.samples[case_id],
                                                      self.first_calls.get(case_id, {}), self.runs, self.warmup,
                                                      self.audio_seconds, self.environment["backend"]))
            for case_id in self.complete()
        }
        return latency_block(entries, self.environment, self.audio_seconds)

    def write(self, directory: Path) -> tuple[Path, list[Path]]:
        return write_latency(directory, self.description, self.block())
