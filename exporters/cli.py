"""``parakeet-coreml``: export Parakeet-TDT to Core ML (``convert``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from exporters.components import COMPONENTS, ExportError
from exporters.convert import COMPUTE_PRECISIONS, COMPUTE_UNITS, DEPLOYMENT_TARGETS, ExportOptions
from exporters.sources import add_source_options


def _component_list(values: list[str]) -> list[str]:
    return [name for value in values for name in value.split(",") if name]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parakeet-coreml", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="export components to .mlpackage files and metadata.json")
    source = convert.add_argument_group("model source (exactly one)")
    add_source_options(source.add_argument)
    convert.add_argument("--output-dir", required=True, type=Path, help="where the packages and metadata.json go")
    convert.add_argument("--components", nargs="+", default=None, metavar="NAME",
                         help=f"components to export (default: all): {', '.join(COMPONENTS)}")
    convert.add_argument("--compute-units", default="ALL", choices=COMPUTE_UNITS)
    convert.add_argument("--compute-precision", default="float16", choices=COMPUTE_PRECISIONS,
                         help="the preprocessor and mel_encoder's front end stay float32 either way")
    convert.add_argument("--minimum-deployment-target", default="iOS17", choices=DEPLOYMENT_TARGETS)
    convert.add_argument("--cache-dir", type=Path, default=None,
                         help="export cache (default: $PARAKEET_COREML_CACHE or the per-user cache directory)")
    return parser


def _staging_dir(output_dir: Path) -> Path:
    """A fresh directory beside ``output_dir``, so publishing it is a rename on one filesystem."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ExportError(f"--output-dir {output_dir}: exists and is not a directory")
    parent = output_dir.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=parent))
    except OSError as e:
        raise ExportError(f"--output-dir {output_dir}: cannot write there ({e.strerror or e})") from None


def _publish(staging: Path, output_dir: Path) -> None:
    """Move the staged packages and metadata.json into ``output_dir``, metadata last."""
    if not output_dir.exists():
        os.replace(staging, output_dir)
        return
    for item in sorted(staging.iterdir(), key=lambda p: p.name == "metadata.json"):
        target = output_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    staging.rmdir()


def run_convert(args) -> int:
    from exporters.cache import ExportCache
    from exporters.components import get_components
    from exporters.export import Exporter
    from exporters.sources import ModelSource

    source = ModelSource.from_options(args.nemo_path, args.model_id, args.preset)
    names = [c.name for c in get_components(_component_list(args.components or []))]
    options = ExportOptions(args.compute_precision, args.compute_units, args.minimum_deployment_target)
    staging = _staging_dir(args.output_dir)
    try:
        exporter = Exporter(source, options, ExportCache(args.cache_dir))
        exported = exporter.export_all(names)
        for e in exported:
            shutil.copytree(e.package, staging / e.package.name)
        metadata = exporter.metadata(exported, relative_paths=True)
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        _publish(staging, args.output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    total = sum(c["size_bytes"] for c in metadata["components"].values()) / 1e6
    print(f"wrote {len(exported)} package(s), {total:.1f} MB, and metadata.json to {args.output_dir}")
    return 0


def _quiet_third_party() -> None:
    warnings.filterwarnings("ignore")
    for name in ("coremltools", "nemo_logger", "torch", "numba"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        _quiet_third_party()
    try:
        return {"convert": run_convert}[args.command](args)
    except ExportError as e:
        print(f"parakeet-coreml {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"parakeet-coreml {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"parakeet-coreml {args.command}: error: {type(e).__name__}: {e} (--debug shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
