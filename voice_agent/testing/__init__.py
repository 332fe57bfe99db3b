"""Builders of tiny random-weight checkpoints for tests, CI and benchmarks (no network)."""
