"""What every backend shares: the ``predict`` contract, input checking, backend choice and the
compute units. A leaf module: numpy and the standard library only."""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

BACKENDS = ("auto", "coreml", "mil")
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
__all__ = ["BACKENDS", "COMPUTE_UNITS", "BackendUnavailable", "InputMismatch", "InputSpec", "PackageError",
           "check_inputs", "describe_backend", "package_size", "resolve_backend"]


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this host; the message says why."""


class PackageError(ValueError):
    """A package that cannot be read: the message names it and what is wrong with it."""


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


def package_size(package: Path) -> int:
    """Bytes of an ``.mlpackage`` directory."""
    return sum(f.stat().st_size for f in Path(package).rglob("*") if f.is_file())


def resolve_backend(name: str) -> str:
    """``auto`` is Core ML on macOS and the MIL executor elsewhere."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of: {', '.join(BACKENDS)}")
    if name == "auto":
        return "coreml" if platform.system() == "Darwin" else "mil"
    return name


def describe_backend(backend: str) -> str:
    """What produced a backend's numbers, for every report that shows them."""
    if backend == "coreml":
        return "Apple's Core ML runtime"
    return "this project's MIL executor (runtimes/mil), not Core ML"
