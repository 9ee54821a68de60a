"""Output directories written whole or not at all.

Everything is built in a staging directory beside the target, then moved in. Into an existing
directory each item goes in after the item it replaces (a package, a plot folder, even a file
or a link where a package belongs) has been moved aside into the staging directory; if any move
fails, or the process is interrupted, the moves are undone and the directory is exactly as it
was. A staging directory is locked by the process that owns it, so the next run removes those
of processes that are gone (killed ones included) and leaves a running one's alone.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from infra.errors import UserError
from infra.faults import fault_point

REPLACED = ".replaced"  # inside the staging directory: what publishing moved aside
# A staging directory without its lock file is that young only while its owner is creating it.
_UNLOCKED_GRACE_SECONDS = 60


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _lock_of(staging: Path) -> Path:
    return staging.with_name(staging.name + ".lock")


def remove_abandoned(output_dir: Path) -> list[Path]:
    """Staging directories of ``output_dir`` whose owning process is gone: removed."""
    removed = []
    for staging in output_dir.parent.glob(f".{output_dir.name}.partial-*"):
        if staging.name.endswith(".lock"):
            continue
        lock_path = _lock_of(staging)
        if not lock_path.exists():
            try:
                young = time.time() - staging.stat().st_mtime < _UNLOCKED_GRACE_SECONDS
            except OSError:
                continue
            if not young:
                shutil.rmtree(staging, ignore_errors=True)
                removed.append(staging)
            continue
        lock = FileLock(str(lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:  # its owner is still running
            continue
        try:
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
        finally:
            lock.release()
            lock_path.unlink(missing_ok=True)
    return removed


@contextmanager
def staged_output(output_dir: Path, option: str = "--output-dir") -> Iterator[Path]:
    """A fresh staging directory beside ``output_dir`` (so publishing is renames on one file
    system), locked while this process works in it and removed afterwards, whatever happens."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"{option} {output_dir}: exists and is not a directory")
    if output_dir.is_symlink() and not output_dir.exists():
        raise UserError(f"{option} {output_dir}: a symbolic link to {os.readlink(output_dir)}, which does not "
                          "exist; create that folder or give another path")
    parent = output_dir.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(output_dir.absolute())
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=parent))
    except OSError as e:
        raise UserError(f"{option} {output_dir}: cannot write there ({e.strerror or e})") from None
    lock = FileLock(str(_lock_of(staging)))
    lock.acquire()
    try:
        os.chmod(staging, 0o777 & ~umask())  # mkdtemp's 0700 would lock other users out of the output
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        lock.release()
        _lock_of(staging).unlink(missing_ok=True)


def publish(staging: Path, output_dir: Path, stale: Callable[[Path], bool] | None = None) -> list[str]:
    """Move what was staged into ``output_dir``, its JSON descriptions last, so a reader never
    finds a description of packages that are not there yet; all of it, or none. Items of
    ``output_dir`` that ``stale`` picks and the staging does not replace (an earlier run's
    variants) are removed with it, and named in the result. Publishers into one directory take
    turns (a lock file beside it, ``.<name>.lock``, stays there)."""
    output_dir = Path(output_dir)
    follow_umask(staging)
    with FileLock(str(output_dir.absolute().parent / f".{output_dir.name}.lock")):
        staged = {p.name for p in staging.iterdir()}
        dropped = sorted(p.name for p in output_dir.iterdir() if p.name not in staged and stale(p)) \
            if stale is not None and output_dir.is_dir() else []
        _publish(staging, output_dir, dropped)
    return dropped


def check_writable(directory: Path, option: str) -> None:
    """Refuse, before any work, a place results cannot be written to: a file where a folder
    belongs, or a folder (or, where it does not exist yet, its nearest parent) this user cannot
    write to."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{option} {directory}: exists and is not a directory; expected a folder for the reports")
    existing = next(p for p in [directory.absolute(), *directory.absolute().parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {directory}: {existing} is not writable; give --report-dir a folder you can "
                          "write to")


def write_whole(path: Path, text: str, fault: str = "write") -> None:
    """``path`` replaced by ``text`` in one rename, with the permissions of the umask: a reader,
    or a run killed meanwhile, sees the old file or the new one, never part of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        fault_point(fault)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def follow_umask(root: Path) -> None:
    """Everything below ``root`` gets the permissions of the umask, as files a user writes do:
    coremltools saves a package's files 0600 and its folders 0700, and copies keep that, which
    would lock other users (a CI job, a build machine's account) out of the output."""
    mask = umask()
    for directory, folders, files in os.walk(root):
        for name in folders:
            os.chmod(Path(directory) / name, 0o777 & ~mask)
        for name in files:
            path = Path(directory) / name
            if not path.is_symlink():
                os.chmod(path, 0o666 & ~mask)


def _publish(staging: Path, output_dir: Path, dropped: Sequence[str] = ()) -> None:
    if not output_dir.exists() and not output_dir.is_symlink():
        fault_point("publish")
        os.replace(staging, output_dir)
        staging.mkdir()  # for staged_output to remove, as it removes any staging directory
        return
    replaced = staging / REPLACED
    replaced.mkdir()
    items = sorted((p for p in staging.iterdir() if p != replaced), key=lambda p: p.suffix == ".json")
    done: list[tuple[Path, Path | None, bool]] = []  # (target, its old content moved aside, new one in place)
    try:
        for name in dropped:
            os.replace(output_dir / name, replaced / name)
            done.append((output_dir / name, replaced / name, False))
        for item in items:
            target = output_dir / item.name
            aside = None
            if target.exists() or target.is_symlink():
                aside = replaced / item.name
                os.replace(target, aside)
            done.append((target, aside, False))
            fault_point("publish")
            os.replace(item, target)
            done[-1] = (target, aside, True)
    except BaseException:
        for target, aside, placed in reversed(done):
            if placed:
                _remove(target)
            if aside is not None:
                os.replace(aside, target)
        raise


def copy_package(package: Path, target: Path, copy: Callable[[Path, Path], object] = shutil.copytree) -> None:
    """Copy a package directory (with ``copy``); a full disk is an error that says where and how much."""
    try:
        copy(package, target)
    except OSError as e:
        # copytree gathers per-file failures into one shutil.Error of (source, target, message)
        if e.errno != errno.ENOSPC and f"[Errno {errno.ENOSPC}]" not in str(e):
            raise
        needed = sum(f.stat().st_size for f in Path(package).rglob("*") if f.is_file())
        free = shutil.disk_usage(target.parent).free
        raise UserError(f"no space left on the device of {target.parent}: {package.name} needs "
                          f"{needed / 1e6:.1f} MB, {free / 1e6:.1f} MB are free") from None
