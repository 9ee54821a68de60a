"""Runtimes for exported packages: Apple's Core ML on macOS, and the MIL executor on any OS."""
