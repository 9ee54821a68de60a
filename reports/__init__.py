"""Reports: metadata.json's validation, latency and quantization blocks, pytest-benchmark's JSON, and plots."""
