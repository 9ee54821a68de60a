"""The ``parakeet-coreml`` command line: the application on top of exporters, validation and reports.

Importing it, before numpy loads, cuts how long the executor's BLAS threads (OpenBLAS, inside
numpy) spin after each call: about 0.1 s by default, in which they held the cores that Torch
needed when the two sides of a latency case ran in turn on a 2-core host (Torch's encoder: 24.5
ms a call against 16.1 ms with the spin cut; the executor's own times did not change). A value
already set in the environment is kept.
"""

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # 2**4 cycles, OpenBLAS's least
