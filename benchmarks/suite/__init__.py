"""Benchmark suite behind ``python -m benchmarks.run``: model settings, the per-run worker and the report."""
