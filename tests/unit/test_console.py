"""The tool's progress bars: on a terminal only, and gone when their stage ends or fails."""

from __future__ import annotations

import io
import sys

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
