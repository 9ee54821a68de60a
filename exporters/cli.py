"""``parakeet-coreml``: export Parakeet-TDT to Core ML (``convert``) and prove the export matches
NeMo (``compare``)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

from exporters.components import COMPONENTS, ExportError
from exporters.convert import COMPUTE_PRECISIONS, COMPUTE_UNITS, DEPLOYMENT_TARGETS, ExportOptions
from exporters.publish import publish, staging_dir
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

    quantize = commands.add_parser("quantize", help="build compressed variants of a convert output directory and "
                                                    "weigh size, quality and speed")
    quantize.add_argument("--input-dir", type=Path, default=Path("parakeet_coreml"),
                          help="a directory written by convert (default parakeet_coreml)")
    quantize.add_argument("--output-root", type=Path, default=Path("parakeet_coreml_quantized"),
                          help="one folder per variant, quantization_summary.json and plots/quantize/ "
                               "(default parakeet_coreml_quantized)")
    quantize.add_argument("--variants", default=None, metavar="A,B",
                          help="variants to build (default: all of the table; see exporters/quantize.py)")
    quantize.add_argument("--variant", dest="declared", action="append", default=[], metavar="NAME=JSON",
                          help='add or replace a variant, e.g. \'enc4={"encoder": [{"kind": "palettize", "nbits": 4}], '
                               '"*": [{"kind": "linear", "granularity": "per_channel"}]}\'; repeatable')
    quantize.add_argument("--gate", dest="gates", action="append", default=[], metavar="VARIANT:METRIC=VALUE",
                          help="override a quality gate (validation/tolerances.py); repeatable")
    quantize.add_argument("--backend", default="auto", choices=BACKENDS,
                          help="what runs the packages: coreml (macOS), mil (this project's executor), auto")
    quantize.add_argument("--compute-units", default=None, choices=COMPUTE_UNITS,
                          help="Core ML compute units (default: those recorded at convert)")
    quantize.add_argument("--runs", type=_count, default=10, help="timed calls per package (0: no timing)")
    quantize.add_argument("--warmup", type=_count, default=3, help="untimed calls before the timed ones")
    quantize.add_argument("--held-out", default="int8_per_channel", metavar="A,B",
                          help="variants whose held-out test-set WER is measured against NeMo, on a confident "
                               "(trained) model (default int8_per_channel; 'none' for none)")
    quantize.add_argument("--cache-dir", type=Path, default=None, help="export cache (compressed packages too)")
    return parser


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def run_convert(args) -> int:
    from exporters.cache import ExportCache
    from exporters.components import get_components
    from exporters.export import Exporter
    from exporters.sources import ModelSource

    source = ModelSource.from_options(args.nemo_path, args.model_id, args.preset)
    names = [c.name for c in get_components(_component_list(args.components or []))]
    options = ExportOptions(args.compute_precision, args.compute_units, args.minimum_deployment_target)
    staging = staging_dir(args.output_dir)
    try:
        exporter = Exporter(source, options, ExportCache(args.cache_dir))
        exported = exporter.export_all(names)
        for e in exported:
            shutil.copytree(e.package, staging / e.package.name)
        metadata = exporter.metadata(exported, relative_paths=True)
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        publish(staging, args.output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    total = sum(c["size_bytes"] for c in metadata["components"].values()) / 1e6
    print(f"wrote {len(exported)} package(s), {total:.1f} MB, and metadata.json to {args.output_dir}")
    return 0


def read_convert_dir(directory: Path, option: str):
    """A directory ``convert`` wrote: its metadata, packages and model source, refused with the
    reason if anything is missing or the model changed since."""
    from exporters.sources import ModelSource
    from reports.metadata import METADATA

    metadata_path = directory / METADATA
    if not metadata_path.is_file():
        raise ExportError(f"{option} {directory}: no {METADATA}; run parakeet-coreml convert --output-dir "
                          f"{directory} first")
    try:
        description = json.loads(metadata_path.read_text())
        recorded = description["model_source"]
        components = description["components"]
        description["coreml"]["compute_precision"]  # present: compare and quantize read it
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{metadata_path}: not a metadata.json written by convert ({e})") from None
    packages = {name: directory / c["path"] for name, c in components.items()}
    absent = [str(p) for p in packages.values() if not p.is_dir()]
    if absent:
        raise ExportError(f"{option} {directory}: package(s) listed in {METADATA} are missing: {', '.join(absent)}")
    source = ModelSource(recorded["kind"], recorded["value"])
    source.validate()
    if source.key() != recorded["content_sha256"]:
        raise ExportError(f"{source.describe()} has changed since it was converted into {directory}; convert again")
    return description, packages, source


def _package_loader(args, description: dict, packages: dict):
    """(backend, compute units, loader) for a convert directory's packages; a backend this host
    lacks is an error that names the one that runs everywhere."""
    from runtimes.base import BackendUnavailable, LoadedPredictors, resolve_backend

    backend = resolve_backend(args.backend)
    units = args.compute_units or description["coreml"]["compute_units"]
    load = LoadedPredictors(backend, units)
    try:
        load(next(iter(packages.values())))
    except BackendUnavailable as e:
        raise ExportError(f"--backend {backend}: {e}; use --backend mil to run this project's executor") from None
    return backend, units, load


def run_compare(args) -> int:
    from exporters.cache import ExportCache
    from exporters.components import ModelDims
    from exporters.export import ORIGINS_FILE, print_progress
    from reports.latency import write_latency
    from reports.parity import ParityReport, parity_context
    from runtimes.base import load_predictor
    from validation.audio import edge_clips, load_audio_file, read_audio, synthetic_speech
    from validation.checks import ParityRunner
    from validation.timing import all_cases, environment, latency_block, measure
    from validation.tolerances import load_tolerances

    directory = args.output_dir
    description, packages, source = read_convert_dir(directory, "--output-dir")
    precision = description["coreml"]["compute_precision"]
    tolerances = load_tolerances(Path("pyproject.toml"), args.tolerances, args.psnr_floor)
    if args.audio is not None:
        read_audio(args.audio)  # refuse unusable audio before any model is loaded
    backend, units, load = _package_loader(args, description, packages)
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
        entry = cache.lookup(description["components"][name].get("cache_key", ""))
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


def run_quantize(args) -> int:
    from exporters.cache import ExportCache
    from exporters.components import ModelDims
    from exporters.convert import ExportOptions
    from exporters.export import Exporter, print_progress
    from exporters.quantize import parse_variant, variant_table
    from reports.quantization import write_quantization
    from runtimes.base import describe_backend
    from validation.audio import synthetic_speech
    from validation.quantization import reference_of, sweep_variant
    from validation.tolerances import load_gates

    description, packages, source = read_convert_dir(args.input_dir, "--input-dir")
    pyproject = Path("pyproject.toml")
    gates = load_gates(pyproject, args.gates)
    table = variant_table(pyproject)
    for text in args.declared:
        name, sep, spec = text.partition("=")
        if not sep or not name:
            raise ExportError(f"--variant {text!r}: expected NAME=JSON")
        table[name] = parse_variant(name, spec, f"--variant {name}")
    names = _component_list([args.variants]) if args.variants else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ExportError(f"--variants: unknown variant(s) {', '.join(unknown)}; expected: {', '.join(table)}")
    held_out = [] if args.held_out == "none" else _component_list([args.held_out])
    if args.output_root.resolve() == args.input_dir.resolve():
        raise ExportError("--output-root must differ from --input-dir")
    staging = staging_dir(args.output_root, "--output-root")
    try:
        backend, units, load = _package_loader(args, description, packages)
        cache = ExportCache(args.cache_dir)
        model = source.load()
        dims = ModelDims.from_model(model, description["max_audio_seconds"])
        clip = synthetic_speech(cache, dims)
        bases = {}
        precision = description["coreml"]["compute_precision"]
        results = []
        for i, name in enumerate(names, 1):
            variant = table[name]
            target = variant.minimum_deployment_target
            if target not in bases:
                options = ExportOptions(precision, description["coreml"]["compute_units"], target)
                exporter = Exporter(source, options, cache, progress=lambda message: None)
                exports = {e.name: e for e in exporter.export_all(list(packages))}
                print_progress(f"the uncompressed {target} exports on {clip.name} ...")
                reference = reference_of({n: e.package for n, e in exports.items()}, load, dims, clip)
                bases[target] = exports, reference
            print_progress(f"[{i}/{len(names)}] {name}: {variant.summary}"
                           + (f" (from an {target} export)" if target != "iOS17" else ""))
            result = sweep_variant(variant, *bases[target], cache, load, dims, clip, backend=backend,
                                   compute_units=units, runs=args.runs, warmup=args.warmup, progress=print_progress)
            if result.error:
                print_progress(f"  {name}: not built: {result.error}")
            elif name in held_out:
                result.held_out = _held_out_wer(model, dims, cache, bases[target][0], result.packages, load)
            results.append(result)
        context = {"model": description["model"], "backend": backend, "values_from": describe_backend(backend),
                   "compute_units": units, "compute_precision": precision, "clip": clip.name, "runs": args.runs,
                   "warmup": args.warmup}
        summary_path, plots, skipped = write_quantization(staging, results, context, gates)
        publish(staging, args.output_root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary = json.loads((args.output_root / summary_path.name).read_text())
    for line in skipped:
        print_progress(f"plot not drawn: {line}")
    failures = [f for entry in summary.values() for f in entry["gates"]["failures"]]
    errors = [f"{name}: {entry['error']}" for name, entry in summary.items() if entry["error"]]
    for line in failures + errors:
        print(f"FAILED {line}", file=sys.stderr)
    print(f"{len(results)} variant(s) in {args.output_root}: {len(errors)} not built, {len(failures)} gate failure(s); "
          f"{len(plots)} plots in {plots[0].parent.relative_to(staging) if plots else 'none'}")
    return 1 if failures or errors else 0


def _held_out_wer(model, dims, cache, base_exports: dict, variant_packages: dict, load) -> dict:
    """WER on the held-out test set: NeMo, the uncompressed export and the variant; ``{"skipped":
    reason}`` on a model not confident enough for its transcripts to mean anything."""
    from validation.held_out import (held_out_clips, nemo_transcriber, not_confident_reason, package_transcriber,
                                     transcribe_held_out)

    clips = held_out_clips(cache, dims)
    _, reason = not_confident_reason(model, dims, clips)
    if reason:
        return {"skipped": reason}
    base = {name: e.package for name, e in base_exports.items()}
    result = transcribe_held_out(model, clips, {"nemo": nemo_transcriber(model, dims),
                                                "uncompressed": package_transcriber(base, load, dims),
                                                "variant": package_transcriber(variant_packages, load, dims)})
    return {key: value for key, value in result.as_dict().items() if key != "exact"}


def _quiet_third_party() -> None:
    warnings.filterwarnings("ignore")
    for name in ("coremltools", "nemo_logger", "torch", "numba"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        _quiet_third_party()
    try:
        return {"convert": run_convert, "compare": run_compare, "quantize": run_quantize}[args.command](args)
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
