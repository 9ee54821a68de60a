"""Latency of each component, Torch against the exported package, for ``compare --runs --warmup``.

Each side is called once (first call, reported apart), then ``warmup`` more times untimed, then
``runs`` times. Backend timings are labelled with what produced them: on the ``mil`` backend
they are this project's executor, never Core ML.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

from exporters.components import COMPONENTS, ModelDims, example_inputs
from runtimes.base import describe_backend
from validation.audio import Clip


def time_calls(call: Callable[[], object], runs: int, warmup: int) -> dict:
    start = time.perf_counter()
    call()
    first = (time.perf_counter() - start) * 1e3
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return {"first_call_ms": first, "mean": statistics.fmean(samples),
            "std": statistics.stdev(samples) if len(samples) > 1 else 0.0, "median": statistics.median(samples)}


def component_inputs(name: str, dims: ModelDims, clip: Clip) -> dict[str, np.ndarray]:
    """The clip for the audio components; seeded values of the right shapes for the rest."""
    inputs = example_inputs(COMPONENTS[name], dims)
    if "audio_signal" in inputs:
        inputs.update(clip.inputs())
    return inputs


def latency_block(model, dims: ModelDims, packages: dict, load, clip: Clip, backend: str, runs: int,
                  warmup: int, progress=lambda message: None) -> dict:
    """Per component: Torch and backend times (ms), real-time factors and the speedup."""
    import torch

    audio_seconds = clip.length / dims.sample_rate
    block = {"runs": runs, "warmup": warmup, "backend": backend, "audio_seconds": audio_seconds,
             "torch_threads": torch.get_num_threads(),
             "values_from": describe_backend(backend), "components": {}}
    for name, package in packages.items():
        inputs = component_inputs(name, dims, clip)
        wrapper = COMPONENTS[name].wrapper(model).eval()
        tensors = [torch.from_numpy(inputs[s.name]) for s in COMPONENTS[name].inputs(dims)]

        def torch_call():
            with torch.no_grad():
                wrapper(*tensors)

        start = time.perf_counter()
        predictor = load(package)
        load_ms = (time.perf_counter() - start) * 1e3
        torch_ms = time_calls(torch_call, runs, warmup)
        backend_ms = time_calls(lambda: predictor.predict(inputs), runs, warmup)
        block["components"][name] = {
            "load_ms": load_ms,
            "first_call_ms": backend_ms.pop("first_call_ms"),
            "torch_first_call_ms": torch_ms.pop("first_call_ms"),
            "torch_ms": torch_ms,
            "backend_ms": backend_ms,
            "rtf": {"torch": torch_ms["median"] / 1e3 / audio_seconds,
                    "backend": backend_ms["median"] / 1e3 / audio_seconds},
            "speedup": torch_ms["median"] / backend_ms["median"],
        }
        progress(f"  {name}: Torch {torch_ms['median']:.2f} ms, {backend} {backend_ms['median']:.2f} ms (median of {runs})")
    return block
