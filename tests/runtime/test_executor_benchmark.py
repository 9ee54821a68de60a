"""The executor against Torch, side by side, on each component's fp16 package; for the encoder
also the executor's load time and peak memory.

Targets on the full-size preset and the 15 s window (2-core machine): the fp16 encoder within
1.2x of Torch's time (same threads, Torch under ``inference_mode``), the other components no
slower than Torch; loading the encoder package within 3 s; the memory that loading and running
it adds within 1.5x its weight file. The two sides alternate round by round (each side's
benchmark runs the other once before each of its rounds), so both see the same host; the paired
ratio, its interval and the memory are recorded in the benchmark JSON (``extra_info``), not
asserted on a noisy clock; so are the executor's GFLOP/s (the FLOPs counted from the program)
against the host's fp32 matrix throughput measured in the same run, its time by op type (whole
steps, and inside the kernels alone), and the share it would reach if nothing but the matrix
products took time: the most that fusing the other ops could give.

    pytest -m slow tests/runtime/test_executor_benchmark.py --preset parakeet-tdt-0.6b-v3 \\
        --benchmark-json executor.json
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
import torch

from exporters.components import COMPONENTS, example_inputs
from exporters.wrappers import wrapper
from runtimes.mil import MILModel
from validation.neural_engine import predict_package
from validation.timing import Partner, host_matmul_gflops, paired_speedup, timed

# rounds per side: as many as fit the time budget of one pair of calls each, from five (the
# full-size encoders, a second and more a call) to fifty (the millisecond components; with five
# their paired interval spans noise: 0.48x to 1.31x for the single step, 1.06x to 2.38x for the
# trained mel_encoder)
MIN_ROUNDS, ROUNDS, PAIRS_BUDGET_S, WARMUP = 5, 50, 10.0, 1
NAMES = ("encoder", "mel_encoder", "decoder", "joint", "joint_decision_single_step")
PROFILED_OPS = 12  # op types listed in the profile, the costliest first
PROFILES = 3  # profiled calls: each op type's median of these
# the matrix products: the ops the host's matrix throughput is the ceiling of; the time the rest
# take is what fusing could save, so the share the executor would reach with the rest taking
# no time at all is the most any fusing could give
PRODUCTS = ("linear", "conv", "matmul")
SIDES = ("torch", "executor")

# In a fresh process: the peak RSS after the imports, the seconds MILModel(path) takes, and the
# peak after loading and predicting once: the difference is what the executor added. Linux's
# VmHWM starts afresh with the new program; ru_maxrss would carry this test process's peak.
_MEMORY_PROBE = """
import cli  # the command's environment: OpenBLAS's spin cut before numpy loads
import json, resource, sys, time
import coremltools, numpy as np
from runtimes.mil import MILModel

def peak():
    try:
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmHWM"))
    except OSError:  # macOS: ru_maxrss is in bytes there
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

