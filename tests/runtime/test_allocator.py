"""The executor sets the C allocator itself: the same memory reuse, and so the same speed, under
the command line and in a program that imports ``runtimes.mil`` alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from runtimes.mil.allocator import keep_freed_memory

# Run in a fresh process: the allocator's settings are per process, and pytest's own allocations
# would move glibc's adaptive thresholds. Four 3 MB arrays made and freed three times, after one of
# 4 MB: glibc then trims the heap's top after each round and faults the arrays in anew.
_PROBE = """
import json, resource, sys
if sys.argv[1] == "command":
    import cli  # what the command line imports first
import numpy as np
if sys.argv[1] != "nothing":
    from coremltools.converters.mil.mil import Builder as mb, Function, Program, types
    from coremltools import target
    from runtimes.mil import MILModel
    with Function({"x": mb.placeholder(shape=(2,), dtype=types.fp32)}, target.iOS17) as function:
        function.set_outputs([mb.relu(x=function.inputs["x"])])
    program = Program()
    program.add_function("main", function)
    MILModel(program)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
first = np.ones(1 << 20, np.float32); del first
rounds = []
for _ in range(3):
    before = faults()
    blocks = [np.ones(3 << 18, np.float32) for _ in range(4)]
    del blocks
    rounds.append(faults() - before)
print(json.dumps(rounds))
"""

PAGES_OF_THE_ARRAYS = 4 * (3 << 20) // 4096  # 3,072 pages of 4 KiB


def _faults(how: str) -> list[int]:
    done = subprocess.run([sys.executable, "-c", _PROBE, how], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def glibc():
    if not keep_freed_memory():
        pytest.skip("the C library is not glibc: its allocator has no mmap or trim threshold to set")


def test_without_the_executor_the_probe_faults_its_arrays_in_every_round(glibc):
    """The probe's own control: glibc trims the freed arrays away, so each round faults again
    (measured: 2,272 pages a round; with huge pages fewer, but far from none)."""
    assert all(f > PAGES_OF_THE_ARRAYS // 8 for f in _faults("nothing")[1:])


@pytest.mark.parametrize("how", ["library", "command"])
def test_loading_a_program_keeps_freed_memory_for_the_next_call(glibc, how):
    """Measured with the thresholds set: 0 pages in the second and third rounds."""
    rounds = _faults(how)
    assert all(f < 64 for f in rounds[1:]), rounds


# Blocks above glibc's largest mmap threshold (32 MB) are mapped on their own and unmapped when
# freed, whatever the thresholds: a 48 MB block made and freed round after round, as a full-size
# encoder's subsampling activation is at each call.
_LARGE_PROBE = """
import json, resource, sys
import numpy as np
from coremltools.converters.mil.mil import Builder as mb, Function, Program, types
from coremltools import target
from runtimes.mil import MILModel
from runtimes.mil.allocator import heap_only

SIZE = 12 << 20  # float32 values: 48 MB
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def block():
    values = np.ones(SIZE, np.float32)
    del values
with Function({"x": mb.placeholder(shape=(SIZE,), dtype=types.fp32)}, target.iOS17) as function:
    # an activation of the block's size, freed inside the prediction: the output is one value
    function.set_outputs([mb.reduce_max(x=mb.relu(x=function.inputs["x"]), axes=[0])])
program = Program()
program.add_function("main", function)
model = MILModel(program)
x = np.ones(SIZE, np.float32)
rounds = []
for _ in range(6):
    before = faults()
    if sys.argv[1] == "inside":
        with heap_only():
            block()
    elif sys.argv[1] == "predict":
        model.predict({"x": x})
    else:
        block()
    rounds.append(faults() - before)
print(json.dumps(rounds))
"""

# at least one fault for each 2 MB of a fresh mapping, even where the kernel backs it with huge pages
FAULTS_OF_A_FRESH_LARGE_BLOCK = (48 << 20) // (2 << 20)


def _large_faults(how: str) -> list[int]:
    done = subprocess.run([sys.executable, "-c", _LARGE_PROBE, how], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_outside_a_prediction_a_block_above_the_mmap_threshold_is_faulted_in_every_time(glibc):
    """The control: glibc maps such a block anew each round (measured: 536 faults a round with
    transparent huge pages), the executor's thresholds notwithstanding."""
    rounds = _large_faults("outside")
    assert all(f >= FAULTS_OF_A_FRESH_LARGE_BLOCK for f in rounds), rounds


def test_under_heap_only_a_large_block_is_reused(glibc):
    """Made and freed under ``heap_only``: measured 0 faults after the first round, in 8 runs of 8."""
    rounds = _large_faults("inside")
    assert all(f < 64 for f in rounds[1:]), rounds


def test_across_predictions_a_large_activation_is_reused(glibc):
    """A prediction's 48 MB activation, freed inside it: once the heap has settled (its first two
    rounds), the next predictions take it from the heap, though now and then one faults it in
    again (8 runs: 2 to 4 of the last 4 rounds reused it, never none); with predictions outside
    ``heap_only``, 12,289 faults every round, none ever reused."""
    rounds = _large_faults("predict")
    assert min(rounds[2:]) < 64, rounds
