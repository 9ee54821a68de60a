"""Kernels for MIL operations, written from the MIL operation specification in numpy.

Each kernel takes the op's inputs by their MIL parameter names and returns its outputs; the
executor casts every output to the type the program declares. A kernel's signature is the list
of parameters it implements: an op that carries any other parameter is refused at load time, and
a parameter value a kernel does not implement raises ``Unsupported`` naming it. One module per
family of ops; importing the package registers them all.
"""

from runtimes.mil.ops import (  # noqa: F401  (importing a family registers its kernels)
    compression,
    control,
    elementwise,
    image,
    linear,
    normalization,
    random,
    recurrent,
    reductions,
    shape,
)
from runtimes.mil.ops.base import KERNELS, Unsupported

__all__ = ["KERNELS", "Unsupported"]
