"""What the latency suite and ``compare --runs`` time, and the ``latency`` block they write.

A :class:`Case` is one job done two ways on the same 15 s input: a component in Torch and in
the exported package; a fused package against its parts run one after the other; the whole
greedy TDT decode by NeMo and through the exported packages. The two sides run call by call in
turn (A/B/A/B), so both see the same load on a shared host, and the speedup is the geometric
mean of the paired ratios with a 95 % confidence interval. A case whose spread is wide or whose
host was busy is flagged rather than trusted. The suite times the sides with pytest-benchmark
(:class:`Partner` runs the other side between its rounds), ``compare`` with :func:`time_paired`;
both turn the rounds into the same block with :func:`latency_block`. Backend timings are
labelled with what produced them: on the ``mil`` backend they are this project's executor,
never Core ML.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np
import torch
from scipy import stats
from threadpoolctl import threadpool_info

from exporters.components import COMPONENTS, ModelDims, StreamingDims, example_inputs
from exporters.streaming import MelChunk, NemoStream
from exporters.wrappers import wrapper
from runtimes.base import describe_backend
from runtimes.mil.ops.base import inner_product
from validation.audio import Clip
from validation.greedy import decision_from_logits, greedy_tdt, nemo_greedy_tdt, package_decide, package_decoder_step
from validation.streaming import PackageStream, StreamDecoder

# The sides of each kind of case: (reference, candidate). Speedup = reference / candidate.
SIDES = {"component": ("torch", "backend"), "fused": ("separate", "fused"), "end_to_end": ("torch", "backend"),
         "stream": ("torch", "backend")}
FUSED = {"mel_encoder": ("preprocessor", "encoder"), "joint_decision": ("joint",)}
END_TO_END = "greedy_tdt"
STREAM = "encoder_streaming"  # the streaming case: a stream's chunks, one per call, through the encoder and decoding
# A side whose samples' coefficient of variation is above this is too noisy to read alone.
MAX_CV = 0.10
# Every (case id, side) there is to time, known before any model is loaded.
TIMED = ([(name, side) for name in COMPONENTS for side in SIDES["component"]]
         + [(f"fused:{name}", side) for name in FUSED for side in SIDES["fused"]]
         + [(f"end_to_end:{END_TO_END}", side) for side in SIDES["end_to_end"]])
SECTIONS = {"component": "components", "fused": "fused", "end_to_end": "end_to_end", "stream": "streaming"}


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # a key of SIDES
    calls: dict[str, Callable[[], object]]  # side -> one call
    # Loads the candidate's package afresh and calls it once: {"load_ms", "first_call_ms"}
    cold_start: Callable[[], dict] | None = None
    audio_seconds: float | None = None  # the audio one call processes, where it is not the session's clip
    details: Callable[[], dict] | None = None  # what the case adds to its entry once timed

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
        with torch.inference_mode():
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
        with torch.inference_mode():
            encoder, length = front(*(torch.from_numpy(audio[k]) for k in ("audio_signal", "audio_length")))
        return nemo_greedy_tdt(model, encoder.numpy(), int(length[0]), dims)

    def exported():
        out = load(packages["mel_encoder"]).predict(audio)
        return greedy_tdt(out["encoder"], int(out["encoder_length"][0]), dims,
                          package_decoder_step(load(packages["decoder"])),
                          package_decide(load(packages["joint_decision_single_step"])))

    return Case(END_TO_END, "end_to_end", {"torch": nemo, "backend": exported})


class StreamSide:
    """One side of the streaming case: each call takes the stream's next chunk through the encoder
    (NeMo's ``cache_aware_stream_step`` or the packages, caches carried) and NeMo's streaming
    decoding of the chunk's committed frames, as a live app does per chunk. After the last chunk
    the stream begins again with empty caches; ``timeline`` keeps each call of the current pass:
    (chunk index, ms, tokens decoded so far)."""

    def __init__(self, model, chunks: list[MelChunk], start: Callable[[], Callable[[MelChunk], dict]]):
        self.model, self.chunks, self.start = model, chunks, start
        self.restart()

    def restart(self) -> None:
        self.step = self.start()
        self.decoder = StreamDecoder(self.model)
        self.timeline: list[tuple[int, float, int]] = []

    def __call__(self) -> np.ndarray:
        if len(self.timeline) == len(self.chunks):
            self.restart()
        index = len(self.timeline)
        begin = time.perf_counter()
        frames = self.step(self.chunks[index])["encoder"]
        self.decoder.add(frames)
        ms = (time.perf_counter() - begin) * 1e3
        self.timeline.append((index, ms, len(self.decoder.tokens)))
        return frames


def speech_onset(samples: np.ndarray, sample_rate: int) -> float:
    """Seconds to the first sample within 40 dB of the stream's peak."""
    level = np.abs(np.asarray(samples, np.float32))
    if not level.size or level.max() == 0:
        return float("nan")
    return int(np.argmax(level >= 0.01 * level.max())) / sample_rate


def time_to_first_token(timeline: list[tuple[int, float, int]], dims: StreamingDims, onset_seconds: float
                        ) -> float | None:
    """Milliseconds from speech onset to the first token after it, were the stream live: chunk i
    arrives once its last new mel frame has (``first_chunk_mel_frames + i * shift_mel_frames``
    frames of ``mel_hop_seconds``), is processed once it has arrived and the chunk before it is
    done, and takes the time it took here. Tokens of chunks that arrived before the onset (an
    untrained model's, in the silence) do not count. ``None`` when no token came after it."""
    ready, before = 0.0, 0
    for index, ms, tokens in timeline:
        arrival = (dims.first_chunk_mel_frames + index * dims.shift_mel_frames) * dims.mel_hop_seconds
        ready = max(arrival, ready) + ms / 1e3
        if arrival <= onset_seconds:
            before = tokens
        elif tokens > before:
            return (ready - onset_seconds) * 1e3
    return None


def stream_case(model, model_name: str, dims: StreamingDims, chunks: list[MelChunk], predicts: dict,
                samples: np.ndarray, sample_rate: int) -> Case:
    """A stream chunk by chunk: NeMo's cache-aware streaming against the streaming packages
    (``predicts`` by component), each chunk followed by NeMo's streaming decoding of its committed
    frames, the same Torch code on both sides. The real-time factor is per chunk (its median time
    over the chunk's new audio); the entry adds each side's time of every chunk of the last pass,
    its real-time factor over the stream and its time to the first token after speech starts."""
    sides = {"torch": StreamSide(model, chunks, lambda: NemoStream(model, dims).step),
             "backend": StreamSide(model, chunks, lambda: PackageStream(dims, predicts).step)}
    seconds, onset = len(samples) / sample_rate, speech_onset(samples, sample_rate)

    def details() -> dict:
        return {"runs": len(chunks), "model": model_name, "chunk_ms": round(dims.chunk_seconds * 1e3),
                "chunks": len(chunks),
                "stream_seconds": seconds, "speech_onset_seconds": onset,
                "per_chunk_ms": {name: [ms for _, ms, _ in side.timeline] for name, side in sides.items()},
                "stream_rtf": {name: sum(ms for _, ms, _ in side.timeline) / 1e3 / seconds
                               for name, side in sides.items()},
                "time_to_first_token_ms": {name: time_to_first_token(side.timeline, dims, onset)
                                           for name, side in sides.items()}}

    return Case(STREAM, "stream", sides, audio_seconds=dims.chunk_seconds, details=details)


def all_cases(model, dims: ModelDims, packages: dict, load, fresh, clip: Clip) -> list[Case]:
    """Every offline component, every fused package whose parts are there, and the end-to-end decode.
    ``load(package)`` is the session's cached loader, ``fresh(package)`` an uncached one."""
    cases = [component_case(name, model, dims, package, load, fresh, clip) for name, package in packages.items()
             if name in COMPONENTS]  # the streaming packages take chunks, not the clip: the stream case times them
    cases += [fused_case(name, dims, packages, load, fresh, clip) for name, parts in FUSED.items()
              if name in packages and all(p in packages for p in parts)]
    if all(n in packages for n in ("mel_encoder", "decoder", "joint_decision_single_step")):
        cases.append(end_to_end_case(model, dims, packages, load, clip))
    return cases


def summary(samples_ms: list[float]) -> dict:
    """Location and spread of one side's samples (ms); ``cv`` is std over mean."""
    mean = statistics.fmean(samples_ms)
    std = statistics.stdev(samples_ms) if len(samples_ms) > 1 else 0.0
    return {"mean": mean, "std": std, "median": statistics.median(samples_ms), "min": min(samples_ms),
            "p90": float(np.percentile(samples_ms, 90)), "max": max(samples_ms), "cv": std / mean if mean else 0.0,
            "rounds": len(samples_ms)}


def paired_speedup(pairs: list[tuple[float, float]]) -> dict:
    """Speedup of the candidate over the reference from rounds timed side by side:
    the geometric mean of reference / candidate and its 95 % confidence interval (Student's t over
    the log ratios, so the interval of a ratio stays positive and symmetric in factors)."""
    logs = np.log([reference / candidate for reference, candidate in pairs])
    centre = float(np.exp(logs.mean()))
    if len(logs) < 2:
        return {"speedup": centre, "speedup_ci95": [centre, centre], "paired_rounds": len(logs)}
    half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs))
    return {"speedup": centre, "speedup_ci95": [float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))],
            "paired_rounds": len(logs)}


