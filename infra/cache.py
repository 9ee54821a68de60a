"""Content-addressed export cache.

An entry's key digests the model's content, the model config, the component, the export
options and the versions of torch, coremltools, NeMo and this exporter's code. Entries are
built in a temporary directory and renamed into place, so a killed export never leaves an
entry that is used later; every entry carries a manifest (sizes and sha256 of its files) and a
digest of its own ``entry.json``, both checked on each use, so a damaged entry is rebuilt. A
per-key file lock makes concurrent processes (``pytest -n 2``) convert a component once, and
tells the next run which temporary directories belong to a process that is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from filelock import FileLock, Timeout
from platformdirs import user_cache_dir

from infra.errors import UserError

ENV_VAR = "PARAKEET_COREML_CACHE"
ENTRY_FILE = "entry.json"
DIGEST = "entry_sha256"  # in entry.json: the digest of everything else it records
SCRATCH = "scratch-"  # a process's own temporary directory under tmp/, locked while it lives
# Temporary directories of older versions carry no lock to ask; they go after a day.
_STALE_TMP_SECONDS = 24 * 3600


def default_cache_dir() -> Path:
    """``$PARAKEET_COREML_CACHE``, else the per-user cache directory of the platform."""
    return Path(os.environ.get(ENV_VAR) or user_cache_dir("parakeet-coreml"))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def tool_versions() -> dict:
    """Versions that change what an export produces (read without importing the packages)."""
    return {name: _version(name) for name in ("torch", "coremltools", "nemo_toolkit")}


# The modules whose code decides what an exported package contains (from the project's root).
_EXPORT_CODE = tuple(f"exporters/{name}.py" for name in (
    "components", "compose", "convert", "export", "presets", "sources", "torch_compat", "wrappers")) + (
    "infra/compat.py",)


def exporter_code_digest() -> str:
    """Digest of the exporter's sources: editing the export code invalidates its exports."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for name in _EXPORT_CODE:
        h.update(name.encode())
        h.update((root / name).read_bytes())
    return h.hexdigest()


