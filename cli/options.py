"""The options the command and the test suites share, each declared once.

An :class:`Option` renders into an argparse parser (``parser.add_argument``) and a pytest option
group (``group.addoption``) with the same flag, destination, default and help, so ``compare
--backend`` and ``pytest --backend`` cannot drift apart. ``tests/unit/test_options.py`` checks
that both front ends declare them from here. Light imports only: ``--help`` loads no torch.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from exporters.components import COMPUTE_PRECISIONS
from runtimes.base import BACKENDS, COMPUTE_UNITS
from validation.metrics import NORMALIZERS
from validation.neural_engine import CHIPS, DEFAULT_CHIP
from validation.tolerances import MAX_WER_DIFFERENCE_POINTS, PSNR_FLOOR_DB


def at_least_zero(cast, what: str):
    """An option type: ``cast(text)``, finite and >= 0, or an error naming what is expected."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = -1
        if not (math.isfinite(value) and value >= 0):
            raise argparse.ArgumentTypeError(f"expected {what} >= 0, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its error
    return parse


count = at_least_zero(int, "a whole number")
points = at_least_zero(float, "a finite number of WER points")


@dataclass(frozen=True)
class Option:
    flag: str
    dest: str
    help: str | Callable[[], str]  # a callable: the help of a default read when the option is declared
    default: object = None
    type: Callable | None = None
    choices: tuple | None = None
    metavar: str | None = None
    action: str | None = None

    def add(self, add_option, **changes) -> None:
        """Declare it with ``add_option`` (argparse's ``add_argument`` or pytest's ``addoption``);
        ``changes`` are for a command where it means something else (and is then not shared)."""
        o = replace(self, **changes)
        declared = {"dest": o.dest, "help": o.help() if callable(o.help) else o.help,
                    "default": list(o.default) if isinstance(o.default, list) else o.default,  # a list per parser
                    "type": o.type, "choices": list(o.choices) if o.choices else None, "metavar": o.metavar,
                    "action": o.action}
        add_option(o.flag, **{k: v for k, v in declared.items() if v is not None or k == "default"})


CACHE_DIR = Option("--cache-dir", "cache_dir", type=Path,
                   help="the export cache: exports, compressed variants, built-in data sets and synthetic speech "
                        "(default: $PARAKEET_COREML_CACHE or the per-user cache directory)")
BACKEND = Option("--backend", "backend", default="auto", choices=BACKENDS,
                 help="what runs the packages: coreml (Apple's Core ML, macOS only), mil (this project's MIL "
                      "executor, any OS) or auto (coreml on macOS, mil elsewhere)")
COMPUTE_UNITS_OPTION = Option("--compute-units", "compute_units", default="ALL", choices=COMPUTE_UNITS,
                              help="the compute units recorded in the exports, which Core ML uses when it runs them "
                                   "(default ALL)")
COMPUTE_PRECISION = Option("--compute-precision", "compute_precision", default="float16", choices=COMPUTE_PRECISIONS,
                           help="precision of the exports (default float16); the preprocessor and mel_encoder's "
                                "front end stay float32 either way")
CHUNK_MS = Option("--chunk-ms", "chunk_ms", type=int, metavar="MS",
                  help="a cache-aware model's streaming chunk, in milliseconds of new audio: one it was trained for "
                       "(default: its default attention context's)")
AUDIO = Option("--audio", "audio", type=Path, metavar="FILE",
               help="a recording of your own for the parity checks (any rate, channels, common format), besides the "
                    "synthetic speech and the edge inputs")
MANIFEST = Option("--manifest", "manifest", metavar="FILE.jsonl",
                  help="a data set: NeMo's manifest (audio_filepath, text, optional offset and duration; relative "
                       "paths from the manifest's folder), or a built-in set: builtin:held-out, builtin:long-form, "
                       "builtin:seams, builtin:silence")
NORMALIZER = Option("--normalizer", "normalizer", default="whisper-english", choices=NORMALIZERS,
                    help="text normalisation before WER (default whisper-english, as the Open ASR Leaderboard; the "
                         "raw WER is recorded too)")
MAX_WER_DIFFERENCE = Option("--max-wer-difference", "max_wer_difference", default=MAX_WER_DIFFERENCE_POINTS,
                            type=points, metavar="POINTS",
                            help=lambda: "how far the export's WER may stray from NeMo's on the same windows "
                                         f"(default {MAX_WER_DIFFERENCE_POINTS} points)")
TOLERANCE = Option("--tolerance", "tolerances", default=[], action="append", metavar="KEY:atol=A,rtol=R",
                   help="override one entry of the tolerance table (validation/tolerances.py); repeatable")
PSNR_FLOOR = Option("--psnr-floor", "psnr_floor", type=float, metavar="DB",
                    help=lambda: f"the PSNR every float output must reach besides its tolerance (default "
                                 f"{PSNR_FLOOR_DB:g} dB)")
GATE = Option("--gate", "gates", default=[], action="append", metavar="VARIANT:METRIC=VALUE",
              help="override a quantization gate (validation/tolerances.py); repeatable")
CHIP = Option("--chip", "chip", default=DEFAULT_CHIP, choices=tuple(CHIPS),
              help=f"the Apple chip whose Neural Engine the placement prediction is for (default {DEFAULT_CHIP}); "
                   "the largest tensor dimension each takes: " + "; ".join(
                       f"{', '.join(c.name for c in CHIPS.values() if c.max_dimension == limit)} {limit:,}"
                       for limit in sorted({c.max_dimension for c in CHIPS.values()})))

# The options the test suites declare (conftest.py) exactly as the command does.
SUITE_OPTIONS = (CACHE_DIR, BACKEND, COMPUTE_UNITS_OPTION, COMPUTE_PRECISION, CHUNK_MS, AUDIO, MANIFEST, NORMALIZER,
                 MAX_WER_DIFFERENCE, TOLERANCE, PSNR_FLOOR, GATE, CHIP)
# What each command declares of them, as they are (a command's own meaning of an option is not listed).
COMMAND_OPTIONS = {
    "convert": (CACHE_DIR, COMPUTE_UNITS_OPTION, COMPUTE_PRECISION, CHUNK_MS),
    "compare": (CACHE_DIR, BACKEND, AUDIO, TOLERANCE, PSNR_FLOOR, CHIP),
    "evaluate": (CACHE_DIR, BACKEND, MANIFEST, NORMALIZER, MAX_WER_DIFFERENCE),
    "quantize": (CACHE_DIR, BACKEND, GATE),
}
# quantize's timing, the command's and the suite's alike (the suite used to warm up once)
WARMUP_CALLS = 3
