"""The MIL executor: runs an exported ML Program on any OS, numpy arithmetic, declared precision."""

from runtimes.mil.model import MILModel, UnsupportedOperation

__all__ = ["MILModel", "UnsupportedOperation"]