def host_matmul_gflops(size: int = 2048, repeats: int = 3) -> dict[str, float]:
    """This host's fp32 matrix throughput now, in GFLOP/s, by kernel (the best of ``repeats``
    square products of ``size``): Torch's ``mm`` and the oneDNN inner product the executor's
    linears run on, and ``best``, the ceiling its heavy ops run against. Measured in the same run
    as what is compared with it. On AMD processors ``mm`` (MKL) reaches about half of oneDNN's
    (222 against 476 on a 2-core EPYC), so it alone would put the executor above 100 %."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    kernels = {"torch_mm": lambda: torch.mm(a, b), "onednn_inner_product": lambda: inner_product(a, b)}
    found = {}
    for name, product in kernels.items():
        product()  # the first call pays for the thread pool
        best_ms = min(timed(product) for _ in range(repeats))
        found[name] = 2 * size**3 / (best_ms / 1e3) / 1e9
    return {**found, "best": max(found.values())}


def load_average() -> float | None:
    """The host's one-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def flags(side_stats: dict[str, dict], load: float | None, cpus: int | None) -> list[str]:
    """Why a case's numbers should not be read alone: a side's spread above ``MAX_CV``, or a host
    whose load average was above its CPU count while the case ran."""
    found = [f"wide spread: {side} CV {s['cv']:.0%} > {MAX_CV:.0%}" for side, s in side_stats.items()
             if s["cv"] > MAX_CV]
    if load is not None and cpus and load > cpus:
        found.append(f"busy host: load average {load:.1f} > {cpus} CPUs")
    return found


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


