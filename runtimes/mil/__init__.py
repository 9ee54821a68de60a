"""The MIL executor: runs an ML Program on any OS (numpy, and torch's CPU kernels for the heavy ops), at the
precision the program declares."""

from runtimes.mil.model import MILModel, MILState, UnsupportedOperation

__all__ = ["MILModel", "MILState", "UnsupportedOperation"]
