"""Every reach into a dependency's private or internal parts, in one place.

Each function below wraps one symbol that is not its library's public API and says why the
project needs it. ``tests/unit/test_compat.py`` fails the day a pinned version moves (the
installed versions must be those of :data:`CHECKED_ON`: read each reach again, then update the
table) or a symbol of :data:`REACHES` disappears. Imports are lazy: the executor (``runtimes.mil``)
uses some of these and must load without torch, which coremltools imports.
"""

from __future__ import annotations

from contextlib import contextmanager

# The versions every reach below was read against.
CHECKED_ON = {"coremltools": "9.0", "torch": "2.13.0", "nemo_toolkit": "3.0.0"}

# (module, attribute path) of each reach, resolved by the test; an instance attribute set in a
# constructor is named with the class and checked in the constructor's source.
REACHES = (
    ("coremltools.converters.mil.frontend.torch.ops", "_get_inputs"),
    ("coremltools.converters.mil.frontend.torch.ops", "_cast"),
    ("coremltools.converters.mil.frontend.torch.torch_op_registry", "_TORCH_OPS_REGISTRY.name_to_func_mapping"),
    ("coremltools.converters.mil.mil.passes.pass_registry", "PASS_REGISTRY.passes"),
    ("coremltools._deps", "kmeans1d.cluster"),
    ("coremltools.optimize.coreml._quantization_passes", "palettize_weights._get_lut_and_indices"),
    ("coremltools.converters.mil._deployment_compatibility", "AvailableTarget"),
    ("coremltools.libmilstoragepython", "_BlobStorageReader"),
    ("coremltools.converters.mil.frontend.milproto.load", "_load_function"),
    ("coremltools.converters.mil.frontend.milproto.load", "_load_program_spec_attributes"),
    ("coremltools.converters.mil.frontend.milproto.helper", "get_proto_dim"),
    ("torch", "ops.mkldnn._linear_pointwise"),
    ("coremltools.libcoremlpython", "_MLModelProxy"),  # macOS only: the Core ML bindings
)
INSTANCE_REACHES = (
    ("coremltools.models.model", "MLModel", "_mil_program"),
    ("nemo.collections.asr.losses.rnnt", "RNNTLoss", "_loss"),
)


# -- coremltools' torch frontend: the overrides of exporters.torch_compat ------------------------

def torch_op_inputs(context, node, expected: int) -> list:
    """A torch node's converted inputs: what coremltools' own op conversions read them with."""
    from coremltools.converters.mil.frontend.torch import ops  # lazy: coremltools imports torch

    return ops._get_inputs(context, node, expected=expected)


def torch_op_cast(context, node, dtype, dtype_name: str) -> None:
    """coremltools' own ``aten::int``/``aten::bool`` conversion, for the cases the override leaves."""
    from coremltools.converters.mil.frontend.torch import ops  # lazy: as above

    ops._cast(context, node, dtype, dtype_name)


def torch_op_registry() -> dict:
    """Name -> conversion function of coremltools' torch frontend: read to restore what an override
    replaced, since ``register_torch_op`` has no way to unregister."""
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY  # lazy: as above

    return _TORCH_OPS_REGISTRY.name_to_func_mapping


def pass_registry() -> dict:
    """Pass id -> pass of coremltools' MIL pipeline, read to restore what an override replaced."""
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY  # lazy: as above

    return PASS_REGISTRY.passes


# -- coremltools' programs and weights: the executor ---------------------------------------------

def mil_program(mlmodel):
    """The pymil program an ``MLModel`` was converted from or compressed to: coremltools keeps it
    but exposes no accessor (the op origins and the compressed ops are read from it)."""
    return mlmodel._mil_program


def deployment_target_name(target) -> str:
    """The iOS name (``"iOS17"``) of a spec's deployment target number."""
    from coremltools.converters.mil._deployment_compatibility import AvailableTarget  # lazy: as above

    return AvailableTarget(target).name


def blob_storage_reader(path: str):
    """coremltools' reader of a weight file, for the sub-byte types the executor does not unpack."""
    from coremltools.libmilstoragepython import _BlobStorageReader  # lazy: as above

    return _BlobStorageReader(path)


def load_mil_function(context, function, specification_version: int):
    """One function of an ML Program proto as pymil: what ``milproto.load`` does per function, used
    with the executor's own weight readers in ``context``."""
    from coremltools.converters.mil.frontend.milproto import load as milproto  # lazy: as above

    return milproto._load_function(context, function, specification_version)


def load_program_attributes(context, program_spec, program) -> None:
    """The program-level attributes ``milproto.load`` sets after the functions."""
    from coremltools.converters.mil.frontend.milproto import load as milproto  # lazy: as above

    milproto._load_program_spec_attributes(context, program_spec, program)


@contextmanager
def variadic_dimensions_read_as_unknown():
    """coremltools' program reader refuses a variadic dimension ("not yet implemented"), which an
    op of data-dependent rank declares (``fill`` of a shape given at run time, in an fp16 program
    its cast). The executor takes every shape from the values it computes, so for the duration
    of a load such a dimension reads as coremltools' own variadic symbol (any number of dimensions,
    of any size), and coremltools' reader is restored after."""
    from coremltools.converters.mil.frontend.milproto import helper  # lazy: as above
    from coremltools.converters.mil.mil.program import get_new_variadic_symbol  # lazy: as above

    strict = helper.get_proto_dim

    def dimension(dim):
        if dim.WhichOneof("dimension") != "constant" and dim.unknown.variadic:
            return get_new_variadic_symbol()
        return strict(dim)

    helper.get_proto_dim = dimension
    try:
        yield
    finally:
        helper.get_proto_dim = strict


def core_ml_bindings_missing() -> str | None:
    """Why coremltools' Core ML bindings cannot be loaded here (a wheel built without them), or
    None: coremltools has no public probe, and loading a package is the first place it would say."""
    try:
        from coremltools.libcoremlpython import _MLModelProxy  # noqa: F401  # lazy: a probe of the bindings
    except ImportError as error:
        return str(error)
    return None


# -- coremltools' palettizer: k-means tables computed once per weight ----------------------------

def kmeans1d():
    """coremltools' bundled 1-D k-means, the one its palettizer uses: the same clusters."""
    from coremltools._deps import kmeans1d as bundled  # lazy: as above

    return bundled


def palettize_lut_and_indices(values, nbits: int):
    """coremltools' own per-tensor k-means palette of ``values`` (lookup table, indices)."""
    from coremltools.optimize.coreml._quantization_passes import palettize_weights  # lazy: as above

    return palettize_weights._get_lut_and_indices(values, "KMEANS", nbits, None)


# -- torch: oneDNN's inner product ----------------------------------------------------------------

def onednn_linear_pointwise(torch):
    """oneDNN's fp32 inner product (what torch's compiler fuses linears into), or None where this
    torch build has none: plain ``F.linear`` runs on MKL, about twice as slow on AMD processors."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without the op
        return None


# -- NeMo: the transducer loss the test model trains with -------------------------------------------

def set_transducer_loss(model, loss) -> None:
    """Put ``loss`` in the place of a NeMo RNNT/TDT model's loss function: NeMo builds its TDT loss
    for CUDA only, and the test model trains on the CPU."""
    model.loss._loss = loss
