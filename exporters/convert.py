"""Trace one component wrapper and convert it to a Core ML ML Program."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import torch
from coremltools.converters.mil.mil.scope import ScopeSource

from exporters import torch_compat
from exporters.components import Component, ExportOptions, ModelDims, example_inputs
from exporters.compose import chain
from exporters.wrappers import wrapper


def _keeps_fp32(component: Component):
    """An fp16 op selector that leaves ops under ``component.fp32_scopes`` in fp32."""
    scopes = set(component.fp32_scopes)

    def selector(op) -> bool:
        names = op.scopes.get(ScopeSource.TORCHSCRIPT_MODULE_NAME, []) if hasattr(op, "scopes") else []
        return not (names and names[0] in scopes)

    return selector


def _compute_precision(component: Component, precision: str):
    if precision == "float32" or "*" in component.fp32_scopes:
        return ct.precision.FLOAT32
    if component.fp32_scopes:
        return ct.transform.FP16ComputePrecision(op_selector=_keeps_fp32(component))
    return ct.precision.FLOAT16


def convert_component(model, component: Component, dims: ModelDims, options: ExportOptions):
    """Trace ``component``'s wrapper on ``model`` and convert it; returns a ``ct.models.MLModel``."""
    module = wrapper(component.name, model)
    specs = component.inputs(dims)
    example = example_inputs(component, dims)
    args = tuple(torch.from_numpy(example[s.name]) for s in specs)
    with torch.no_grad():
        traced = torch.jit.trace(module, args, check_trace=False)
    target = getattr(ct.target, component.deployment_target(options.minimum_deployment_target))
    with torch_compat.overrides():
        return ct.convert(
            traced,
            inputs=[ct.TensorType(name=s.name, shape=_input_shape(component, s, dims, options),
                                  dtype=np.dtype(s.dtype).type) for s in specs],
            # Explicit output dtypes: an fp16 program would otherwise return fp16 arrays.
            outputs=[ct.TensorType(name=s.name, dtype=np.dtype(s.dtype).type) for s in component.outputs(dims)],
            states=[ct.StateType(wrapped_type=ct.TensorType(shape=s.shape, dtype=np.dtype(s.dtype).type), name=s.name)
                    for s in component.states(dims)] or None,
            convert_to="mlprogram",
            minimum_deployment_target=target,
            compute_precision=_compute_precision(component, options.compute_precision),
            compute_units=getattr(ct.ComputeUnit, options.compute_units),
            skip_model_load=True,
        )


def flexible_audio(component: Component, options: ExportOptions) -> bool:
    """Whether ``component``'s waveform takes 1 to a window of samples: the preprocessor's with
    ``flexible_audio``. The mel_encoder keeps the window: traced, its relative-position attention
    keeps the window's length, and on shorter audio it departs from NeMo (compare measured
    PSNR 30 dB on 1 s of speech), so a flexible mel_encoder would be a wrong export."""
    return options.flexible_audio and component.name == "preprocessor"


def _input_shape(component: Component, spec, dims: ModelDims, options: ExportOptions):
    """The contract's shape, or the flexible waveform's (``flexible_audio``)."""
    if flexible_audio(component, options) and spec.name == "audio_signal":
        return (1, ct.RangeDim(1, dims.max_audio_samples, default=dims.max_audio_samples))
    return spec.shape


def convert_chained(programs, component: Component, options: ExportOptions):
    """The converted programs of ``component.fuses`` chained into one package (``exporters.compose``):
    their ops as converted, so no pass runs again; returns a ``ct.models.MLModel`` and each
    part's renamed variables. Raises ``NotChainable`` where the programs cannot be chained."""
    program, renamed = chain(programs, [f"{name}_" for name in component.fuses])
    target = getattr(ct.target, component.deployment_target(options.minimum_deployment_target))
    mlmodel = ct.convert(program, convert_to="mlprogram", pass_pipeline=ct.PassPipeline.EMPTY,
                         # the parts' types as they are: no fp16 pass over the chained program
                         compute_precision=ct.precision.FLOAT32, minimum_deployment_target=target,
                         compute_units=getattr(ct.ComputeUnit, options.compute_units), skip_model_load=True)
    return mlmodel, renamed


def op_origins(program) -> dict[str, str]:
    """The TorchScript module scope each op came from: ``{first output name: "encoder.0.conv"}``.

    coremltools keeps the TorchScript module scope of every op it converts; the package itself
    does not, so the export records it beside the package for locating divergences later.
    """
    origins = {}
    for op in program.functions["main"].operations:
        names = op.scopes.get(ScopeSource.TORCHSCRIPT_MODULE_NAME) if op.op_type != "const" else None
        if not names:
            continue
        origins[op.outputs[0].name] = ".".join(names[:-1])  # the last name is the Torch value's
    return origins
