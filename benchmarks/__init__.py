"""Benchmarks: tuner comparison, tuner latency and masking speed; results go to results/."""
