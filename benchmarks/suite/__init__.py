"""The side-by-side benchmarks `python -m benchmarks.run` drives: each module's `run(opts)` returns a Section."""
