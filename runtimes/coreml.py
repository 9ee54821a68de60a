"""Apple's Core ML runtime through coremltools; macOS only."""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from infra.compat import core_ml_bindings_missing
from runtimes.base import (
    COMPUTE_UNITS,
    BackendUnavailable,
    InputMismatch,
    PackageError,
    check_inputs,
    compiled_interface,
    input_spec,
)


def unavailable_reason() -> str | None:
    """Why Core ML cannot run here, or None when it can."""
    if platform.system() != "Darwin":
        return f"Apple's Core ML runtime exists only on macOS; this host runs {platform.system()}"
    missing = core_ml_bindings_missing()
    return f"coremltools was installed without its Core ML bindings ({missing})" if missing else None


class CoreMLModel:
    """An exported package compiled and loaded by Core ML on the chosen compute units."""

    backend = "coreml"

    def __init__(self, package, compute_units: str = "CPU_ONLY"):
        reason = unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
        if compute_units not in COMPUTE_UNITS:
            raise ValueError(f"unknown compute units {compute_units!r}; expected one of: {', '.join(COMPUTE_UNITS)}")
        import coremltools as ct  # lazy: coremltools imports torch; only Core ML runs need it

        self.compute_units = compute_units
        path = Path(package if isinstance(package, (str, os.PathLike)) else package.package_path)
        units = getattr(ct.ComputeUnit, compute_units)
        if path.suffix == ".mlmodelc":  # a compiled bundle, as apps download them
            interface = compiled_interface(path)
            if interface is None:
                raise PackageError(f"{path}: a compiled bundle without the metadata.json that names its inputs "
                                   "and outputs; recompile it with Xcode's or coremltools' compiler")
            self.model = ct.models.CompiledMLModel(str(path), compute_units=units)
            self.input_specs, outputs, _ = interface
            self.state_specs = ()  # a compiled bundle's metadata.json does not say; Core ML refuses a stateless call
            self.output_names = list(outputs)
            return
        if not (path / "Manifest.json").is_file():
            raise FileNotFoundError(f"{path} is not an .mlpackage (no Manifest.json)")
        self.model = ct.models.MLModel(str(path), compute_units=units)
        description = self.model.get_spec().description
        self.input_specs = tuple(input_spec(feature) for feature in description.input)
        self.state_specs = tuple(input_spec(feature) for feature in description.state)
        self.output_names = [feature.name for feature in description.output]

    def make_state(self):
        """Core ML's fresh states (``MLState``, macOS 15+) for a stateful package: pass it to
        ``predict`` call after call; ``read_state`` and ``write_state`` reach its buffers."""
        return self.model.make_state()

    def predict(self, inputs: Mapping[str, np.ndarray], state=None) -> dict[str, np.ndarray]:
        arrays = check_inputs(self.input_specs, inputs)
        if self.state_specs and state is None:
            raise InputMismatch(f"the package has states ({', '.join(s.name for s in self.state_specs)}): "
                                "pass state=predictor.make_state()")
        outputs = self.model.predict(arrays, state=state) if state is not None else self.model.predict(arrays)
        return {name: np.asarray(outputs[name]) for name in self.output_names}


def compile_and_place(package, compute_units: str = "ALL") -> dict:
    """Compile time of ``.mlpackage`` to ``.mlmodelc`` (ms), and where Core ML plans to run each
    operation: op counts per preferred device from ``MLComputePlan`` (macOS 14.4+)."""
    reason = unavailable_reason()
    if reason:
        raise BackendUnavailable(reason)

    import coremltools as ct  # lazy: coremltools imports torch; only Core ML runs need it
    from coremltools.models.compute_plan import MLComputePlan  # lazy: as above
    from coremltools.models.utils import compile_model  # lazy: as above

    path = package if isinstance(package, (str, os.PathLike)) else package.package_path
    start = time.perf_counter()
    compiled = compile_model(str(path))
    compile_ms = (time.perf_counter() - start) * 1e3
    try:
        try:
            plan = MLComputePlan.load_from_path(compiled, compute_units=getattr(ct.ComputeUnit, compute_units))
        except Exception as error:  # older macOS: the plan API is missing, the compile time is still valid
            return {"compile_ms": compile_ms, "placement": None, "placement_error": f"{type(error).__name__}: {error}"}
        devices = Counter(device or "none (constants)" for _, device in _planned_devices(plan))
        return {"compile_ms": compile_ms, "placement": dict(devices)}
    finally:
        shutil.rmtree(compiled, ignore_errors=True)


def _planned_devices(plan) -> list[tuple[str, str | None]]:
    """(first output's name, preferred device: "CPU", "GPU", "NeuralEngine", or None for a
    constant) of every op of every function of a compute plan, nested blocks included."""
    found = []

    def walk(block):
        for operation in block.operations:
            usage = plan.get_compute_device_usage_for_mlprogram_operation(operation)
            device = type(usage.preferred_compute_device).__name__ if usage is not None else None
            name = operation.outputs[0].name if operation.outputs else operation.operator_name
            found.append((name, device.removeprefix("ML").removesuffix("ComputeDevice") if device else None))
            for inner in operation.blocks:
                walk(inner)

    for function in plan.model_structure.program.functions.values():
        walk(function.block)
    return found


def compute_plan_devices(package, compute_units: str = "CPU_AND_NE") -> dict[str, str | None]:
    """Where Core ML's compute plan (macOS 14.4+) prefers to run each op of ``package``, by the
    op's first output name: what ``validation.neural_engine`` predicts, decided by Core ML."""
    reason = unavailable_reason()
    if reason:
        raise BackendUnavailable(reason)
    import coremltools as ct  # lazy: coremltools imports torch; only Core ML runs need it
    from coremltools.models.compute_plan import MLComputePlan  # lazy: as above
    from coremltools.models.utils import compile_model  # lazy: as above

    compiled = compile_model(str(package))
    try:
        plan = MLComputePlan.load_from_path(compiled, compute_units=getattr(ct.ComputeUnit, compute_units))
        return dict(_planned_devices(plan))
    finally:
        shutil.rmtree(compiled, ignore_errors=True)
