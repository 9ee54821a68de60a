"""``parakeet-coreml``: export Parakeet-TDT to Core ML (``convert``), prove the export matches
NeMo (``compare``), transcribe a data set with both and take any WER gap apart (``evaluate``),
and weigh compressed variants of the export (``quantize``)."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import time
import warnings
from pathlib import Path

from cli.inputs import preflight
from cli.options import (
    AUDIO,
    BACKEND,
    CACHE_DIR,
    CHIP,
    CHUNK_MS,
    COMPUTE_PRECISION,
    COMPUTE_UNITS_OPTION,
    GATE,
    MANIFEST,
    MAX_WER_DIFFERENCE,
    NORMALIZER,
    PSNR_FLOOR,
    TOLERANCE,
    WARMUP_CALLS,
    count,
)
from exporters.components import (
    COMPONENTS,
    DEPLOYMENT_TARGETS,
    STREAMING_COMPONENTS,
    streaming_components,
)
from exporters.sources import add_source_options
from infra.cache import ExportCache
from infra.console import chatter_to, print_progress
from infra.errors import UserError
from runtimes.base import COMPUTE_UNITS, PackageError
from validation.corpus import HELD_OUT_SET
from validation.packages import DEFAULT_CONVERT_DIR, DEFAULT_REPORT_DIR
from validation.tolerances import DEFAULT_HELD_OUT_VARIANT
from validation.windowing import DEFAULT_STRATEGY, STRATEGIES

DESCRIPTION = ("parakeet-coreml: export Parakeet-TDT to Core ML (convert), prove the export matches NeMo (compare), "
               "transcribe a data set with both and take any WER gap apart (evaluate), and weigh compressed variants "
               "of the export (quantize).")
CONFIG_HELP = ("a pyproject.toml-style file whose [tool.parakeet-coreml] sets tolerances, gates and variants "
               "(default: this project's pyproject.toml when run inside its checkout, else none)")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that every clean-up runs as it does for Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parakeet-coreml", description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--verbose", action="store_true",
                        help="show what NeMo, coremltools and torch print (by default it goes to a log file, "
                             "whose path is printed when a command fails)")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="export components to .mlpackage files and metadata.json")
    source = convert.add_argument_group("model source (exactly one)")
    add_source_options(source.add_argument)
    convert.add_argument("--output-dir", required=True, type=Path, help="where the packages and metadata.json go")
    convert.add_argument("--components", nargs="+", default=None, metavar="NAME",
                         help=f"components to export (default: every one the model has): {', '.join(COMPONENTS)}; "
                              f"a cache-aware model adds {', '.join(streaming_components())} (or "
                              f"{', '.join(streaming_components(cache_state=True))} with --cache-state); any of "
                              f"{', '.join(STREAMING_COMPONENTS)} can be named")
    COMPUTE_UNITS_OPTION.add(convert.add_argument)
    COMPUTE_PRECISION.add(convert.add_argument)
    convert.add_argument("--minimum-deployment-target", default="iOS17", choices=DEPLOYMENT_TARGETS)
    convert.add_argument("--flexible-audio", action="store_true",
                         help="the preprocessor takes 1 to a window of samples (a RangeDim), as the public Core ML "
                              "release's does; default: exactly the 15 s window")
    CHUNK_MS.add(convert.add_argument)
    convert.add_argument("--cache-state", action="store_true",
                         help="a cache-aware model's later chunks: encoder_streaming_state, its caches kept as iOS 18 "
                              "Core ML states (that package targets iOS18), in place of encoder_streaming's caches "
                              "as inputs and outputs")
    CACHE_DIR.add(convert.add_argument)

    compare = commands.add_parser("compare", help="run the parity checks (and timings) on a convert output directory "
                                                  "or any package set (--packages)")
    compare.add_argument("--output-dir", type=Path, default=None,
                         help="a directory written by convert; its metadata.json gets the validation block")
    _add_package_set_options(compare, "compare")
    BACKEND.add(compare.add_argument)
    compare.add_argument("--compute-units", default=None, choices=COMPUTE_UNITS,
                         help="Core ML compute units (default: those recorded at convert)")
    AUDIO.add(compare.add_argument)
    TOLERANCE.add(compare.add_argument)
    PSNR_FLOOR.add(compare.add_argument)
    CHIP.add(compare.add_argument)
    compare.add_argument("--runs", type=count, default=10, help="timed calls per component (0: no timing)")
    compare.add_argument("--warmup", type=count, default=WARMUP_CALLS, help="untimed calls before the timed ones")
    CACHE_DIR.add(compare.add_argument)
    compare.add_argument("--config", type=Path, default=None, metavar="FILE", help=CONFIG_HELP)

    evaluate = commands.add_parser("evaluate", help="transcribe a data set with NeMo and the export, and take the "
                                                    "WER gap apart: model, windowing, export numerics")
    evaluate.add_argument("--output-dir", type=Path, default=None,
                          help="a directory written by convert; its metadata.json gets the evaluation block")
    _add_package_set_options(evaluate, "evaluate")
    inputs = evaluate.add_mutually_exclusive_group(required=True)
    MANIFEST.add(inputs.add_argument)
    inputs.add_argument("--audio", type=Path, nargs="+", metavar="FILE",
                        help="recordings without reference texts: agreement with NeMo only")
    BACKEND.add(evaluate.add_argument)
    evaluate.add_argument("--compute-units", default=None, choices=COMPUTE_UNITS,
                          help="Core ML compute units (default: those recorded at convert)")
    NORMALIZER.add(evaluate.add_argument)
    MAX_WER_DIFFERENCE.add(evaluate.add_argument)
    evaluate.add_argument("--report-dir", type=Path, default=None,
                          help="where evaluation.jsonl, the metadata block and plots go (default: --output-dir, "
                               f"or {DEFAULT_REPORT_DIR} with --packages)")
    evaluate.add_argument("--streaming", action="store_true",
                          help="a cache-aware model's streaming packages: NeMo offline, NeMo's cache-aware streaming "
                               "and the export streamed chunk by chunk (encoder_streaming_first, encoder_streaming or "
                               "encoder_streaming_state, decoder, joint_decision_single_step), the gap taken apart as "
                               "model, streaming and export numerics")
    evaluate.add_argument("--strategy", action="append", choices=[*STRATEGIES, "all"], metavar="NAME",
                          help="how long recordings are cut into windows and merged: "
                               f"{', '.join(STRATEGIES)} (default {DEFAULT_STRATEGY}); repeat it to compare "
                               "strategies side by side on NeMo and the export (the first one named is gated), or "
                               "all (every one, the default first)")
    evaluate.add_argument("--resume", action="store_true",
                          help="continue an interrupted run from its evaluation.jsonl")
    CACHE_DIR.add(evaluate.add_argument)

    quantize = commands.add_parser("quantize", help="build compressed variants of a convert output directory and "
                                                    "weigh size, quality and speed")
    quantize.add_argument("--output-dir", "--input-dir", dest="output_dir", type=Path, default=None,
                          help="a directory written by convert, as compare and evaluate name it (default "
                               f"{DEFAULT_CONVERT_DIR}; --input-dir, its former name here, still works)")
    _add_package_set_options(quantize, "quantize")
    quantize.add_argument("--output-root", type=Path, default=Path("parakeet_coreml_quantized"),
                          help="one folder per variant, quantization_summary.json and plots/quantize/ "
                               "(default parakeet_coreml_quantized)")
    quantize.add_argument("--variants", default=None, metavar="A,B",
                          help="variants to build (default: all of the table; see exporters/quantize.py)")
    quantize.add_argument("--variant", dest="declared", action="append", default=[], metavar="NAME=JSON|FILE",
                          help='add or replace a variant, e.g. \'enc4={"encoder": [{"kind": "palettize", "nbits": 4}], '
                               '"*": [{"kind": "linear", "granularity": "per_channel"}]}\', or read a recipe file '
                               "(a --search run's searched/recipe.json); repeatable")
    GATE.add(quantize.add_argument)
    BACKEND.add(quantize.add_argument)
    quantize.add_argument("--compute-units", default=None, choices=COMPUTE_UNITS,
                          help="Core ML compute units (default: those recorded at convert)")
    quantize.add_argument("--runs", type=count, default=10, help="timed calls per package (0: no timing)")
    quantize.add_argument("--warmup", type=count, default=WARMUP_CALLS, help="untimed calls before the timed ones")
    quantize.add_argument("--held-out", default=None, metavar="A,B",
                          help="variants evaluated on the --manifest set, on a confident (trained) model: their WER "
                               "held to NeMo's and their words to the uncompressed export's (default "
                               f"{DEFAULT_HELD_OUT_VARIANT} where it is swept; 'none' for none)")
    quantize.add_argument("--sensitivity", default=None, metavar="A,B",
                          help="variants profiled group by group: each encoder layer's attention, feed-forward and "
                               "convolution, the subsampling, the decoder and the joint compressed alone, the rest "
                               "as exported (quality, PSNR, the clip's token error rate; a plot each)")
    quantize.add_argument("--search", default=None, metavar="A,B",
                          help="find the smallest recipe mixing these variants group by group that passes the gates "
                               "of the variant 'searched' (default: no word changed on the --manifest set, "
                               "flips=0; add e.g. --gate searched:wer_points=0.2); profiles each, then tries whole "
                               "models, cheapest megabytes first; writes searched/recipe.json, which --variant reads")
    quantize.add_argument("--manifest", default=HELD_OUT_SET, metavar="FILE.jsonl",
                          help="the data set the --held-out variants are evaluated on, named as evaluate's --manifest "
                               f"names one (default {HELD_OUT_SET})")
    CACHE_DIR.add(quantize.add_argument)
    quantize.add_argument("--config", type=Path, default=None, metavar="FILE", help=CONFIG_HELP)
    return parser


def _add_package_set_options(parser, command: str) -> None:
    """Packages another converter wrote, instead of a convert directory: the folder, names to
    settle, the model source they are held to, and (compare) where the report goes."""
    group = parser.add_argument_group(
        "any package set, instead of --output-dir (with one model source)",
        "components are found by file name (case, separators and prefixes ignored: Encoder.mlpackage, "
        "parakeet_encoder.mlpackage, MelEncoder.mlmodelc); .mlmodelc bundles load only through Core ML (macOS)")
    group.add_argument("--packages", type=Path, default=None, metavar="DIR", help="a folder of packages")
    group.add_argument("--component", dest="components", action="append", default=[], metavar="NAME=PATH",
                       help="this component's package (repeatable; overrides what --packages finds)")
    add_source_options(group.add_argument)
    if command == "compare":
        group.add_argument("--report-dir", type=Path, default=None,
                           help=f"where the metadata.json blocks and plots go (default {DEFAULT_REPORT_DIR})")


LOGS_KEPT = 20


def chatter_log(command: str) -> Path:
    """A new log file for this run's third-party output, in the per-user log directory (the
    oldest beyond ``LOGS_KEPT`` removed)."""
    from platformdirs import user_log_path  # lazy: only a command that runs needs it, not --help

    directory = user_log_path("parakeet-coreml", appauthor=False, ensure_exists=True)
    for old in sorted(directory.glob("*.log"), key=lambda p: p.stat().st_mtime)[:-LOGS_KEPT]:
        old.unlink(missing_ok=True)
    return directory / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def _command(args) -> int:
    preflight(args)  # what it reads, before the imports below take their ten seconds
    from cli import commands  # lazy: torch, coremltools and NeMo load only once a command runs, not for --help

    return getattr(commands, f"run_{args.command}")(args)


def _run(args) -> int:
    """The command, with third-party chatter (from the first import of NeMo on) in a log file
    unless ``--verbose``."""
    with ExportCache(args.cache_dir).scratch():
        if args.verbose:
            return _command(args)
        path = chatter_log(args.command)
        with open(path, "a", encoding="utf-8") as log, chatter_to(log), warnings.catch_warnings():
            warnings.simplefilter("default")  # each library warning once, into the log
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: log.write(
                warnings.formatwarning(message, category, filename, lineno, line))
            try:
                code = _command(args)
            except (UserError, KeyboardInterrupt):  # bad input or a stop: the one line says it all
                raise
            except Exception:
                print_progress(f"third-party output of this run: {path}")
                raise
        if code != 0:
            print_progress(f"third-party output of this run: {path}")
        return code


def _disk_full(error: BaseException) -> str | None:
    """Where a full disk stopped the run (the file, or "disk full"), or None for another error;
    shutil's copies gather their failures into one shutil.Error."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return str(error.filename or "disk full")
    if f"[Errno {errno.ENOSPC}]" in str(error):
        return "while copying"
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(args)
    except (UserError, PackageError) as e:  # bad input: a damaged package is one too
        print(f"parakeet-coreml {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        how = "terminated" if isinstance(e, Terminated) else "interrupted"
        kept = ("the utterances done are in evaluation.jsonl (--resume continues)" if args.command == "evaluate"
                else "nothing was written")
        print(f"parakeet-coreml {args.command}: {how}; {kept}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    except Exception as e:
        if _disk_full(e):  # bad conditions, not a defect: one line too, and nothing half-written in place
            print(f"parakeet-coreml {args.command}: error: no space left on the device ({_disk_full(e)}); outputs "
                  "are published whole, so what was being written is not in place", file=sys.stderr)
            return 2
        if args.debug:
            raise
        print(f"parakeet-coreml {args.command}: error: {type(e).__name__}: {e} (--debug shows the traceback)",
              file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
