"""Training of the small Parakeet-TDT test model (issue 7): a CPU TDT loss, synthetic data, the script."""
