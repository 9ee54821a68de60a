"""The tool's progress bars: on a terminal only, and gone when their stage ends or fails."""

from __future__ import annotations

import io
import re
import sys
import time

import pytest

from infra import console


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fail_in_stage() -> None:
    for _ in console.progress_bar("stage", "item")([1, 2], 2):
        raise ValueError("the stage failed")


def test_a_bar_is_cleared_when_its_stage_fails_so_the_error_starts_its_own_line(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(console, "BAR_DELAY_SECONDS", 0)
    with pytest.raises(ValueError):
        _fail_in_stage()
    shown = terminal.getvalue()
    assert "stage:   0%" in shown and shown.endswith("\r")  # drawn, then wiped back to the line's start


def test_no_bar_off_a_terminal(monkeypatch):
    """A log or a pipe gets no carriage returns: an error there stays one line."""
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    monkeypatch.setattr(console, "BAR_DELAY_SECONDS", 0)
    with pytest.raises(ValueError):
        _fail_in_stage()
    assert pipe.getvalue() == ""


def _stage_with_progress_lines(items: int, seconds_each: float = 0.0) -> None:
    for i in console.progress_bar("stage", "item")(range(items), items):
        time.sleep(seconds_each)
        console.print_progress(f"[{i + 1}/{items}] done")


def test_progress_lines_in_a_quick_stage_show_no_bar(monkeypatch):
    """tqdm redraws every bar after a ``write``, one still inside its delay too; that bar, never
    drawn by tqdm's own loop, was not wiped at the end, and the next line ran on after it
    (``convert`` from a warm cache: ``convert:   0%| 0/7 [...]wrote 7 package(s)``)."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _stage_with_progress_lines(3)
    shown = terminal.getvalue()
    assert "stage:" not in shown
    assert shown.rstrip(" \r").endswith("[3/3] done\n")


def test_a_bar_drawn_after_its_delay_is_wiped_when_the_stage_ends(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(console, "BAR_DELAY_SECONDS", 0)
    _stage_with_progress_lines(3)
    shown = terminal.getvalue()
    assert "stage:" in shown
    last_bar = shown.rindex("stage:")
    assert "\r" in shown[last_bar:] and shown.endswith("\r")  # the last drawing wiped back to the line's start


def test_a_bar_counts_each_item_once_when_progress_lines_come_quickly(monkeypatch):
    """A redraw between two quick items must not leave tqdm's loop behind on the count: it then
    added its whole count again at each item (``quantize``'s bar read 29 of 9 variants)."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(console, "BAR_DELAY_SECONDS", 0)
    _stage_with_progress_lines(4, seconds_each=0.15)  # past tqdm's 0.1 s between two drawings
    counts = re.findall(r"stage:[^\r\n]*?(\d+)(/4|item)", terminal.getvalue())
    assert counts and all(int(n) <= 4 and of == "/4" for n, of in counts), counts
