"""Benchmarks: one module per section, each `run(quick) -> dict`, run in its own process."""
