"""A set of Core ML packages to check, whoever wrote them.

Another converter's files follow the same I/O contract under other names: ``Encoder.mlpackage``,
``parakeet_encoder.mlpackage``, ``MelEncoder.mlmodelc``. :func:`find_packages` matches files to
components by name (case, separators and prefixes ignored; the longest component name wins, so
``MelEncoder`` is the mel_encoder, not the encoder); ``NAME=PATH`` settles anything else.
:func:`check_contract` reads each package's inputs and outputs from its own description and holds
them to the contract (``exporters.components``) before anything runs. :func:`provenance` says
where the packages came from, so a report about someone else's export is labelled as such.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from exporters.components import COMPONENTS, STREAMING_COMPONENTS, ModelDims, StreamingDims
from infra.errors import UserError
from runtimes.base import InputSpec, PackageError, compiled_interface, input_spec, package_size, program_precision

PACKAGE_SUFFIXES = (".mlpackage", ".mlmodelc")
# where compare and evaluate write about a package set (whose own folder may be read-only)
DEFAULT_REPORT_DIR = Path("parakeet_coreml_report")
DEFAULT_CONVERT_DIR = Path("parakeet_coreml")  # the convert folder quantize reads when given none
METADATA = "metadata.json"  # what convert writes beside its packages, and the reports extend
KNOWN = COMPONENTS | STREAMING_COMPONENTS  # what a package can be: an offline component or a streaming one
# the description's user-defined metadata worth carrying into the report
PROVENANCE_KEYS = ("com.github.apple.coremltools.version", "com.github.apple.coremltools.source",
                   "com.github.apple.coremltools.source_dialect")


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def component_of(path: Path) -> str | None:
    """The component a file's name names, or None: the longest component name inside the name."""
    stem = _key(Path(path).name.removesuffix(Path(path).suffix))
    named = [name for name in KNOWN if _key(name) in stem]
    return max(named, key=len) if named else None


def parse_named(texts: list[str]) -> dict[str, Path]:
    """``--component NAME=PATH`` options: component -> path."""
    named = {}
    for text in texts:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--component {text!r}: expected NAME=PATH, e.g. encoder=models/Encoder.mlpackage")
        if name not in KNOWN:
            raise UserError(f"--component {text!r}: unknown component {name!r}; expected one of: "
                              f"{', '.join(KNOWN)}")
        if name in named:
            raise UserError(f"--component: {name} is given twice ({named[name]}, {path})")
        if not Path(path).exists():
            raise UserError(f"--component {text!r}: no such package {path}")
        named[name] = Path(path)
    return named


def find_packages(directory: Path | None, named: dict[str, Path]) -> tuple[dict[str, Path], list[str]]:
    """Component -> package, and the files of ``directory`` that name no component. A component
    named by two files (other than an .mlpackage beside its compiled .mlmodelc, where the
    .mlpackage is taken) is an error unless ``named`` settles it."""
    found: dict[str, list[Path]] = {}
    unmatched = []
    if directory is not None:
        if not directory.is_dir():
            raise UserError(f"--packages {directory}: not a directory; expected a folder of .mlpackage or "
                              ".mlmodelc packages")
        for path in sorted(directory.iterdir()):
            if path.suffix not in PACKAGE_SUFFIXES:
                continue
            component = component_of(path)
            if component is None:
                unmatched.append(path.name)
            else:
                found.setdefault(component, []).append(path)
    packages = {}
    for component, paths in found.items():
        if component in named:
            continue
        sources = [p for p in paths if p.suffix == ".mlpackage"] or paths
        if len(sources) > 1:
            raise UserError(f"--packages {directory}: {', '.join(p.name for p in sources)} all name {component}; "
                              f"say which with --component {component}=PATH")
        packages[component] = sources[0]
    packages.update(named)
    if not packages:
        raise UserError(f"--packages {directory}: no package names a component ({', '.join(KNOWN)}); "
                          f"found {', '.join(unmatched) or 'no .mlpackage or .mlmodelc'}; name them with "
                          "--component NAME=PATH")
    return {name: packages[name] for name in KNOWN if name in packages}, unmatched


@dataclass(frozen=True)
class Interface:
    """What a package declares: its inputs (with their flexible shapes), outputs (dtype and
    shape, None where unknown) and metadata."""

    inputs: tuple[InputSpec, ...]
    outputs: dict[str, tuple[str, tuple[int, ...] | None]]
    metadata: dict
    precision: str | None = None  # what the program computes in (``runtimes.base.program_precision``)


def _read_mlpackage(path: Path) -> Interface:
    import coremltools as ct  # lazy: coremltools imports torch; only package sets are read with it

    try:
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as error:
        raise PackageError(f"{path}: not a readable Core ML package ({type(error).__name__}: {error})") from None
    description = spec.description
    outputs = {}
    for feature in description.output:
        array = feature.type.multiArrayType
        dtype = input_spec(feature).dtype.name if feature.type.WhichOneof("Type") == "multiArrayType" else "?"
        outputs[feature.name] = (dtype, tuple(int(d) for d in array.shape) or None)
    meta = description.metadata
    metadata = {"author": meta.author or None, "version": meta.versionString or None,
                "short_description": meta.shortDescription or None, "specification_version": spec.specificationVersion,
                **{k: meta.userDefined[k] for k in PROVENANCE_KEYS if k in meta.userDefined}}
    return Interface(tuple(input_spec(f) for f in description.input), outputs,
                     {k: v for k, v in metadata.items() if v is not None},
                     program_precision(spec)["compute_precision"])


