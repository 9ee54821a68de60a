"""The executor against Torch on the fp16 encoder, side by side, with the executor's peak memory.

Targets on the full-size preset and the 15 s window (2-core machine): executor time <= 1.5x the
Torch CPU reference, peak memory <= 2x the package's weights. Both are recorded in the benchmark
JSON (``extra_info``), not asserted on a noisy clock.

    pytest -m slow tests/runtime/test_executor_benchmark.py --preset parakeet-tdt-0.6b-v3 \\
        --benchmark-json executor.json
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from exporters.components import COMPONENTS, example_inputs
from exporters.wrappers import wrapper
from runtimes.mil import MILModel

ROUNDS = 3

# Peak RSS of loading the package and predicting once, in a fresh process, next to the peak after
# the imports alone: the difference is what the executor added. Linux's VmHWM starts afresh with
# the new program; ru_maxrss would carry this (large) test process's peak across exec.
_MEMORY_PROBE = """
import json, resource, sys
import numpy as np
from runtimes.mil import MILModel

def peak():
    try:
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmHWM"))
    except OSError:  # macOS: ru_maxrss is in bytes there
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

before = peak()
model = MILModel(sys.argv[1])
inputs = {s.name: np.zeros(s.shape, s.dtype) for s in model.input_specs}
model.predict(inputs)
print(json.dumps({"peak_rss_after_imports": before, "peak_rss": peak()}))
"""


@pytest.fixture(scope="module")
def encoder_fp16(session_exporters):
    return session_exporters["float16"].export(COMPONENTS["encoder"])


def _weights_bytes(package) -> int:
    return sum(p.stat().st_size for p in package.rglob("weight.bin"))


@pytest.mark.slow
@pytest.mark.benchmark(group="encoder: torch fp32 vs executor fp16")
def test_torch_encoder(benchmark, torch_model, dims, model_source):
    component = COMPONENTS["encoder"]
    inputs = example_inputs(component, dims)
    module = wrapper(component.name, torch_model)
    args = [torch.from_numpy(inputs[s.name]) for s in component.inputs(dims)]

    def run():
        with torch.no_grad():
            return module(*args)

    run()
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update(model=model_source.describe(), runtime="torch", threads=torch.get_num_threads())


@pytest.mark.slow
@pytest.mark.benchmark(group="encoder: torch fp32 vs executor fp16")
def test_executor_encoder(benchmark, encoder_fp16, dims, model_source):
    model = MILModel(encoder_fp16.package)
    inputs = example_inputs(COMPONENTS["encoder"], dims)
    out = model.predict(inputs)
    assert np.isfinite(out["encoder"]).all()
    benchmark.pedantic(model.predict, args=(inputs,), rounds=ROUNDS, iterations=1)
    probe = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(encoder_fp16.package)],
                           capture_output=True, text=True, check=True)
    memory = json.loads(probe.stdout.strip().splitlines()[-1])
    weights = _weights_bytes(encoder_fp16.package)
    benchmark.extra_info.update(
        model=model_source.describe(), runtime="mil executor (not Core ML)", weights_bytes=weights,
        executor_added_bytes=memory["peak_rss"] - memory["peak_rss_after_imports"], **memory,
        added_over_weights=round((memory["peak_rss"] - memory["peak_rss_after_imports"]) / weights, 2))