before = peak()
start = time.perf_counter()
model = MILModel(sys.argv[1])
load_s = time.perf_counter() - start
inputs = {s.name: np.zeros(s.shape, s.dtype) for s in model.input_specs}
model.predict(inputs)
print(json.dumps({"peak_rss_after_imports": before, "peak_rss": peak(), "load_s": load_s}))
"""


@pytest.fixture(scope="module")
def calls(session_exporters, torch_model, dims):
    """name -> {side: one call}: Torch's wrapped module and the executor on the fp16 package,
    with the same seeded inputs; built on first use."""
    built = {}

    def of(name: str) -> dict:
        if name not in built:
            component = COMPONENTS[name]
            inputs = example_inputs(component, dims)
            module = wrapper(name, torch_model)
            tensors = [torch.from_numpy(inputs[s.name]) for s in component.inputs(dims)]
            package = session_exporters["float16"].export(component).package
            executor = MILModel(package)

            def torch_call():
                with torch.inference_mode():
                    return module(*tensors)

            built[name] = {"torch": torch_call, "executor": lambda: executor.predict(inputs), "package": package,
                           "model": executor, "inputs": inputs}
        return built[name]

    return of


def _rounds(sides: dict) -> int:
    """Rounds per side within ``PAIRS_BUDGET_S``, from one pair of calls outside the rounds."""
    pair_s = (timed(sides["torch"]) + timed(sides["executor"])) / 1e3
    return max(MIN_ROUNDS, min(ROUNDS, int(PAIRS_BUDGET_S / pair_s)))


def _median_profile(model: MILModel, inputs: dict, kernels_only: bool = False) -> dict[str, float]:
    """Seconds by op type, each the median of ``PROFILES`` profiled calls, the costliest first."""
    profiles = [model.profile(inputs, kernels_only=kernels_only) for _ in range(PROFILES)]
    spent = {op: statistics.median(p[op] for p in profiles) for op in profiles[0]}
    return dict(sorted(spent.items(), key=lambda item: -item[1]))


def _weights_bytes(package) -> int:
    return sum(p.stat().st_size for p in package.rglob("weight.bin"))


@pytest.mark.slow
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", NAMES)
def test_executor_against_torch(benchmark, calls, name, side, model_source):
    sides = calls(name)
    other = next(s for s in SIDES if s != side)
    partner = Partner(sides[other])
    benchmark.group = f"{name}: torch fp32 vs executor fp16"
    rounds = _rounds(sides)
    benchmark.pedantic(sides[side], setup=partner, rounds=rounds, warmup_rounds=WARMUP, iterations=1)
    own_ms = [s * 1e3 for s in benchmark.stats.stats.data]
    pairs = list(zip(partner.rounds(WARMUP, rounds), own_ms, strict=True)) if side == "executor" else \
        list(zip(own_ms, partner.rounds(WARMUP, rounds), strict=True))
    torch_over_executor = paired_speedup(pairs)  # (torch ms, executor ms) pairs
    benchmark.extra_info.update(
        model=model_source.describe(), side=side, threads=torch.get_num_threads(),
        runtime="torch (inference_mode)" if side == "torch" else "mil executor (not Core ML)",
        executor_over_torch=round(1 / torch_over_executor["speedup"], 3),
        executor_over_torch_ci95=[round(1 / v, 3) for v in reversed(torch_over_executor["speedup_ci95"])])
    if side == "executor":  # against the host's own arithmetic, and where the time goes
        placement = predict_package(sides["package"])  # the FLOPs counted from the program itself
        flops = placement.summary()["flops"]
        product_flops = sum(op.flops for op in placement.ops if op.op_type in PRODUCTS)
        gflops = flops / (statistics.median(own_ms) / 1e3) / 1e9
        host = host_matmul_gflops()
        spent = _median_profile(sides["model"], sides["inputs"])
        in_kernels = _median_profile(sides["model"], sides["inputs"], kernels_only=True)
        products_s = sum(seconds for op, seconds in spent.items() if op in PRODUCTS)
        product_kernels_s = sum(seconds for op, seconds in in_kernels.items() if op in PRODUCTS)
        benchmark.extra_info.update(
            program_gflop=round(flops / 1e9, 3), executor_gflops=round(gflops, 1),
            host_matmul_gflops=round(host["best"], 1),
            host_matmul_gflops_by_kernel={name: round(v, 1) for name, v in host.items() if name != "best"},
            share_of_host_matmul=round(gflops / host["best"], 3),
            profile_ms_by_op_type={op: round(seconds * 1e3, 2) for op, seconds in list(spent.items())[:PROFILED_OPS]},
            kernels_ms_by_op_type={op: round(s * 1e3, 2) for op, s in list(in_kernels.items())[:PROFILED_OPS]},
            profile_ms=round(sum(spent.values()) * 1e3, 1), kernels_ms=round(sum(in_kernels.values()) * 1e3, 1),
            products_gflop=round(product_flops / 1e9, 3), products_ms=round(products_s * 1e3, 1),
            product_kernels_ms=round(product_kernels_s * 1e3, 1),
            share_of_host_matmul_if_only_products_ran=round(flops / products_s / 1e9 / host["best"], 3),
            share_of_host_matmul_if_only_product_kernels_ran=round(
                flops / product_kernels_s / 1e9 / host["best"], 3))
    if side == "executor" and name == "encoder":
        probe = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(sides["package"])],
                               capture_output=True, text=True, check=True)
        memory = json.loads(probe.stdout.strip().splitlines()[-1])
        weights = _weights_bytes(sides["package"])
        added = memory["peak_rss"] - memory["peak_rss_after_imports"]
        benchmark.extra_info.update(weights_bytes=weights, executor_added_bytes=added, **memory,
                                    added_over_weights=round(added / weights, 2))
