"""Fixtures of the runtime tests: single-op MIL programs for the executor."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil import Function, Program, types

from runtimes.mil import MILModel


@pytest.fixture(scope="session")
def run_mil():
    """``run_mil(build, inputs, opset="iOS17")``: build a one-function program whose inputs are
    ``inputs`` (name -> array; their dtypes become the input types), run it on the executor and
    return its outputs as a list."""
    def run(build, inputs: dict[str, np.ndarray], opset: str = "iOS17"):
        specs = {name: mb.placeholder(shape=value.shape, dtype=types.numpy_type_to_builtin_type(value.dtype))
                 for name, value in inputs.items()}
        with Function(specs, getattr(ct.target, opset)) as function:
            outputs = build(**function.inputs)
            outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
            function.set_outputs(outputs)
        program = Program()
        program.add_function("main", function)
        names = [v.name for v in outputs]
        result = MILModel(program).predict(inputs)
        return [result[name] for name in names]

    return run
