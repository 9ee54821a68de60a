"""Where the tool's own lines go, apart from what the libraries print.

NeMo's logger, coremltools' progress bars and the libraries' warnings would otherwise interleave
with the tool's progress and results. The command line runs each command inside
:func:`chatter_to`, which sends everything written to ``sys.stdout``/``sys.stderr`` and every
logging stream handler to a log file, while :func:`tool_out` and :func:`tool_err` keep writing
where the tool's output went before (the terminal, or pytest's capture in the tests).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

_streams: dict[str, TextIO] = {}


def tool_out() -> TextIO:
    """The tool's results: the terminal's stdout even while chatter goes to the log."""
    return _streams.get("out", sys.stdout)


def tool_err() -> TextIO:
    """The tool's progress and errors: the terminal's stderr even while chatter goes to the log."""
    return _streams.get("err", sys.stderr)


def print_progress(message: str) -> None:
    """A line of the tool's progress, above any progress bar that is showing."""
    tqdm.write(message, file=tool_err())


def print_result(message: str) -> None:
    print(message, file=tool_out(), flush=True)


# a stage quicker than this shows no bar at all (and a failure in it, only its error line)
BAR_DELAY_SECONDS = 2.0


def progress_bar(what: str, unit: str):
    """``bar(items, total)``: the items, with a bar of the rate and ETA on the tool's stderr once
    the stage has run ``BAR_DELAY_SECONDS``, cleared when the stage ends or fails. Only on a
    terminal: a log or a pipe gets the tool's progress lines, not carriage returns."""
    def bar(items, total):
        stream = tool_err()
        # a terminal that reports no width (a pseudo-terminal nobody sized: ``script``, CI, some IDEs)
        # made tqdm draw a bar of no columns, that is nothing at all: such a one gets a fixed width
        sized = _columns(stream) > 0
        progress = _Bar(items, total=total, desc=what, unit=unit, file=stream, dynamic_ncols=sized,
                        ncols=None if sized else UNSIZED_COLUMNS, leave=False, delay=BAR_DELAY_SECONDS, disable=None)
        try:
            yield from progress
        finally:
            progress.close()

    return bar


UNSIZED_COLUMNS = 80


class _Bar(tqdm):
    """A bar that stays hidden through its delay whoever asks it to redraw, and is wiped at the end
    whoever drew it. tqdm's ``write`` (:func:`print_progress`) redraws every bar, one still in its
    delay too, while ``close`` wipes only a bar tqdm's own loop drew: a quick stage's bar was left
    on the screen, and the next line ran on after it."""

    drawn = False

    def refresh(self, nolock=False, lock_args=None):
        started = getattr(self, "start_t", None)  # a bar of no delay is drawn before tqdm starts its clock
        if started is not None and time.time() < started + self.delay:
            return False
        drawn = super().refresh(nolock=nolock, lock_args=lock_args)
        self.drawn = self.drawn or bool(drawn)
        return drawn

    def close(self):
        if self.drawn and not self.disable and self.last_print_t < self.start_t + self.delay:
            self.clear()  # drawn by a write only: tqdm's close takes it for never drawn
        super().close()


def _columns(stream: TextIO) -> int:
    """The width the terminal behind ``stream`` reports (0 where it reports none, or is none)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return 0


def _terminal_handlers(*terminals: TextIO) -> list[logging.StreamHandler]:
    """Logging handlers that write to one of ``terminals`` (NeMo's, torch's); handlers with streams
    of their own (files, pytest's capture) stay as they are."""
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    return [handler for logger in loggers for handler in logger.handlers
            if isinstance(handler, logging.StreamHandler) and "stream" in vars(handler)
            and any(handler.stream is t for t in terminals)]


@contextmanager
def chatter_to(log: TextIO) -> Iterator[None]:
    """Inside: ``sys.stdout``, ``sys.stderr``, warnings and logging stream handlers write to
    ``log``; ``tool_out()``/``tool_err()`` to the streams that were current on entry. On exit every
    handler is pointed back (those made inside, which took ``log``, at the terminal's stderr)."""
    out, err = sys.stdout, sys.stderr
    previous = dict(_streams)
    moved = {handler: handler.stream for handler in _terminal_handlers(out, err, sys.__stdout__, sys.__stderr__)}
    for handler in moved:
        handler.setStream(log)
    _streams.update(out=out, err=err)
    sys.stdout = sys.stderr = log
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
        _streams.clear()
        _streams.update(previous)
        for handler, stream in moved.items():
            handler.setStream(stream)
        for handler in _terminal_handlers(log):  # made inside, on the log: to the terminal from now on
            handler.setStream(err)
        log.flush()
