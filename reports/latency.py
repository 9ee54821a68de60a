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
    return path, latency_plots(block, description, Path(directory) / PARITY_DIR)


@dataclass
class LatencyReport:
    """Paired rounds gathered as the suite's benchmarks finish. Each benchmark times one side and,
    between its rounds, the other (``validation.timing.Partner``); a case enters the block once
    it has rounds."""

    description: dict  # the export's metadata (``Exporter.metadata``)
    environment: dict  # ``validation.timing.environment``
    audio_seconds: float
    runs: int
    warmup: int
    cases: dict[str, Case] = field(default_factory=dict)
    rounds: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # case id -> [{side: ms}]
    loads: dict[str, list[float]] = field(default_factory=dict)  # case id -> load averages seen
    first_calls: dict[str, dict] = field(default_factory=dict)

    def add(self, case: Case, side: str, samples_ms: list[float], partner_ms: list[float],
            first: dict | None = None, loads: tuple[float | None, ...] = ()) -> None:
        """One benchmark's rounds of ``side``, each with the other side's call that ran before it."""
        if len(samples_ms) != len(partner_ms):
            raise ValueError(f"{case.id}: {len(samples_ms)} rounds of {side} but {len(partner_ms)} of its partner")
        other = next(s for s in case.sides if s != side)
        self.cases[case.id] = case
        self.rounds.setdefault(case.id, []).extend({side: a, other: b}
                                                   for a, b in zip(samples_ms, partner_ms, strict=True))
        self.loads.setdefault(case.id, []).extend(x for x in loads if x is not None)
        if first:
            self.first_calls.setdefault(case.id, {}).update(first)

    def ready(self) -> bool:
        return any(self.rounds.values())

    def block(self) -> dict:
        cpus = self.environment["host"]["cpus"]
        entries = {
            case_id: (case, case_entry(case, self.rounds[case_id], self.first_calls.get(case_id, {}), self.runs,
                                       self.warmup, self.audio_seconds, self.environment["backend"],
                                       max(self.loads[case_id], default=None), cpus))
            for case_id, case in self.cases.items() if self.rounds[case_id]
        }
        return latency_block(entries, self.environment, self.audio_seconds)

    def write(self, directory: Path) -> tuple[Path, list[Path]]:
        return write_latency(directory, self.description, self.block())
