"""Export components of one model through the cache, and describe them in ``metadata.json``.

The model is loaded only when some component (or the model's facts) is missing from the cache.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from importlib.metadata import version
from pathlib import Path

import coremltools as ct

from exporters.components import (
    COMPONENTS,
    HEADS,
    PORT_DESCRIPTIONS,
    STREAMING_COMPONENTS,
    Component,
    ExportOptions,
    ModelDims,
    StreamingDims,
    get_components,
    streaming_components,
)
from exporters.compose import NotChainable
from exporters.convert import convert_chained, convert_component, flexible_audio, op_origins
from exporters.sources import ModelSource
from exporters.streaming import STREAMING_MODE, chunk_sizes, describe_context, is_cache_aware, streaming_dims
from exporters.wrappers import model_dims
from infra.cache import Entry, ExportCache, cache_key, tool_versions
from infra.compat import mil_program
from infra.console import print_progress
from infra.errors import UserError
from infra.faults import fault_point
from infra.publish import copy_package
from runtimes.base import package_size, program_precision
from runtimes.mil.model import load_program

ORIGINS_FILE = "op_origins.json"
VOCABULARY_FILE = "parakeet_vocab.json"  # beside the packages, as the public release ships it


def package_license(source: ModelSource) -> str:
    """The terms of the weights in the package: the checkpoint's, as far as the source says."""
    if source.kind == "preset":
        return ("no checkpoint's: the weights are the built-in preset's, seeded (and for the test model trained) "
                "by parakeet-coreml, Apache-2.0")
    if source.kind == "hub" and source.value.startswith("nvidia/parakeet-"):
        return f"CC-BY-4.0, as the model card of {source.value} states"
    return f"as the checkpoint's ({source.value}); a .nemo does not record it"


def describe_package(mlmodel, component: Component, source: ModelSource, model_key: str) -> None:
    """What Xcode shows of a package: its purpose, every input's and output's meaning, the model
    it came from, its license and this tool's version."""
    mlmodel.short_description = f"Parakeet {component.name}: {component.summary}"
    mlmodel.author = f"NVIDIA NeMo model {source.describe()}; converted by parakeet-coreml"
    mlmodel.license = package_license(source)
    mlmodel.version = f"{source.describe()} sha256:{model_key[:16]}, parakeet-coreml {version('parakeet-coreml')}"
    for described, ports in ((mlmodel.input_description, component.input_ports),
                             (mlmodel.output_description, component.output_ports)):
        for port in ports:
            described[port.name] = PORT_DESCRIPTIONS[port.name]
    mlmodel.user_defined_metadata.update({"parakeet_coreml.component": component.name,
                                          "parakeet_coreml.model": source.describe()})


def _described_copy(component: Component, source: ModelSource, model_key: str) -> Callable[[Path, Path], None]:
    """Copy a cached package described for ``source``: the cache is keyed by the checkpoint's
    content, so the entry may have been written for the same checkpoint at another path or name."""

    def copy(package: Path, target: Path) -> None:
        if not package.is_dir():
            raise FileNotFoundError(f"{package}: no such package")
        mlmodel = ct.models.MLModel(str(package), skip_model_load=True)
        describe_package(mlmodel, component, source, model_key)
        mlmodel.save(str(target))

    return copy


@dataclass(frozen=True)
class ExportedComponent:
    name: str
    entry: Entry

    @property
    def package(self) -> Path:
        return self.entry.path / self.entry.info["package"]

    @property
    def info(self) -> dict:
        return self.entry.info

    @property
    def key(self) -> str:
        """What identifies the package: its cache entry's key."""
        return self.entry.path.name

    @property
    def size_bytes(self) -> int:
        """The package's own size (the cache entry also holds its op origins)."""
        return package_size(self.package)

    def op_origins(self) -> dict[str, str]:
        """The Torch module each op of the package came from (``convert.op_origins``)."""
        return json.loads((self.entry.path / ORIGINS_FILE).read_text())


