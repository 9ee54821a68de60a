"""Runtimes for exported packages (Core ML on macOS, the MIL executor everywhere): the executor issue."""
