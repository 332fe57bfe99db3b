"""The test suite (a regular package, so a dependency that ships its own top-level `tests` cannot shadow it)."""