def timed(call: Callable[[], object]) -> float:
    """One call's wall time (ms)."""
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def time_calls(call: Callable[[], object], runs: int, warmup: int) -> list[float]:
    """``warmup`` untimed calls, then ``runs`` timed ones (ms)."""
    for _ in range(warmup):
        call()
    return [timed(call) for _ in range(runs)]


def time_paired(case: Case, runs: int, warmup: int) -> list[dict[str, float]]:
    """``runs`` rounds of the case's two sides, one call each, in turn (A/B, then B/A, so neither
    side always runs second); ``warmup`` untimed rounds first. Each round: {side: ms}."""
    reference, candidate = case.sides
    for _ in range(warmup):
        case.calls[reference]()
        case.calls[candidate]()
    rounds = []
    for i in range(runs):
        order = (reference, candidate) if i % 2 == 0 else (candidate, reference)
        rounds.append({side: timed(case.calls[side]) for side in order})
    return rounds


class Partner:
    """pytest-benchmark's ``setup`` hook for one side's benchmark: runs the case's other side once
    before each round and keeps its time, so the suite's rounds are paired like ``time_paired``'s."""

    def __init__(self, call: Callable[[], object]):
        self.call = call
        self.samples_ms: list[float] = []

    def __call__(self) -> None:
        self.samples_ms.append(timed(self.call))

    def rounds(self, warmup: int, runs: int) -> list[float]:
        """The partner's times of the timed rounds: the warm-up rounds ran it first (and
        ``--benchmark-cprofile`` runs it again after)."""
        return self.samples_ms[warmup:warmup + runs]


