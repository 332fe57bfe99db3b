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

Torch's OpenMP runtime (libgomp) keeps a pool of worker threads for every thread that has
run a parallel region, for as long as that thread lives. Once the pools hold more threads
than the machine has cores, every pool's workers stop spinning between regions and sleep
at each barrier: on 2 cores a recogniser decode took 0.68 s instead of 0.38 s while one
other thread merely kept its idle pool, and the LLM wrote a token every 150-190 ms in a
browser turn (the recogniser's thread, still alive, kept its pool) against 90-110 ms alone.
So work that runs torch on a thread that outlives it goes through `in_own_thread`: a fresh
thread that exits, and takes its pool with it, when the work is done.

Splitting is still too slow for the reply's first phrase: two stages on two cores,
each with its own thread pool, are slower together than one after the other (the
voice took 0.5 s for a phrase it makes in 0.1 s alone). The LLM writes several times
faster than the voice speaks, so its words can wait a moment while the voice makes the
phrase a listener is waiting for: a stage named in `first` (the phrase-at-a-time voice)
takes the cores for itself, and the LLM `give_way`s before each step while it computes.

A stage may also leave a core of its share free (`fit(leave)`): the LLM decodes each
token on one core less than it prefills the prompt on (`llm.engine.DECODE_LEAVE`), since
a step of one token is bound by moving the weights, not by arithmetic, and its threads
wait for each other at every barrier when the browser takes part of a core.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

# The stages the others give way to: the voice that speaks a phrase at a time.
VOICE_FIRST = frozenset({"tts"})
POLL_S = 0.05
MAX_WAIT_S = 5.0


class CoreBudget:
    """The cores split among the stages computing now.

    Args:
        cores: the cores to share (default: those this process may run on).
    """

    def __init__(self, cores: int | None = None, first: frozenset[str] = VOICE_FIRST) -> None:
        self.cores = cores or len(os.sched_getaffinity(0))
        self.first = first  # stages the others give way to (`give_way`)
        self._working: set[str] = set()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

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
                self._changed.notify_all()
        return self.fit()

    def give_way(self, stage: str, stop: Callable[[], bool] | None = None, leave: int = 0) -> float:
        """Wait, not counted as working, while a stage in `first` other than `stage`
        computes; then, waited or not, fit this thread to its share (`fit(leave)`).
        Returns the seconds waited.

        Each wait is a phrase's synthesis (a fraction of a second); `stop` (checked every
        `POLL_S`) ends it early, and no single wait outlasts `MAX_WAIT_S`, so a voice that
        hangs cannot stall the LLM for good.
        """
        t0 = time.perf_counter()
        with self._lock:
            blocked = bool((self._working & self.first) - {stage})
            if blocked:
                was_working = stage in self._working
                self._working.discard(stage)
                while (self._working & self.first) - {stage}:
                    if (stop is not None and stop()) or time.perf_counter() - t0 > MAX_WAIT_S:
                        break
                    self._changed.wait(POLL_S)
                if was_working:
                    self._working.add(stage)
        # Fitted even when nothing was waited for: the share may have changed since.
        self.fit(leave)
        return time.perf_counter() - t0 if blocked else 0.0

    @contextmanager
    def stage(self, stage: str) -> Iterator[None]:
        """`stage` computes inside the block."""
        self.working(stage)
        try:
            yield
        finally:
            self.working(stage, False)

    def fit(self, leave: int = 0) -> int:
        """Set this thread's torch threads to its share now, less `leave` cores (at least
        one thread); returns the threads set."""
        threads = max(1, self.share() - leave)
        torch = sys.modules.get("torch")
        if torch is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads


CPU_CORES = CoreBudget()


def in_own_thread(work: Callable[[], T], name: str = "compute") -> T:
    """`work()` on a new thread, waited for: its OpenMP pool ends with it (module docstring).

    The thread takes its torch threads from `CPU_CORES` first; whatever `work` raises is
    raised here.
    """
    box: dict[str, object] = {}

    def run() -> None:
        try:
            CPU_CORES.fit()
            box["value"] = work()
        except BaseException as exc:  # handed to the caller, who raises it
            box["error"] = exc

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        thread.join()
    except BaseException:  # Ctrl-C in the caller: the work still holds what it uses
        thread.join()
        raise
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
