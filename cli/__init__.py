"""The ``parakeet-coreml`` command line: the application on top of exporters, validation and reports.

Importing it, before numpy loads, cuts how long the executor's BLAS threads (OpenBLAS, inside
numpy) spin after each call, by default long enough to hold the cores that Torch needed when
the two sides of a latency case ran in turn on a small host (the README's Latency section has the
measurement). A value already set in the environment is kept.
"""

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # 2**4 cycles, OpenBLAS's least
