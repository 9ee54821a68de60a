"""``parakeet-coreml``: export Parakeet-TDT to Core ML (``convert``) and prove the export matches
NeMo (``compare``)."""

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
from runtimes.base import BACKENDS


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

    compare = commands.add_parser("compare", help="run the parity checks (and timings) on a convert output directory")
    compare.add_argument("--output-dir", required=True, type=Path,
                         help="a directory written by convert; its metadata.json gets the validation block")
    compare.add_argument("--backend", default="auto", choices=BACKENDS,
                         help="coreml (macOS), mil (this project's executor, any OS), auto (coreml on macOS)")
    compare.add_argument("--compute-units", default=None, choices=COMPUTE_UNITS,
                         help="Core ML compute units (default: those recorded at convert)")
    compare.add_argument("--audio", type=Path, default=None, metavar="FILE",
                         help="a recording of your own, checked first (any rate, channels, common format)")
    compare.add_argument("--tolerance", dest="tolerances", action="append", default=[], metavar="KEY:atol=A,rtol=R",
                         help="override one tolerance (see validation/tolerances.py); repeatable")
    compare.add_argument("--psnr-floor", type=float, default=None, metavar="DB", help="default 35 dB")
    compare.add_argument("--runs", type=_count, default=10, help="timed calls per component (0: no timing)")
    compare.add_argument("--warmup", type=_count, default=3, help="untimed calls before the timed ones")
    compare.add_argument("--cache-dir", type=Path, default=None, help="where the synthetic speech is cached")
    return parser


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


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


def run_compare(args) -> int:
    from exporters.cache import ExportCache
    from exporters.components import ModelDims
    from exporters.export import ORIGINS_FILE, print_progress
    from exporters.sources import ModelSource
    from reports.metadata import METADATA
    from reports.parity import ParityReport, parity_context
    from runtimes.base import BackendUnavailable, load_predictor, resolve_backend
    from validation.audio import edge_clips, load_audio_file, read_audio, synthetic_speech
    from validation.checks import ParityRunner
    from reports.latency import write_latency
    from validation.timing import all_cases, environment, latency_block, measure
    from validation.tolerances import load_tolerances

    directory = args.output_dir
    metadata_path = directory / METADATA
    if not metadata_path.is_file():
        raise ExportError(f"--output-dir {directory}: no {METADATA}; run parakeet-coreml convert --output-dir "
                          f"{directory} first")
    try:
        description = json.loads(metadata_path.read_text())
        recorded = description["model_source"]
        components = description["components"]
        precision = description["coreml"]["compute_precision"]
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{metadata_path}: not a metadata.json written by convert ({e})") from None
    packages = {name: directory / c["path"] for name, c in components.items()}
    absent = [str(p) for p in packages.values() if not p.is_dir()]
    if absent:
        raise ExportError(f"--output-dir {directory}: package(s) listed in {METADATA} are missing: {', '.join(absent)}")
    tolerances = load_tolerances(Path("pyproject.toml"), args.tolerances, args.psnr_floor)
    if args.audio is not None:
        read_audio(args.audio)  # refuse unusable audio before any model is loaded
    source = ModelSource(recorded["kind"], recorded["value"])
    source.validate()
    if source.key() != recorded["content_sha256"]:
        raise ExportError(f"{source.describe()} has changed since it was converted into {directory}; convert again")
    backend = resolve_backend(args.backend)
    units = args.compute_units or description["coreml"]["compute_units"]
    loaded = {}

    def load(package):
        if package not in loaded:
            loaded[package] = load_predictor(package, backend, units)
        return loaded[package]

    try:
        load(next(iter(packages.values())))
    except BackendUnavailable as e:
        raise ExportError(f"--backend {backend}: {e}; use --backend mil to run this project's executor") from None
    print_progress(f"loading {source.describe()} ...")
    model = source.load()
    dims = ModelDims.from_model(model, description["max_audio_seconds"])
    cache = ExportCache(args.cache_dir)
    speech = synthetic_speech(cache, dims)
    clips = ([load_audio_file(args.audio, dims)] if args.audio else []) + [speech] + edge_clips(speech, dims)
    for clip in clips:
        for note in clip.notes:
            print_progress(f"{clip.name}: {note}")
    latency = None
    if args.runs:
        cases = all_cases(model, dims, packages, load, lambda p: load_predictor(p, backend, units), clips[0])
        print_progress(f"timing {len(cases)} case(s) on {clips[0].name}: a cold start, then {args.warmup} warm-up "
                       f"and {args.runs} timed calls of each side")
        audio_seconds = clips[0].length / dims.sample_rate
        latency = latency_block(measure(cases, args.runs, args.warmup, audio_seconds, backend, print_progress),
                                environment(backend, units, precision), audio_seconds)
    context = parity_context(args.backend, backend, precision, units, tolerances)
    report = ParityReport(description, context, precision, clips[0].name)
    def origins(name):
        """The op origins convert's cache entry recorded beside the package, if still cached."""
        entry = cache.lookup(components[name].get("cache_key", ""))
        return json.loads((entry.path / ORIGINS_FILE).read_text()) if entry else None

    runner = ParityRunner(model, dims, packages, load, tolerances, backend, precision, origins=origins)
    for i, clip in enumerate(clips, 1):
        run = runner.run(clip)
        report.add(precision, run)
        failed = run.failed()
        print_progress(f"[{i}/{len(clips)}] {clip.name}: {len(run.results) - len(failed)} of {len(run.results)} "
                       f"checks passed" + "".join(f"\n{r.message()}" for r in failed))
    path, plots = report.write(directory)
    if latency is not None:
        _, latency_plotted = write_latency(directory, description, latency)
        plots += latency_plotted
    status = json.loads(path.read_text())["validation"]["status"]
    print(f"parity {status} on {backend} ({context['values_from']}); validation{' and latency' if latency else ''} "
          f"blocks in {path}, {len(plots)} plots in {plots[0].parent if plots else directory}")
    return 0 if status == "passed" else 1


def _quiet_third_party() -> None:
    warnings.filterwarnings("ignore")
    for name in ("coremltools", "nemo_logger", "torch", "numba"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        _quiet_third_party()
    try:
        return {"convert": run_convert, "compare": run_compare}[args.command](args)
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
