"""Admission control: one gate per engine, shared by the REST API and the conversation.

Each engine (LLM, STT, TTS) sits behind one `EngineGate`: one piece of work
runs at a time, at most `queue_size` more wait, and anything beyond that is
refused at once with `BusyError` (503 + Retry-After on the API) instead of
piling up. The gates live on the `LoadedModels` (`models.gates`), so a UI turn
and a REST request on the same engine queue in the same line, and /health's
queue figures count both.

REST requests pass the gate through `voice_agent.server.admission.pump` (async,
on a worker thread); a turn passes it with `EngineGate.enter` (blocking, on the
turn's own threads), one stage at a time.
"""

from __future__ import annotations

import math
import threading
import time

from voice_agent.core.cancel import is_cancelled
from voice_agent.core.errors import BusyError

# How often a blocked caller re-checks its cancel token and deadline (seconds).
POLL_S = 0.05
COMPONENTS = ("llm", "stt", "tts")


class EngineGate:
    """One piece of work at a time on one engine, at most `queue_size` waiting.

    Args:
        name: the component ("llm", "stt", "tts"), used in messages.
        queue_size: callers allowed to wait behind the running one.
    """

    def __init__(self, name: str, queue_size: int) -> None:
        self.name = name
        self.queue_size = queue_size
        # A plain Lock (not RLock): the worker thread that acquires it releases it.
        self.lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._admitted = 0  # running + waiting
        self._mean_s = 1.0  # moving average of a request's engine time, for Retry-After

    @property
    def admitted(self) -> int:
        """Callers running or waiting on this engine (REST requests and turns alike)."""
        return self._admitted

    def admit(self) -> None:
        """Take a place in the queue, or raise `BusyError` at once when it is full."""
        with self._count_lock:
            if self._admitted > self.queue_size:
                raise BusyError(
                    f"the {self.name} engine is busy ({self._admitted - 1} requests waiting, "
                    f"queue size {self.queue_size}); retry later",
                    retry_after_s=self.retry_after_s(),
                )
            self._admitted += 1

    def leave(self) -> None:
        with self._count_lock:
            self._admitted -= 1

    def record(self, seconds: float) -> None:
        self._mean_s = 0.8 * self._mean_s + 0.2 * seconds

    def retry_after_s(self) -> int:
        """A whole number of seconds after which a place is likely free."""
        return max(1, math.ceil(self._mean_s * max(1, self._admitted)))

    def enter(self, *, timeout_s: float, cancel: object | None = None) -> GatePass | None:
        """Admit, then wait for the engine; blocking (for threads, never an event loop).

        Args:
            timeout_s: the longest wait for the engine once admitted.
            cancel: a `CancelToken` (or Event) that ends the wait.

        Returns:
            A `GatePass` to `release()` when the work is done (from any thread), or
            None when `cancel` fired while waiting (the place is given back).

        Raises:
            BusyError: the queue is full, or the engine stayed busy past `timeout_s`.
        """
        self.admit()
        deadline = time.monotonic() + timeout_s
        try:
            while not self.lock.acquire(timeout=POLL_S):
                if is_cancelled(cancel):
                    self.leave()
                    return None
                if time.monotonic() > deadline:
                    raise BusyError(
                        f"the {self.name} engine stayed busy for {timeout_s:g} s; retry later",
                        retry_after_s=self.retry_after_s(),
                    )
        except BaseException:
            self.leave()
            raise
        return GatePass(self)


class GatePass:
    """The engine held by one caller; `release()` (idempotent, any thread) hands it on."""

    def __init__(self, gate: EngineGate) -> None:
        self.gate = gate
        self._started = time.monotonic()
        self._released = False
        self._release_lock = threading.Lock()

    def release(self) -> None:
        with self._release_lock:
            if self._released:
                return
            self._released = True
        self.gate.record(time.monotonic() - self._started)
        self.gate.lock.release()
        self.gate.leave()


def engine_gates(queue_size: int) -> dict[str, EngineGate]:
    """One gate per component, each letting `queue_size` callers wait."""
    return {component: EngineGate(component, queue_size) for component in COMPONENTS}
