"""The pytest report plugin (metadata.json validation and latency blocks, plots): the parity and latency issues."""