def cache_key(**parts) -> str:
    """sha256 of the parts as canonical JSON, plus tool versions and the exporter's code."""
    payload = {**parts, "versions": tool_versions(), "exporter": exporter_code_digest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def content_digest(root: Path) -> str:
    """sha256 over a directory's files (names, sizes, contents): a package's identity by content."""
    return hashlib.sha256(json.dumps(_manifest(Path(root)), sort_keys=True).encode()).hexdigest()


def _info_digest(info: dict) -> str:
    return hashlib.sha256(json.dumps({k: v for k, v in info.items() if k != DIGEST}, sort_keys=True).encode()
                          ).hexdigest()


def _owner_gone(lock_path: Path) -> bool:
    """Whether nobody holds ``lock_path`` (its owner finished or was killed): a lock is released
    by the system when its process dies."""
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return False
    lock.release()
    return True


RECHECKS, RECHECK_SECONDS = 3, 0.2  # a check that met a vanishing file is made again this often
# coremltools rewrites a package's Manifest.json whenever it opens the package: it writes
# Manifest.<uuid> beside it and renames that over it. Such a file is another process's work in
# flight, not part of the package.
_MANIFEST_IN_FLIGHT = re.compile(r"Manifest\.[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


def _in_flight(p: Path) -> bool:
    return p.parent.suffix == ".mlpackage" and _MANIFEST_IN_FLIGHT.fullmatch(p.name) is not None


_ENTRY_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _is_entry_name(key: str) -> bool:
    return _ENTRY_NAME.fullmatch(key) is not None and key not in (".", "..")


def _manifest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ENTRY_FILE and not _in_flight(p)
    }


def _matches(root: Path, manifest: dict) -> bool:
    """Whether the files under ``root`` are ``manifest``'s. A file that vanishes while it is read
    (another process's Manifest.<uuid> renamed into place) makes it look again."""
    for attempt in range(RECHECKS + 1):
        if attempt:
            time.sleep(RECHECK_SECONDS)
        try:
            return _manifest(root) == manifest
        except OSError:
            pass
    return False


@dataclass(frozen=True)
class Entry:
    path: Path
    info: dict  # what the builder recorded, plus "manifest"
    hit: bool  # True if found in the cache, False if built by this call

    @property
    def size_bytes(self) -> int:
        return sum(f["size"] for f in self.info["manifest"].values())


class ExportCache:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root else default_cache_dir()
        self._verified: dict[str, Entry] = {}  # checked once per process: a 0.6B entry hashes in ~1 s

    def _dirs(self, key: str):
        return self.root / "entries" / key, self.root / "locks" / f"{key}.lock", self.root / "tmp"

    def lookup(self, key: str) -> Entry | None:
        """The entry for ``key`` if present and intact; a damaged one is removed. A key that is no
        entry's name (one read from a package set's metadata.json: empty, or a path) finds nothing."""
        if not _is_entry_name(key):
            return None
        if key in self._verified:
            if self._verified[key].path.is_dir():
                return self._verified[key]
            del self._verified[key]  # removed since it was checked (by hand, or a cache clean-up): built again
        path = self._dirs(key)[0]
        info_path = path / ENTRY_FILE
        if not info_path.is_file():
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)
            return None
        try:
            info = json.loads(info_path.read_text())
            intact = info[DIGEST] == _info_digest(info) and _matches(path, info["manifest"])
        except (OSError, ValueError, KeyError):
            intact = False
        if not intact:
            shutil.rmtree(path, ignore_errors=True)
            return None
        self._verified[key] = Entry(path, info, hit=True)
        return self._verified[key]

    def get_or_build(self, key: str, build: Callable[[Path], dict]) -> Entry:
        """Return the entry for ``key``, calling ``build(tmp_dir) -> info`` once if it is missing.

        ``build`` writes its files into ``tmp_dir``; the directory becomes the entry only
        after ``build`` returns.
        """
        if not _is_entry_name(key):
            raise ValueError(f"cache key {key!r}: expected a name of letters, digits, '_', '.' and '-'")
        entry = self.lookup(key)
        if entry:
            return entry
        final, lock_path, tmp_root = self._dirs(key)
        for d in (lock_path.parent, tmp_root, final.parent):
            d.mkdir(parents=True, exist_ok=True)
        with FileLock(lock_path):
            entry = self.lookup(key)  # another process may have built it while we waited
            if entry:
                return entry
            self.remove_abandoned()
            tmp = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=tmp_root))
            try:
                info = dict(build(tmp))
                info["manifest"] = _manifest(tmp)
                info["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                info[DIGEST] = _info_digest(info)
                (tmp / ENTRY_FILE).write_text(json.dumps(info, indent=2))
                os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        self._verified[key] = Entry(final, info, hit=True)
        return Entry(final, info, hit=False)

    def remove_abandoned(self) -> list[Path]:
        """Temporary directories under ``tmp/`` whose process is gone: an export's (its key's lock
        is free) or a process's scratch (its own lock is free). Removed."""
        tmp_root = self.root / "tmp"
        removed = []
        for d in sorted(tmp_root.iterdir()) if tmp_root.is_dir() else ():
            if d.suffix == ".lock":
                continue
            key = d.name.rsplit("-", 1)[0]
            if d.name.startswith(SCRATCH):
                gone = _owner_gone(d.with_name(d.name + ".lock"))
            elif len(key) == 64:
                gone = _owner_gone(self._dirs(key)[1])
            else:
                try:
                    gone = time.time() - d.stat().st_mtime > _STALE_TMP_SECONDS
                except OSError:
                    continue
            if gone:
                shutil.rmtree(d, ignore_errors=True)
                d.with_name(d.name + ".lock").unlink(missing_ok=True)
                removed.append(d)
        return removed

    @contextmanager
    def scratch(self) -> Iterator[Path]:
        """The process's temporary files (coremltools' converted packages, NeMo's tokenizer
        copies) in a directory of the cache's own, locked while the process lives: what a killed
        run leaves there, the next run removes."""
        tmp_root = self.root / "tmp"
        directory = tmp_root / f"{SCRATCH}{uuid.uuid4().hex}"
        lock = FileLock(str(directory.with_name(directory.name + ".lock")))
        try:
            tmp_root.mkdir(parents=True, exist_ok=True)
            self.remove_abandoned()
            # locked before it exists: another process's remove_abandoned never sees it unowned
            lock.acquire()
            directory.mkdir(mode=0o700)
        except OSError as e:
            raise UserError(f"export cache {self.root}: cannot write there ({e.strerror or e}); "
                              f"choose another with --cache-dir or ${ENV_VAR}") from None
        previous, tempfile.tempdir = tempfile.tempdir, str(directory)
        try:
            yield directory
        finally:
            tempfile.tempdir = previous
            shutil.rmtree(directory, ignore_errors=True)
            lock.release()
            directory.with_name(directory.name + ".lock").unlink(missing_ok=True)
