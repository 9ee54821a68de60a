"""Every operation coremltools defines for the iOS15–iOS18 opsets has a kernel in the executor,
unless it is listed below with the reason it cannot be done."""

from __future__ import annotations

import coremltools as ct
import pytest
from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

from runtimes.mil.model import implemented_operations

OPSETS = ("iOS15", "iOS16", "iOS17", "iOS18")

# op type -> why the executor cannot run it. Empty: every op of these opsets has a kernel. An op
# coremltools adds later fails the test below until it gets a kernel or a line here saying why not.
EXCEPTIONS: dict[str, str] = {}


def registered_operations(opset: str) -> set[str]:
    """The op types coremltools' registry defines for ``opset``."""
    target = getattr(ct.target, opset)
    return {name for name, versions in SSAOpRegistry.core_ops.items() if target in versions}


@pytest.mark.parametrize("opset", OPSETS)
def test_every_registered_operation_has_a_kernel(opset):
    missing = registered_operations(opset) - implemented_operations() - set(EXCEPTIONS)
    assert not missing, f"{opset}: no kernel for {sorted(missing)}; add one, or an entry to EXCEPTIONS saying why"


def test_exceptions_are_current():
    """An excepted op that now has a kernel, or that no opset defines, is a stale line."""
    registered = set().union(*(registered_operations(opset) for opset in OPSETS))
    stale = {op for op in EXCEPTIONS if op in implemented_operations() or op not in registered}
    assert not stale, f"stale EXCEPTIONS entries: {sorted(stale)}"
