"""The CPU's cores shared among the stages that compute at the same time.

While the LLM writes and the voice speaks, both run torch on the CPU. Each asking
for every core (torch's default) puts twice as many busy threads as cores on the
machine, and OpenMP threads that wait for each other on a shared core lose far
more than half their speed. So a stage says when it computes and when it waits
(`working`), and before each step calls `fit()`: the cores are split evenly among
the stages working now, and a stage alone gets them all.

`torch.set_num_threads` is per thread for torch's OpenMP pool (each worker thread
keeps its own count), so each stage sets only its own; it also becomes the count a
new thread starts with, which is why every stage sets its own before it computes.
Torch is imported only when a stage already uses it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CoreBudget:
    """The cores split among the stages computing now.

    Args:
        cores: the cores to share (default: those this process may run on).
    """

    def __init__(self, cores: int | None = None) -> None:
        self.cores = cores or len(os.sched_getaffinity(0))
        self._working: set[str] = set()
        self._lock = threading.Lock()

    def share(self) -> int:
        """Threads each working stage gets now (all the cores when one or none works)."""
        with self._lock:
            working = len(self._working)
        return max(1, self.cores // max(1, working))

    def working(self, stage: str, on: bool = True) -> int:
        """Say whether `stage` computes now, and fit this thread to the new share."""
        with self._lock:
            if on:
                self._working.add(stage)
            else:
                self._working.discard(stage)
        return self.fit()

    @contextmanager
    def stage(self, stage: str) -> Iterator[None]:
        """`stage` computes inside the block."""
        self.working(stage)
        try:
            yield
        finally:
            self.working(stage, False)

    def fit(self) -> int:
        """Set this thread's torch threads to its share now; returns the share."""
        share = self.share()
        torch = sys.modules.get("torch")
        if torch is not None and torch.get_num_threads() != share:
            torch.set_num_threads(share)
        return share


CPU_CORES = CoreBudget()
