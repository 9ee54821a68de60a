"""The C allocator, set for the executor's way of using memory.

The executor frees each op's result once the last op that reads it has run, and the next call
allocates it anew (numpy's and torch's arrays both come from the C library's ``malloc``). glibc
hands a freed block larger than its mmap threshold back to the system, and trims the top of its
heap once more than its trim threshold lies free there. Both thresholds follow the largest block
freed so far, but code with another pattern between the executor's calls (Torch's own model, in a
side-by-side timing) keeps them low, and then every call faults its whole working set in again:
the full-size fp16 encoder, called in turn with Torch's on a 2-core host, took about 45,000 page
faults and 1.5 to 1.9 s a call, against about 13,000 and 1.2 s with the thresholds below (and
1.25 s called alone). Set by the executor itself, once per process, so that it runs at the same
speed under the command line, the test suite or a program of one's own. Blocks above the largest
mmap threshold glibc allows are always mapped anew; during a prediction ``heap_only`` takes them
from the heap too.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
import threading

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
DEFAULT_MMAP_MAX = 65536  # glibc's own (malloc.c), restored after each prediction
# glibc's largest mmap threshold on 64-bit hosts (DEFAULT_MMAP_THRESHOLD_MAX): blocks up to it come
# from the heap and are reused; larger ones (a full-size encoder's subsampling activations) are mapped.
MMAP_THRESHOLD_BYTES = 32 << 20
# Free memory kept at the top of the heap: a full-size encoder's activations of one call, and room.
TRIM_THRESHOLD_BYTES = 256 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); whether they were set.

    Other C libraries (macOS's, musl) keep their own policy: their allocators have no such
    thresholds to set, and the executor's timings there are its own."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


_predicting = 0  # predictions running now, in any thread
_predicting_lock = threading.Lock()


@contextlib.contextmanager
def heap_only():
    """Inside: every block from glibc's heap, none mapped on its own, so the blocks above the mmap
    threshold (a full-size encoder's 49 MB subsampling activations) are reused by the next call
    instead of faulted in anew (measured on that encoder, 10 calls: 54,600 -> 0 page faults and
    1,013 -> 757 ms a call; glibc does not promise it, and a small probe sees a call now and then
    fault a block in again).
    Only while a prediction runs: a large block that the process's own code allocates between
    predictions is mapped, and unmapped when freed, as before (unless the heap has it free)."""
    global _predicting
    if not keep_freed_memory():
        yield
        return
    libc = ctypes.CDLL(None)
    with _predicting_lock:
        _predicting += 1
        if _predicting == 1:
            libc.mallopt(M_MMAP_MAX, 0)
    try:
        yield
    finally:
        with _predicting_lock:
            _predicting -= 1
            if _predicting == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
