"""What every backend shares: the ``predict`` contract, input checking and backend choice."""

from __future__ import annotations

import gc
import os
import platform
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol

import numpy as np

from exporters.convert import COMPUTE_UNITS

BACKENDS = ("auto", "coreml", "mil")
__all__ = ["BACKENDS", "COMPUTE_UNITS", "BackendUnavailable", "InputMismatch", "InputSpec", "check_inputs",
           "LoadedPredictors", "describe_backend", "load_predictor", "resolve_backend"]


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this host; the message says why."""


class InputMismatch(ValueError):
    """Inputs that do not fit the program's declared inputs."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype.name}{list(self.shape)}"


class Predictor(Protocol):
    backend: str
    input_specs: tuple[InputSpec, ...]

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def check_inputs(specs: tuple[InputSpec, ...], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs as arrays, or an ``InputMismatch`` listing every problem and the expected inputs."""
    if not isinstance(inputs, Mapping):
        raise InputMismatch(f"inputs must be a dict of name -> array; got {type(inputs).__name__}. "
                            f"Expected: {', '.join(map(str, specs))}")
    expected = {s.name: s for s in specs}
    problems = [f"missing input {name!r}" for name in expected if name not in inputs]
    problems += [f"unexpected input {name!r}" for name in inputs if name not in expected]
    arrays = {}
    for name, spec in expected.items():
        if name not in inputs:
            continue
        value = inputs[name]
        if not isinstance(value, np.ndarray):
            problems.append(f"{name!r} is a {type(value).__name__}, not a numpy array")
            continue
        if value.dtype != spec.dtype:
            problems.append(f"{name!r} has dtype {value.dtype.name}, expected {spec.dtype.name}")
        if tuple(value.shape) != spec.shape:
            problems.append(f"{name!r} has shape {list(value.shape)}, expected {list(spec.shape)}")
        arrays[name] = value
    if problems:
        raise InputMismatch("; ".join(problems) + ". Expected inputs: " + ", ".join(map(str, specs)))
    return arrays


def resolve_backend(name: str) -> str:
    """``auto`` is Core ML on macOS and the MIL executor elsewhere."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of: {', '.join(BACKENDS)}")
    if name == "auto":
        return "coreml" if platform.system() == "Darwin" else "mil"
    return name


def describe_backend(backend: str) -> str:
    """What produced a backend's numbers, for every report that shows them."""
    return "Apple's Core ML runtime" if backend == "coreml" else "this project's MIL executor (runtimes/mil), not Core ML"


def load_predictor(package, backend: str = "auto", compute_units: str = "CPU_ONLY") -> Predictor:
    """A predictor for an exported package (a path or a ``coremltools.models.MLModel``)."""
    backend = resolve_backend(backend)
    if backend == "coreml":
        from runtimes.coreml import CoreMLModel

        return CoreMLModel(package, compute_units=compute_units)
    from runtimes.mil import MILModel

    return MILModel(package)


# Share of the host's memory the loaded predictors of one session may hold: a full-size encoder
# on the executor is 2.4 GB of fp32 weights, and a quantization sweep loads two per variant.
PREDICTOR_MEMORY_SHARE = 1 / 3


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class LoadedPredictors:
    """``loaded(package)``: the package's predictor, loaded once and kept while the predictors
    held fit ``budget_bytes``; past it the least recently used go. A predictor weighs its
    ``nbytes`` (the executor's weights in memory) or else its package's size on disk. The one
    just asked for always stays, however large."""

    def __init__(self, backend: str = "auto", compute_units: str = "CPU_ONLY", budget_bytes: int | None = None,
                 load: Callable[[Path], Predictor] | None = None):
        self.budget_bytes = int(physical_memory_bytes() * PREDICTOR_MEMORY_SHARE) if budget_bytes is None \
            else budget_bytes
        self._load = load or (lambda package: load_predictor(package, backend, compute_units))
        self._held: OrderedDict[str, tuple[Predictor, int]] = OrderedDict()

    @property
    def held_bytes(self) -> int:
        return sum(size for _, size in self._held.values())

    def __contains__(self, package) -> bool:
        return str(package) in self._held

    def __call__(self, package) -> Predictor:
        key = str(package)
        if key in self._held:
            self._held.move_to_end(key)
            return self._held[key][0]
        predictor = self._load(package)
        size = getattr(predictor, "nbytes", None)
        if size is None:
            from exporters.export import package_size

            size = package_size(Path(package))
        self._held[key] = (predictor, int(size))
        if self.held_bytes > self.budget_bytes:
            while len(self._held) > 1 and self.held_bytes > self.budget_bytes:
                self._held.popitem(last=False)
            gc.collect()  # an executor's program is a graph of cycles: free its weights now
        return predictor
