"""Find where an exported program first departs from its Torch module.

Torch side: a forward hook on every submodule records its output. Program side: the executor
returns every intermediate variable, and the export's op origins (``exporters.convert.op_origins``)
say which Torch module each op came from, by TorchScript scope (see ``scope_paths``). A module's
output is matched to the last op, in program order, of that module or its submodules whose value
has the module output's shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from runtimes.mil import MILModel


@dataclass(frozen=True)
class Divergence:
    variable: str  # the program variable
    op_type: str
    module: str  # the Torch module it came from ("" for the wrapper itself)
    module_type: str  # its class
    max_abs: float
    relative: float  # max_abs / max |torch output|

    def __str__(self) -> str:
        return (f"{self.variable} ({self.op_type}) from {self.module or '<top>'} [{self.module_type}]: "
                f"max |error| {self.max_abs:.3g}, {self.relative:.3g} of the output's scale")


def torch_module_outputs(module, args: Sequence) -> dict[str, np.ndarray]:
    """Each submodule's output (its first tensor) for one forward pass, by module path."""
    captured: dict[str, np.ndarray] = {}

    def hook(path):
        def record(_module, _inputs, output):
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(tensor, torch.Tensor):
                captured[path] = tensor.detach().float().numpy().copy()
        return record

    handles = [m.register_forward_hook(hook(path)) for path, m in module.named_modules() if path]
    try:
        with torch.no_grad():
            module(*args)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def scope_paths(module) -> dict[str, str]:
    """TorchScript scope path -> module path. Scopes skip modules that are never called:
    containers (``ModuleList``, ``ModuleDict``: ``encoder.layers.0`` appears as ``encoder.0``)
    and modules whose methods, not ``forward``, are called (NeMo's joint: ``joint.enc`` appears
    as ``enc``). A scope that is a unique tail of a module path maps to that path."""
    containers = (torch.nn.ModuleList, torch.nn.ModuleDict)
    paths = {}
    for path, _ in module.named_modules():
        parent, kept = module, []
        for part in path.split(".") if path else []:
            parent = parent.get_submodule(part)
            if not isinstance(parent, containers):
                kept.append(part)
        paths[".".join(kept)] = path
    tails: dict[str, set[str]] = {}
    for scope, path in paths.items():
        parts = scope.split(".")
        for start in range(1, len(parts)):
            tails.setdefault(".".join(parts[start:]), set()).add(path)
    for tail, found in tails.items():
        if tail not in paths and len(found) == 1:
            paths[tail] = found.pop()
    return paths


def compare_modules(program: MILModel, origins: Mapping[str, str], module, inputs: Mapping[str, np.ndarray],
                    input_order: Sequence[str]) -> list[Divergence]:
    """Every Torch module matched to a program variable, with its error, in program order."""
    values = program.predict(inputs, intermediates="all")
    reference = torch_module_outputs(module, [torch.from_numpy(inputs[name]) for name in input_order])
    paths = scope_paths(module)
    last_by_module: dict[str, list] = {}
    for position, step in enumerate(program.steps):
        path = paths.get(origins.get(step.name))
        parts = path.split(".") if path else []
        for depth in range(1, len(parts) + 1):  # an op belongs to its module and every ancestor
            ancestor = ".".join(parts[:depth])
            if ancestor in reference:
                last_by_module.setdefault(ancestor, []).append((position, step))
    found = []
    for path, steps in last_by_module.items():
        want = reference[path]
        for position, step in reversed(steps):
            got = values.get(step.name)
            if got is None or got.shape != want.shape or not np.issubdtype(got.dtype, np.floating):
                continue
            with np.errstate(all="ignore"):
                max_abs = float(np.nanmax(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
                scale = float(np.nanmax(np.abs(want))) if want.size else 0.0
            module_type = type(module.get_submodule(path)).__name__
            relative = max_abs / scale if scale > 0 else max_abs
            found.append((position, Divergence(step.name, step.op_type, path, module_type, max_abs, relative)))
            break
    # program order; where a module and its parent end on the same op, the innermost first
    return [d for _, d in sorted(found, key=lambda item: (item[0], -item[1].module.count(".")))]


def first_divergences(program: MILModel, origins: Mapping[str, str], module, inputs: Mapping[str, np.ndarray],
                      input_order: Sequence[str], threshold: float, limit: int = 5) -> list[Divergence]:
    """The first ``limit`` modules, in program order, whose relative error exceeds ``threshold``."""
    diverged = [d for d in compare_modules(program, origins, module, inputs, input_order)
                if not d.relative <= threshold]  # NaN counts as diverged
    return diverged[:limit]
