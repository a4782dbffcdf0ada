"""Benchmarks: perf_analyzer runs, end-to-end load generator, baselines."""
