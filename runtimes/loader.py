"""Loading exported packages on a backend: one predictor per package, held within a memory budget."""

from __future__ import annotations

import gc
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from runtimes.base import Predictor, package_size, resolve_backend
from runtimes.coreml import CoreMLModel
from runtimes.mil import MILModel


def load_predictor(package, backend: str = "auto", compute_units: str = "CPU_ONLY") -> Predictor:
    """A predictor for an exported package (a path or a ``coremltools.models.MLModel``)."""
    backend = resolve_backend(backend)
    if backend == "coreml":
        return CoreMLModel(package, compute_units=compute_units)
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

    def release(self) -> None:
        """Drop every predictor held: for work that needs the memory and none of them (a
        quantization sweep compressing its next variant)."""
        if self._held:
            self._held.clear()
            gc.collect()  # an executor's program is a graph of cycles: free its weights now

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
            size = package_size(Path(package))
        self._held[key] = (predictor, int(size))
        if self.held_bytes > self.budget_bytes:
            while len(self._held) > 1 and self.held_bytes > self.budget_bytes:
                self._held.popitem(last=False)
            gc.collect()  # an executor's program is a graph of cycles: free its weights now
        return predictor
