"""What the latency suite and ``compare --runs`` time, and the ``latency`` block they write.

A :class:`Case` is one job done two ways on the same 15 s input: a component in Torch and in
the exported package; a fused package against its parts run one after the other; the whole
greedy TDT decode by NeMo and through the exported packages. The suite times the sides with
pytest-benchmark, ``compare`` with :func:`time_calls`; both turn the samples into the same
block with :func:`latency_block`. Backend timings are labelled with what produced them: on the
``mil`` backend they are this project's executor, never Core ML.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np
import torch
from threadpoolctl import threadpool_info

from exporters.components import COMPONENTS, ModelDims, example_inputs
from exporters.wrappers import wrapper
from runtimes.base import describe_backend
from validation.audio import Clip
from validation.greedy import decision_from_logits, greedy_tdt, nemo_greedy_tdt, package_decide, package_decoder_step

# The sides of each kind of case: (reference, candidate). Speedup = reference / candidate.
SIDES = {"component": ("torch", "backend"), "fused": ("separate", "fused"), "end_to_end": ("torch", "backend")}
FUSED = {"mel_encoder": ("preprocessor", "encoder"), "joint_decision": ("joint",)}
END_TO_END = "greedy_tdt"
# Every (case id, side) there is to time, known before any model is loaded.
TIMED = ([(name, side) for name in COMPONENTS for side in SIDES["component"]]
         + [(f"fused:{name}", side) for name in FUSED for side in SIDES["fused"]]
         + [(f"end_to_end:{END_TO_END}", side) for side in SIDES["end_to_end"]])


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # a key of SIDES
    calls: dict[str, Callable[[], object]]  # side -> one call
    # Loads the candidate's package afresh and calls it once: {"load_ms", "first_call_ms"}
    cold_start: Callable[[], dict] | None = None

    @property
    def sides(self) -> tuple[str, str]:
        return SIDES[self.kind]

    @property
    def id(self) -> str:
        return self.name if self.kind == "component" else f"{self.kind}:{self.name}"


def component_inputs(name: str, dims: ModelDims, clip: Clip) -> dict[str, np.ndarray]:
    """The clip for the audio components; seeded values of the right shapes for the rest (the
    decoder gets one token, U=1)."""
    inputs = example_inputs(COMPONENTS[name], dims)
    if "audio_signal" in inputs:
        inputs.update(clip.inputs())
    return inputs


def cold_start(fresh, package, inputs: dict) -> Callable[[], dict]:
    """Load (on Core ML: compile) ``package`` with an uncached loader, then predict once."""
    def run() -> dict:
        start = time.perf_counter()
        predictor = fresh(package)
        loaded = time.perf_counter()
        predictor.predict(inputs)
        return {"load_ms": (loaded - start) * 1e3, "first_call_ms": (time.perf_counter() - loaded) * 1e3}

    return run


def component_case(name: str, model, dims: ModelDims, package, load, fresh, clip: Clip) -> Case:
    inputs = component_inputs(name, dims, clip)
    module = wrapper(name, model)
    tensors = [torch.from_numpy(inputs[s.name]) for s in COMPONENTS[name].inputs(dims)]

    def torch_call():
        with torch.no_grad():
            return module(*tensors)

    return Case(name, "component", {"torch": torch_call, "backend": lambda: load(package).predict(inputs)},
                cold_start(fresh, package, inputs))


def fused_case(name: str, dims: ModelDims, packages: dict, load, fresh, clip: Clip) -> Case:
    """The fused package against its parts: mel_encoder against preprocessor then encoder, and
    joint_decision against the exported joint with the decision taken on the host."""
    if name == "mel_encoder":
        audio = clip.inputs()

        def separate():
            mel = load(packages["preprocessor"]).predict(audio)
            return load(packages["encoder"]).predict({"mel": mel["mel"], "mel_length": mel["mel_length"]})

        fused_inputs = audio
    elif name == "joint_decision":
        fused_inputs = component_inputs("joint", dims, clip)

        def separate():
            return decision_from_logits(load(packages["joint"]).predict(fused_inputs)["logits"], dims)
    else:
        raise KeyError(f"no fused case {name!r}; expected one of {', '.join(FUSED)}")
    return Case(name, "fused", {"separate": separate, "fused": lambda: load(packages[name]).predict(fused_inputs)},
                cold_start(fresh, packages[name], fused_inputs))


def end_to_end_case(model, dims: ModelDims, packages: dict, load, clip: Clip) -> Case:
    """The greedy TDT decode of the clip: NeMo (Torch front end and encoder, ``GreedyTDTInfer``)
    against the exported mel_encoder, decoder and single-step joint driven from the host."""
    audio = clip.inputs()
    front = wrapper("mel_encoder", model)

    def nemo():
        with torch.no_grad():
            encoder, length = front(*(torch.from_numpy(audio[k]) for k in ("audio_signal", "audio_length")))
        return nemo_greedy_tdt(model, encoder.numpy(), int(length[0]), dims)

    def exported():
        out = load(packages["mel_encoder"]).predict(audio)
        return greedy_tdt(out["encoder"], int(out["encoder_length"][0]), dims,
                          package_decoder_step(load(packages["decoder"])),
                          package_decide(load(packages["joint_decision_single_step"])))

    return Case(END_TO_END, "end_to_end", {"torch": nemo, "backend": exported})


def all_cases(model, dims: ModelDims, packages: dict, load, fresh, clip: Clip) -> list[Case]:
    """Every component, every fused package whose parts are there, and the end-to-end decode.
    ``load(package)`` is the session's cached loader, ``fresh(package)`` an uncached one."""
    cases = [component_case(name, model, dims, package, load, fresh, clip) for name, package in packages.items()]
    cases += [fused_case(name, dims, packages, load, fresh, clip) for name, parts in FUSED.items()
              if name in packages and all(p in packages for p in parts)]
    if all(n in packages for n in ("mel_encoder", "decoder", "joint_decision_single_step")):
        cases.append(end_to_end_case(model, dims, packages, load, clip))
    return cases


