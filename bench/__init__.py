"""Benchmarks and load tests: measured as ratios in one run, recorded in docs/BENCHMARKS.md."""
