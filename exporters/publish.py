"""Output directories written whole or not at all: built beside the target, then moved in."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from exporters.components import ExportError


def staging_dir(output_dir: Path, option: str = "--output-dir") -> Path:
    """A fresh directory beside ``output_dir``, so publishing it is a rename on one filesystem."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ExportError(f"{option} {output_dir}: exists and is not a directory")
    parent = output_dir.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=parent))
    except OSError as e:
        raise ExportError(f"{option} {output_dir}: cannot write there ({e.strerror or e})") from None


def publish(staging: Path, output_dir: Path) -> None:
    """Move what was staged into ``output_dir``, its JSON descriptions last, so a reader never
    finds a description of packages that are not there yet."""
    if not output_dir.exists():
        os.replace(staging, output_dir)
        return
    for item in sorted(staging.iterdir(), key=lambda p: p.suffix == ".json"):
        target = output_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    staging.rmdir()