class Exporter:
    """Exports of one model source under one set of options."""

    def __init__(self, source: ModelSource, options: ExportOptions, cache: ExportCache,
                 progress: Callable[[str], None] = print_progress):
        self.source = source
        self.options = options
        self.cache = cache
        self.progress = progress

    def for_target(self, target: str) -> Exporter:
        """The exports of the same model and options for another minimum deployment target (a
        quantization variant that needs a newer OS): this exporter itself for its own target."""
        if target == self.options.minimum_deployment_target:
            return self
        return self._with_options(minimum_deployment_target=target)

    def _with_options(self, **changes) -> Exporter:
        """An exporter of the same model with these options changed, sharing the model if this one
        has loaded it (a process loads a model once; the other would only announce it again)."""
        other = Exporter(self.source, dataclasses.replace(self.options, **changes), self.cache, self.progress)
        if "model" in self.__dict__:  # functools.cached_property's own slot
            other.__dict__["model"] = self.model
        return other

    @cached_property
    def model_key(self) -> str:
        return self.source.key()

    @cached_property
    def model(self):
        self.progress(f"loading {self.source.describe()} ...")
        t = time.perf_counter()
        model = self.source.load()
        if is_cache_aware(model):  # every component, offline ones too, exported with the chunk's context
            streaming_dims(model, self.options.chunk_ms)
        self.progress(f"loaded {self.source.describe()} in {time.perf_counter() - t:.1f} s")
        return model

    @cached_property
    def model_info(self) -> dict:
        """Facts of the model on the export window and, for a cache-aware model, of its streaming
        chunk; cached so a warm run needs no model."""

        def build(_tmp: Path) -> dict:
            dims = model_dims(self.model, self.options.max_audio_seconds)
            cache_aware = is_cache_aware(self.model)
            if self.options.chunk_ms is not None and not cache_aware:
                raise UserError(f"--chunk-ms {self.options.chunk_ms}: the model does not stream chunk by chunk "
                                  f"({describe_context(self.model.encoder)}); give it for a cache-aware model only")
            return {
                "dims": dims.as_dict(),
                "model_class": type(self.model).__name__,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "streaming": streaming_dims(self.model, self.options.chunk_ms).as_dict() if cache_aware else None,
                "chunk_sizes_ms": sorted(chunk_sizes(self.model)) if cache_aware else [],
            }

        return self.cache.get_or_build(self.model_info_key, build).info

    @property
    def model_info_key(self) -> str:
        """The cache key of ``model_info``: the model, the window and, where given, the chunk."""
        chunk = {} if self.options.chunk_ms is None else {"chunk_ms": self.options.chunk_ms}
        return cache_key(kind="model-info", model=self.model_key, max_audio_seconds=self.options.max_audio_seconds,
                         facts="streaming", **chunk)

    @property
    def dims(self) -> ModelDims:
        return ModelDims.from_dict(self.model_info["dims"])

    @property
    def streaming_dims(self) -> StreamingDims | None:
        """The streaming chunk's sizes; ``None`` for a model that does not stream with caches."""
        facts = self.model_info["streaming"]
        return None if facts is None else StreamingDims.from_dict(facts)

    def default_components(self, cache_state: bool = False) -> list[Component]:
        """Every component the model has: its family's (the TDT decisions on a TDT model, the CTC
        head on a CTC or hybrid one), the streaming encoders on a cache-aware one (the later chunks'
        with its caches as states with ``cache_state``)."""
        offline = self.dims.family.components()
        return offline + (get_components(streaming_components(cache_state)) if self.streaming_dims else [])

    @cached_property
    def vocabulary(self) -> Path:
        """``parakeet_vocab.json``: the tokenizer's pieces by token id, what an app needs to turn
        the packages' token ids into text (the public release's file and layout: an object from
        decimal ids to SentencePiece pieces, "▁" marking a word's start; the blank, id
        ``vocab_size``, is not a piece). Cached with the model, so a warm run needs no model."""
        key = cache_key(kind="vocabulary", model=self.model_key, file=VOCABULARY_FILE)

        def build(tmp: Path) -> dict:
            size = self.dims.vocab_size
            pieces = self.model.tokenizer.ids_to_tokens(list(range(size)))
            (tmp / VOCABULARY_FILE).write_text(json.dumps({str(i): p for i, p in enumerate(pieces)}, indent=0,
                                                          ensure_ascii=False) + "\n", encoding="utf-8")
            return {"pieces": len(pieces)}

        return self.cache.get_or_build(key, build).path / VOCABULARY_FILE

    def export(self, component: Component, programs: dict | None = None) -> ExportedComponent:
        """``component``'s package, from the cache or converted now. ``programs``: where a
        conversion leaves its program (by component name), for a chained component of the same
        run to take instead of reading the package back."""
        if not component.fits(self.dims):
            family = self.dims.family
            raise UserError(f"{component.name} needs a model with a {HEADS[component.requires]}; this model is "
                            f"of the {family.name} family ({family.summary}): its components are "
                            f"{', '.join(c.name for c in family.components())}")
        streaming = component.name in STREAMING_COMPONENTS
        if streaming and self.streaming_dims is None:
            raise UserError(f"{component.name} needs a cache-aware model (one that streams chunk by chunk with "
                              "caches); this model's encoder is not one: leave it out of --components")
        key = cache_key(kind="component", model=self.model_key, component=component.name,
                        options=self.options.as_dict())

        def build(tmp: Path) -> dict:
            model, dims = self.model, self.streaming_dims if streaming else self.dims
            if self.streaming_dims is not None:  # one loaded model serves every exporter of the process
                streaming_dims(model, self.options.chunk_ms)
            t = time.perf_counter()
            chained = self._chained(component, programs) if component.chained else None
            if chained is None:
                self.progress(f"  {component.name}: tracing and converting ...")
                mlmodel = convert_component(model, component, dims, self.options)
                origins = op_origins(mil_program(mlmodel))
            else:
                mlmodel, origins = chained
            describe_package(mlmodel, component, self.source, self.model_key)
            package = f"{component.name}.mlpackage"
            mlmodel.save(str(tmp / package))
            fault_point("export")
            (tmp / ORIGINS_FILE).write_text(json.dumps(origins))
            if programs is not None:
                programs[component.name] = mil_program(mlmodel)
            seconds = time.perf_counter() - t
            return {
                "component": component.name,
                "summary": component.summary,
                "package": package,
                "inputs": [s.as_dict() for s in component.inputs(dims)],
                "outputs": [s.as_dict() for s in component.outputs(dims)],
                **({"states": [s.as_dict() for s in component.states(dims)]} if component.state_ports else {}),
                "minimum_deployment_target": component.deployment_target(self.options.minimum_deployment_target),
                **program_precision(mlmodel.get_spec()),
                "options": self.options.as_dict(),
                "convert_seconds": round(seconds, 2),
            }

        return ExportedComponent(component.name, self.cache.get_or_build(key, build))

    def _chained(self, component: Component, programs: dict | None):
        """``component`` as its parts' converted programs chained (``convert_chained``), with op
        origins read as the traced component's: (the package, its op origins), or None where the
        parts cannot be chained (it is traced then). Each part comes from ``programs`` where this
        run converted it, else from the cache (exported now if missing there); a part whose shape
        the options make flexible comes from the fixed window's export."""
        parts, loaded = [], programs if programs is not None else {}
        for name in component.fuses:
            part = COMPONENTS[name]
            exporter = self._with_options(flexible_audio=False) if flexible_audio(part, self.options) else self
            exported = exporter.export(part, loaded if exporter is self else None)
            program = loaded.pop(name, None) if exporter is self else None
            parts.append((name, exported, program if program is not None else load_program(exported.package)))
        self.progress(f"  {component.name}: chaining the converted {' and '.join(component.fuses)} ...")
        try:
            mlmodel, renamed = convert_chained([program for _, _, program in parts], component, self.options)
        except NotChainable as why:
            self.progress(f"  {component.name}: cannot chain the converted parts ({why})")
            return None
        origins = {names.get(op, op): f"{name}.{origin}" if origin else name
                   for (name, exported, _), names in zip(parts, renamed, strict=True)
                   for op, origin in exported.op_origins().items()}
        return mlmodel, origins

    def export_all(self, names=None, steps=lambda items, total: items, cache_state: bool = False
                   ) -> list[ExportedComponent]:
        """Each component exported (or found in the cache), and the vocabulary; ``steps`` wraps the
        iteration (a progress bar); without ``names``, ``default_components(cache_state)``. A part
        of a chained component converted in the same run hands it its program in memory."""
        components = get_components(names) if names else self.default_components(cache_state)
        chained_later = {part for c in components if c.chained for part in c.fuses}
        programs: dict = {}
        done = []
        for i, component in enumerate(steps(components, len(components)), 1):
            t = time.perf_counter()
            exported = self.export(component, programs if component.name in chained_later or component.chained
                                   else None)
            elapsed = time.perf_counter() - t
            size = f"{exported.size_bytes / 1e6:.1f} MB, {exported.info['compute_precision']}"
            if exported.entry.hit:
                line = f"cached, {size} (read in {elapsed:.1f} s)"
            else:
                converted = exported.info["convert_seconds"]
                line = f"converted in {converted:.1f} s, {size}" + (
                    f" ({elapsed:.1f} s with loading the model)" if elapsed - converted > 0.5 else "")
            self.progress(f"[{i}/{len(components)}] {component.name}: {line}")
            done.append(exported)
            if component.chained:
                programs.clear()  # (the parts' programs: the weights of a full-size encoder)
        self.vocabulary  # noqa: B018 (cached beside the packages: a later convert then needs no model)
        return done

    def write_package(self, exported: ExportedComponent, target: Path) -> None:
        """The exported package copied to ``target``, described for this exporter's source."""
        component = get_components([exported.name])[0]
        copy_package(exported.package, target, copy=_described_copy(component, self.source, self.model_key))

    def metadata(self, exported: list[ExportedComponent], written_to: Path | None = None) -> dict:
        """The ``metadata.json`` document. ``written_to``: the folder :meth:`write_package` wrote
        the packages into (``convert``): paths relative to it and sizes as written there (each
        package is described there for this source, which may name another path than the cache
        entry's); else the cache entries' paths and sizes."""
        dims, streaming = self.dims, self.streaming_dims
        return {
            "model": self.source.describe(),
            "model_source": {"kind": self.source.kind, "value": self.source.value, "content_sha256": self.model_key},
            "model_class": self.model_info["model_class"],
            "parameters": self.model_info["parameters"],
            "sample_rate": dims.sample_rate,
            "max_audio_seconds": dims.max_audio_seconds,
            "max_audio_samples": dims.max_audio_samples,
            "vocab_size": dims.vocab_size,
            "vocabulary": VOCABULARY_FILE,
            "blank_id": dims.blank_id,
            "family": dims.family.name,
            "decodings": list(dims.family.decodings),
            **({"ctc_classes": dims.ctc_classes} if dims.ctc_classes else {}),
            "joint_extra_outputs": len(dims.durations),
            "durations": list(dims.durations),
            "encoder_frames": dims.encoder_frames,
            **({"streaming": {**streaming.as_dict(), "chunk_ms": round(1000 * streaming.chunk_seconds),
                              "chunk_sizes_ms": self.model_info["chunk_sizes_ms"], "mode": STREAMING_MODE}}
               if streaming else {}),
            "coreml": {
                "compute_units": self.options.compute_units,
                "compute_precision": self.options.compute_precision,
                "minimum_deployment_target": self.options.minimum_deployment_target,
                "flexible_audio": self.options.flexible_audio,
                "coremltools_version": tool_versions()["coremltools"],
                "torch_version": tool_versions()["torch"],
                "nemo_version": tool_versions()["nemo_toolkit"],
            },
            "host": {"os": platform.system(), "machine": platform.machine(), "python": platform.python_version()},
            "components": {
                e.name: {
                    "inputs": e.info["inputs"],
                    "outputs": e.info["outputs"],
                    **({"states": e.info["states"]} if "states" in e.info else {}),
                    "minimum_deployment_target": e.info.get("minimum_deployment_target",
                                                            self.options.minimum_deployment_target),
                    "path": e.info["package"] if written_to else str(e.package),
                    "size_bytes": package_size(written_to / e.package.name) if written_to else e.size_bytes,
                    "compute_precision": e.info["compute_precision"],
                    "fp16_ops": e.info["fp16_ops"],
                    "fp32_ops": e.info["fp32_ops"],
                    "cache_key": e.entry.path.name,
                }
                for e in exported
            },
        }