def summary(samples_ms: list[float]) -> dict:
    return {"mean": statistics.fmean(samples_ms), "std": statistics.stdev(samples_ms) if len(samples_ms) > 1 else 0.0,
            "median": statistics.median(samples_ms), "min": min(samples_ms), "rounds": len(samples_ms)}


def first_call(case: Case) -> dict:
    """Cold start of the candidate (fresh load and first call) and the reference's first call, ms.
    Cases without a package of their own (end to end) time both sides' first call."""
    reference, candidate = case.sides
    timings = case.cold_start() if case.cold_start is not None else {}
    for side in (candidate, reference):
        key = "first_call_ms" if side == candidate else f"{reference}_first_call_ms"
        if key not in timings:
            start = time.perf_counter()
            case.calls[side]()
            timings[key] = (time.perf_counter() - start) * 1e3
    return timings


def time_calls(call: Callable[[], object], runs: int, warmup: int) -> list[float]:
    """``warmup`` untimed calls, then ``runs`` timed ones (ms)."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def case_entry(case: Case, samples_ms: dict[str, list[float]], first: dict, runs: int, warmup: int,
               audio_seconds: float, backend: str) -> dict:
    """One case's entry of the latency block."""
    reference, candidate = case.sides
    ref, cand = summary(samples_ms[reference]), summary(samples_ms[candidate])
    entry = {"runs": runs, "warmup": warmup, **first, f"{reference}_ms": ref, f"{candidate}_ms": cand,
             "backend": backend, "speedup": ref["median"] / cand["median"]}
    if case.kind != "fused":
        entry["rtf"] = {reference: ref["median"] / 1e3 / audio_seconds, candidate: cand["median"] / 1e3 / audio_seconds}
    return entry


def environment(backend: str, compute_units: str, precision: str) -> dict:
    """Host, OS, threads and versions: what the numbers depend on."""
    blas = sorted({f"{i['internal_api']}:{i['num_threads']}" for i in threadpool_info()})
    return {
        "backend": backend, "values_from": describe_backend(backend), "compute_units": compute_units,
        "compute_precision": precision,
        "host": {"os": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
                 "cpus": os.cpu_count(), "python": platform.python_version()},
        "threads": {"torch": torch.get_num_threads(),
                    "backend": "Core ML schedules its own threads" if backend == "coreml" else blas},
        "versions": {p: version(p) for p in ("torch", "coremltools", "nemo_toolkit", "numpy")},
    }


def latency_block(entries: dict[str, tuple[Case, dict]], env: dict, audio_seconds: float) -> dict:
    """The ``latency`` block: the environment, then components, fused pairs and end to end."""
    block = {**env, "audio_seconds": audio_seconds, "components": {}, "fused": {}, "end_to_end": {}}
    section = {"component": "components", "fused": "fused", "end_to_end": "end_to_end"}
    for case, entry in entries.values():
        block[section[case.kind]][case.name] = entry
    return block


def measure(cases: list[Case], runs: int, warmup: int, audio_seconds: float, backend: str,
            progress=lambda message: None) -> dict[str, tuple[Case, dict]]:
    """``compare``'s timing: first call, then warm-up and timed calls of each side."""
    entries = {}
    for case in cases:
        first = first_call(case)
        samples = {side: time_calls(case.calls[side], runs, warmup) for side in case.sides}
        entry = entries[case.id] = (case, case_entry(case, samples, first, runs, warmup, audio_seconds, backend))
        reference, candidate = case.sides
        progress(f"  {case.id}: {reference} {entry[1][f'{reference}_ms']['median']:.2f} ms, "
                 f"{candidate} {entry[1][f'{candidate}_ms']['median']:.2f} ms (median of {runs})")
    return entries