def case_entry(case: Case, rounds: list[dict[str, float]], first: dict, runs: int, warmup: int,
               audio_seconds: float, backend: str, load: float | None = None, cpus: int | None = None) -> dict:
    """One case's entry of the latency block from its paired rounds ({side: ms} each): each
    side's spread, the paired speedup with its interval, and the flags."""
    reference, candidate = case.sides
    ref, cand = (summary([r[side] for r in rounds]) for side in case.sides)
    entry = {"runs": runs, "warmup": warmup, **first, f"{reference}_ms": ref, f"{candidate}_ms": cand,
             "backend": backend, **paired_speedup([(r[reference], r[candidate]) for r in rounds]),
             "load_average": load, "flags": flags({reference: ref, candidate: cand}, load, cpus)}
    if case.kind != "fused":
        seconds = case.audio_seconds or audio_seconds
        entry["rtf"] = {reference: ref["median"] / 1e3 / seconds, candidate: cand["median"] / 1e3 / seconds}
    if case.details is not None:
        entry.update(case.details())
    return entry


def flagged(block: dict) -> list[str]:
    """One line per flagged case of a latency block, named by its case id: ``case: reason; reason``."""
    prefix = {section: "" if kind == "component" else f"{kind}:" for kind, section in SECTIONS.items()}
    return [f"{prefix[section]}{name}: {'; '.join(entry['flags'])}" for section in prefix
            for name, entry in block.get(section, {}).items() if entry.get("flags")]


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
    """The ``latency`` block: the environment, then components, fused pairs, end to end and, where
    timed, streaming."""
    block = {**env, "audio_seconds": audio_seconds, "components": {}, "fused": {}, "end_to_end": {}}
    for case, entry in entries.values():
        block.setdefault(SECTIONS[case.kind], {})[case.name] = entry
    return block


def describe_entry(case: Case, entry: dict) -> str:
    """A case's line: each side's median, the paired speedup (what the report's verdicts use) with
    its interval and what it is, the flags; and a word where the medians and the pairs disagree."""
    reference, candidate = case.sides
    low, high = entry["speedup_ci95"]
    medians = entry[f"{reference}_ms"]["median"], entry[f"{candidate}_ms"]["median"]
    disagree = (medians[0] / medians[1] - 1) * (entry["speedup"] - 1) < 0
    return (f"{case.id}: median {reference} {medians[0]:.3g} ms, {candidate} {medians[1]:.3g} ms; paired speedup "
            f"{entry['speedup']:.2f}x [95% CI {low:.2f}-{high:.2f}] (geometric mean of {reference}/{candidate} "
            f"over {entry['paired_rounds']} rounds timed side by side)"
            + ("; the medians and the pairs point different ways: the rounds vary too much to tell, read the CI"
               if disagree else "")
            + "".join(f"; FLAGGED {reason}" for reason in entry["flags"]))


def measure(cases: Iterable[Case], runs: int, warmup: int, audio_seconds: float, backend: str,
            progress=lambda message: None) -> dict[str, tuple[Case, dict]]:
    """``compare``'s timing: first call, then warm-up and timed rounds of both sides in turn."""
    entries = {}
    for case in cases:
        before = load_average()
        first = first_call(case)
        rounds = time_paired(case, runs, warmup)
        load = max((x for x in (before, load_average()) if x is not None), default=None)
        entry = case_entry(case, rounds, first, runs, warmup, audio_seconds, backend, load, os.cpu_count())
        entries[case.id] = (case, entry)
        progress("  " + describe_entry(case, entry))
    return entries
