"""The evaluation journal (``evaluation.jsonl``): one record per utterance, appended as each is done,
so a killed run keeps its work and ``--resume`` continues it.

Each record carries the fingerprint of what determined it: the audio file (path, size,
modification time), its span and reference text, and the run's settings (packages, normaliser,
windows, the paths evaluated). ``--resume`` keeps a record only when its fingerprint is the one the
same utterance has now, and recomputes the others, saying how many. The journal is only ever
replaced whole (written beside it and renamed), so a run killed while resuming leaves the old
journal or the new one, never a truncated one; lines that are not records are reported and
recomputed. One run writes a journal at a time: a second one is refused while the first holds its
lock.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from infra.errors import UserError
from infra.faults import fault_point
from infra.publish import write_whole

JOURNAL = "evaluation.jsonl"


HASHED_BYTES = 16 << 20  # files up to this size are identified by their content, larger ones by size and time


def package_identity(path: Path) -> list:
    """What a package's records depend on: each file's relative path and its content digest, or
    for a large one (the weights) its size and modification time: cheap for a 1 GB encoder, and
    changed whenever a package is rewritten. (Not the time of small files: coremltools rewrites
    a package's Manifest.json, unchanged, each time it loads the package.)"""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())

    def identity(file: Path):
        stat = file.stat()
        if stat.st_size <= HASHED_BYTES:
            return hashlib.sha256(file.read_bytes()).hexdigest()
        return [stat.st_size, stat.st_mtime_ns]

    return [[str(p.relative_to(path)) if p != path else p.name, identity(p)] for p in files]


def fingerprint(audio: Path, offset: float, duration: float | None, text: str | None, settings: dict) -> str:
    """The digest of what determines an utterance's record."""
    try:
        stat = Path(audio).stat()
        identity = [str(Path(audio).resolve()), stat.st_size, stat.st_mtime_ns]
    except OSError:
        identity = [str(audio), None, None]
    document = {"audio": identity, "offset": offset, "duration": duration, "text": text, "settings": settings}
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class Resumed:
    """What ``Journal.start`` found in an earlier run's journal."""

    records: dict[str, dict] = field(default_factory=dict)  # key -> record, kept
    stale: list[str] = field(default_factory=list)  # keys whose audio, text or settings changed: recomputed
    unreadable: list[str] = field(default_factory=list)  # "evaluation.jsonl:LINE: why", recomputed
    replaced: int = 0  # records of an earlier run dropped without --resume

    def summary(self, name: str) -> list[str]:
        lines = []
        if self.records:
            lines.append(f"resumed {len(self.records)} utterance(s) from {name}")
        if self.stale:
            lines.append(f"recomputing {len(self.stale)} utterance(s) of {name} whose audio, reference text, "
                         f"packages or settings changed since they were recorded, e.g. {self.stale[:3]}")
        lines += [f"skipped {line}: not a record, recomputed" for line in self.unreadable]
        if self.replaced:
            lines.append(f"replaced {name}: its {self.replaced} earlier record(s) are gone (--resume keeps them)")
        return lines


def read_journal(path: Path) -> tuple[list[dict], list[str]]:
    """The records of ``path``, and the lines that are not records (a torn last line included)."""
    records, unreadable = [], []
    for number, raw in enumerate(Path(path).read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            unreadable.append(f"{Path(path).name}:{number}: {type(e).__name__}")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            unreadable.append(f"{Path(path).name}:{number}: no key")
            continue
        records.append(record)
    return records, unreadable


class Journal:
    """``evaluation.jsonl`` of one run: ``with Journal(path) as journal: journal.start(...)``, then
    ``journal.append(record)`` per utterance."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = FileLock(str(self.path.with_name(f".{self.path.name}.lock")))

    def __enter__(self) -> Journal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise UserError(f"{self.path}: another evaluation is writing this journal; wait for it to finish "
                              "or give another --report-dir") from None
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def start(self, fingerprints: dict[str, str], resume: bool) -> Resumed:
        """The records to keep (``--resume``: those whose fingerprint matches ``fingerprints``), and
        the journal rewritten to hold exactly them."""
        for orphan in self.path.parent.glob(f".{self.path.name}-*"):  # of a run killed while rewriting
            orphan.unlink(missing_ok=True)
        found = Resumed()
        if self.path.is_file():
            records, found.unreadable = read_journal(self.path)
            if not resume:
                found.replaced, found.unreadable = len(records), []
            for record in records if resume else ():
                if record.get("fingerprint") == fingerprints.get(record["key"]):
                    found.records[record["key"]] = record
                elif record["key"] in fingerprints:
                    found.stale.append(record["key"])
        fault_point("journal")
        write_whole(self.path, "".join(json.dumps(r) + "\n" for r in found.records.values()), fault="journal")
        fault_point("journal")
        return found

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
