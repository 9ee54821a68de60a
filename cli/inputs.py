"""What a command reads, checked before torch, coremltools and NeMo load (about ten seconds):
a mistyped folder, file or name is told at once. Only light modules are imported here; the
commands (``cli.commands``) read the same inputs through the same functions."""

from __future__ import annotations

import json
from pathlib import Path

from exporters.sources import ModelSource
from infra.errors import UserError
from infra.publish import check_writable
from validation.audio import audio_info
from validation.corpus import check_manifest_argument
from validation.packages import DEFAULT_CONVERT_DIR, METADATA
from validation.windowing import DEFAULT_STRATEGY, STRATEGIES


def read_convert_dir(directory: Path, option: str):
    """A directory ``convert`` wrote: its metadata, packages and model source, refused with the
    reason if anything is missing or the model changed since."""
    metadata_path = directory / METADATA
    if not directory.exists():
        raise UserError(f"{option} {directory}: no such folder; expected one that parakeet-coreml convert wrote")
    if not metadata_path.is_file():
        raise UserError(f"{option} {directory}: no {METADATA}, so not a folder convert wrote; for packages of "
                          "another converter (or a quantize variant's folder) give --packages DIR with a model "
                          "source (--nemo-path, --model-id or --preset)")
    try:
        description = json.loads(metadata_path.read_text())
        recorded = description["model_source"]
        components = description["components"]
        description["coreml"]["compute_precision"]  # present: compare and quantize read it
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{metadata_path}: not a metadata.json written by convert ({e})") from None
    if not isinstance(components, dict):
        raise UserError(f"{metadata_path}: 'components' is not a table of component -> package")
    unreadable = [name for name, c in components.items()
                  if not isinstance(c, dict) or not isinstance(c.get("path"), str)]
    if unreadable:
        raise UserError(f"{metadata_path}: no package path for component(s) {', '.join(unreadable)}; expected "
                          f"an entry with its \"path\" each, as convert writes")
    packages = {name: directory / c["path"] for name, c in components.items()}
    absent = [str(p) for p in packages.values() if not p.is_dir()]
    if absent:
        raise UserError(f"{option} {directory}: package(s) listed in {METADATA} are missing: {', '.join(absent)}")
    source = ModelSource(recorded["kind"], recorded["value"])
    source.validate()
    if source.key() != recorded["content_sha256"]:
        raise UserError(f"{source.describe()} has changed since it was converted into {directory}; convert again")
    return description, packages, source


def strategy_list(values: list[str] | None, streaming: bool) -> list[str]:
    """``--strategy`` as strategy names, the gated one first, each once."""
    if streaming and values:
        raise UserError("--strategy: a streamed evaluation (--streaming) feeds chunks, not windows; "
                          "drop one of the two")
    names = [DEFAULT_STRATEGY, *STRATEGIES] if "all" in (values or ()) and values[0] == "all" else \
        [n for v in values or [DEFAULT_STRATEGY] for n in ([*STRATEGIES] if v == "all" else [v])]
    return list(dict.fromkeys(names))


def report_dir_of(args, default: Path, option: str) -> Path | None:
    """Where a command's reports go (``--report-dir``, else ``default``), checked writable up front:
    a run that cannot write its results says so before the work, not after."""
    if not hasattr(args, "report_dir"):  # quantize: its --output-root is staged (and checked) as it starts
        return None
    chosen = args.report_dir or default
    check_writable(chosen, "--report-dir" if args.report_dir else option)
    return Path(chosen)


def preflight(args) -> None:
    """The paths, names and combinations a command reads, checked before its heavy imports."""
    if args.command == "convert":
        ModelSource.from_options(args.nemo_path, args.model_id, args.preset)
        return
    package_set = getattr(args, "packages", None) is not None or bool(getattr(args, "components", None))
    if package_set:
        if getattr(args, "packages", None) is not None and not Path(args.packages).is_dir():
            raise UserError(f"--packages {args.packages}: no such folder; expected one holding .mlpackage folders")
    elif args.command in ("compare", "evaluate") and args.output_dir is not None:
        read_convert_dir(args.output_dir, "--output-dir")
        report_dir_of(args, args.output_dir, "--output-dir")
    elif args.command == "quantize":
        read_convert_dir(args.output_dir or DEFAULT_CONVERT_DIR, "--output-dir")
    if args.command == "quantize":
        check_manifest_argument(args.manifest)
        for option, value in (("--sensitivity", args.sensitivity), ("--search", args.search)):
            if package_set and value not in (None, "none"):
                raise UserError(f"{option} groups weights by the Torch module their ops came from, which only this "
                                "tool's exports record; a package set (--packages, --component) has none")
        for text in args.declared:
            if "=" not in text and not Path(text).is_file():
                raise UserError(f"--variant {text!r}: expected NAME=JSON, or a recipe file (a quantize run's "
                                "searched/recipe.json) that exists")
    if args.command == "evaluate":
        strategy_list(args.strategy, args.streaming)
        if args.manifest is not None:
            check_manifest_argument(args.manifest)
    audio = getattr(args, "audio", None)
    for path in [audio] if isinstance(audio, Path) else audio or []:
        audio_info(path, f"--audio {path}")
