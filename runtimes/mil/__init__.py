"""The MIL executor: runs an exported ML Program on any OS, numpy arithmetic, declared precision."""

from runtimes.mil.model import MILModel, MILState, UnsupportedOperation

__all__ = ["MILModel", "MILState", "UnsupportedOperation"]