def _read_mlmodelc(path: Path) -> Interface | None:
    found = compiled_interface(path)
    if found is None:
        return None
    inputs, outputs, metadata = found
    return Interface(inputs, outputs, {k: v for k, v in metadata.items() if v is not None})


def read_interface(path: Path) -> Interface | None:
    """The package's declared interface (None: a compiled bundle that does not say)."""
    return _read_mlmodelc(path) if path.suffix == ".mlmodelc" else _read_mlpackage(path)


def contract_differences(name: str, interface: Interface, dims: ModelDims | StreamingDims) -> list[str]:
    """How a package's declared interface departs from the contract's: input names, dtypes,
    ranks and shapes (a flexible input must take the contract's shape); each contract output by
    name, dtype and rank. Extra outputs are no difference. ``dims``: a streaming package's chunk
    sizes, an offline one's window sizes."""
    component = KNOWN[name]
    problems = []
    declared = {s.name: s for s in interface.inputs}
    for spec in component.inputs(dims):
        got = declared.pop(spec.name, None)
        if got is None:
            problems.append(f"input {spec.name!r} missing")
            continue
        if got.dtype.name != spec.dtype:
            problems.append(f"input {spec.name!r} is {got.dtype.name}, expected {spec.dtype}")
        if len(got.shape) != len(spec.shape):
            problems.append(f"input {spec.name!r} has rank {len(got.shape)}, expected {len(spec.shape)}")
        elif not got.allows(spec.shape):
            problems.append(f"input {spec.name!r} takes {got.allowed()}, not the contract's {list(spec.shape)}")
    problems += [f"unexpected input {n!r}" for n in declared]
    for spec in component.outputs(dims):
        if spec.name not in interface.outputs:
            problems.append(f"output {spec.name!r} missing")
            continue
        dtype, shape = interface.outputs[spec.name]
        if dtype != spec.dtype:
            problems.append(f"output {spec.name!r} is {dtype}, expected {spec.dtype}")
        if shape is not None and len(shape) != len(spec.shape):
            problems.append(f"output {spec.name!r} has rank {len(shape)}, expected {len(spec.shape)}")
        elif shape is not None and spec.name == "ctc_logits" and shape[-1] != spec.shape[-1]:
            problems.append(f"output 'ctc_logits' has {shape[-1]} classes, expected {spec.shape[-1]} (the model's "
                            f"vocabulary of {spec.shape[-1] - 1} pieces and the blank)")
    return problems


def settle_by_interface(packages: dict[str, Path], interfaces: dict[str, Interface | None], dims: ModelDims
                        ) -> list[str]:
    """Rename in place a package whose name says one offline component but whose interface is
    exactly another's that the set lacks (the 110M hybrid's release names its fused front end and
    encoder ``Preprocessor.mlpackage``); one note per renamed package."""
    notes = []
    for name, interface in list(interfaces.items()):
        if name not in COMPONENTS or interface is None or not contract_differences(name, interface, dims):
            continue
        fits = [other for other in COMPONENTS if other not in packages
                and not contract_differences(other, interface, dims)]
        if len(fits) == 1:
            packages[fits[0]], interfaces[fits[0]] = packages.pop(name), interfaces.pop(name)
            notes.append(f"{packages[fits[0]].name}: named like the {name} but has the {fits[0]}'s inputs and "
                         f"outputs; checked as the {fits[0]}")
    return notes


def check_family(packages: dict[str, Path], dims: ModelDims, model: str) -> None:
    """A package of a component the model's family has not (a CTC head for a TDT model) is refused."""
    family = dims.family
    foreign = [name for name in packages if name in COMPONENTS and not COMPONENTS[name].fits(dims)]
    if foreign:
        raise UserError(f"{', '.join(f'{n} ({packages[n].name})' for n in foreign)}: {model} is of the "
                        f"{family.name} family ({family.summary}), which has no {', '.join(foreign)}; its "
                        f"components: {', '.join(c.name for c in family.components())}")


def check_contract(packages: dict[str, Path], dims: ModelDims, streaming: StreamingDims | None = None,
                   interfaces: dict[str, Interface | None] | None = None) -> dict[str, Interface | None]:
    """Every package's interface (read here unless given), or one ``UserError`` listing what
    differs from the contract in each package that does; the streaming packages are held to the
    ``streaming`` chunk's sizes."""
    interfaces = interfaces or {name: read_interface(path) for name, path in packages.items()}
    problems = {name: contract_differences(name, interface, streaming if name in STREAMING_COMPONENTS else dims)
                for name, interface in interfaces.items() if interface is not None}
    bad = {name: found for name, found in problems.items() if found}
    if bad:
        raise UserError("the packages do not follow the I/O contract (README, Components): " + "; ".join(
            f"{name} ({packages[name].name}): " + ", ".join(found) for name, found in bad.items()))
    return interfaces


def provenance(directory: Path | None, packages: dict[str, Path], interfaces: dict[str, Interface | None],
               unmatched: list[str]) -> dict:
    """Where the packages came from, for the report: the folder, each component's file, size and
    own metadata (author, version, the coremltools that wrote it), and the files left out."""
    return {
        "directory": str(directory.resolve()) if directory is not None else None,
        "written_by": "another converter or an earlier export (checked as found, not exported here)",
        "components": {
            name: {"path": str(path.resolve()), "file": path.name, "size_bytes": package_size(path),
                   "flexible_inputs": [str(s) for s in interfaces[name].inputs if s.flexible]
                   if interfaces[name] is not None else None,
                   "metadata": interfaces[name].metadata if interfaces[name] is not None else None}
            for name, path in packages.items()},
        "unmatched_files": unmatched,
    }
