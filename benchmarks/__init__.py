"""Benchmarks of the pipeline's stages (`python -m benchmarks.<name>`); results go to benchmarks/results/."""
