"""Training of the small Parakeet-TDT test model: a TDT loss that runs on a CPU, and the training script."""
