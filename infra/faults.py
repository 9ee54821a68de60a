"""Fault injection for the fault tests: ``PARAKEET_COREML_FAULT=POINT:N:ACTION`` makes the N-th
pass through ``fault_point(POINT)`` in this process raise ``OSError`` (``raise``), deliver
SIGTERM (``term``) or SIGKILL (``kill``) to the process. Unset, it does nothing."""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

ENV_VAR = "PARAKEET_COREML_FAULT"
_passes: Counter = Counter()


def fault_point(name: str) -> None:
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    point, count, action = spec.split(":")
    if point != name:
        return
    _passes[name] += 1
    if _passes[name] != int(count):
        return
    if action == "raise":
        raise OSError(errno.EIO, f"injected fault at {name}")
    os.kill(os.getpid(), {"term": signal.SIGTERM, "kill": signal.SIGKILL}[action])
