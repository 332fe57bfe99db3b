"""Admission control: one gate per engine, shared by the REST API and the conversation.

Each engine (LLM, STT, TTS) sits behind one `EngineGate`: `slots` pieces of
work run at once (1 for an engine in this process; more for an LLM on a serving
engine that batches, as its `capabilities.concurrency` declares), at most
`queue_size` more wait, and anything beyond that is refused at once with
`BusyError` (503 + Retry-After on the API) instead of piling up. The gates live
on the `LoadedModels` (`models.gates`), so a UI turn and a REST request on the
same engine queue in the same line, and /health's queue figures count both.

The waiting form one line, first come first served, and each knows its place
(`position`): the Conversation tab shows a waiting user "Queued: position N".

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


class Slots:
    """A lock with `n` places: `acquire` takes one, `release` (from any thread) frees one.

    With one place it is a plain lock (`locked()` while held); `resize` changes
    the number of places, e.g. once an engine has declared its concurrency.
    """

    def __init__(self, n: int = 1) -> None:
        self._n = max(1, n)
        self._held = 0
        self._cond = threading.Condition(threading.Lock())

    @property
    def size(self) -> int:
        return self._n

    @property
    def held(self) -> int:
        return self._held

    def resize(self, n: int) -> None:
        with self._cond:
            self._n = max(1, n)
            self._cond.notify_all()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        with self._cond:
            while self._held >= self._n:
                if not blocking:
                    return False
                if deadline is None:
                    self._cond.wait()
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            self._held += 1
            return True

    def release(self) -> None:
        with self._cond:
            if self._held <= 0:
                raise RuntimeError("release of a Slots place that is not held")
            self._held -= 1
            self._cond.notify()

    def locked(self) -> bool:
        """True when every place is taken."""
        return self._held >= self._n


class EngineGate:
    """`slots` pieces of work at a time on one engine, at most `queue_size` waiting in line.

    Args:
        name: the component ("llm", "stt", "tts"), used in messages.
        queue_size: callers allowed to wait behind the running ones.
        slots: callers served at once (`set_slots` once the engine has declared it).
    """

    def __init__(self, name: str, queue_size: int, slots: int = 1) -> None:
        self.name = name
        self.queue_size = queue_size
        # Released by whichever thread finishes the work, not only the one that took it.
        self.lock = Slots(slots)
        self._count_lock = threading.Lock()
        self._moved = threading.Condition(self._count_lock)  # the line moved on
        self._admitted = 0  # running + waiting
        self._line: list[object] = []  # owners waiting for the engine, first come first
        self._mean_s = 1.0  # moving average of a request's engine time, for Retry-After

    @property
    def slots(self) -> int:
        return self.lock.size

    def set_slots(self, n: int) -> None:
        """Serve `n` callers at once (an engine's declared `capabilities.concurrency`)."""
        self.lock.resize(n)

    @property
    def admitted(self) -> int:
        """Callers running or waiting on this engine (REST requests and turns alike)."""
        return self._admitted

    @property
    def waiting(self) -> int:
        """Callers in line for the engine (not yet running)."""
        return len(self._line)

    def position(self, owner: object) -> int | None:
        """`owner`'s place in line (1: next), or None when it is not waiting.

        `owner` is what the waiter passed as its owner (a turn's `CancelToken`); a
        waiter whose owner has a `token` attribute (the speak stage's stop flag) is
        found by that token too.
        """
        with self._count_lock:
            for place, waiter in enumerate(self._line, start=1):
                if waiter is owner or getattr(waiter, "token", None) is owner:
                    return place
        return None

    def admit(self) -> None:
        """Take a place in the queue, or raise `BusyError` at once when it is full."""
        with self._count_lock:
            if self._admitted >= self.slots + self.queue_size:
                raise BusyError(
                    f"the {self.name} engine is busy ({self._admitted - self.slots} requests "
                    f"waiting, queue size {self.queue_size}); retry later",
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
        return max(1, math.ceil(self._mean_s * max(1, self._admitted) / self.slots))

    def take(self, owner: object, timeout: float) -> bool:
        """Wait at most `timeout` s for the engine, in line as `owner`; True once it is ours.

        The first call puts `owner` at the end of the line; it keeps its place across
        calls until it gets the engine or `step_out` is called. Only the first in line
        may take a free place, so the line is served in order.
        """
        deadline = time.monotonic() + timeout
        with self._moved:
            if not any(waiter is owner for waiter in self._line):
                self._line.append(owner)
        while True:
            with self._moved:
                first = bool(self._line) and self._line[0] is owner
                if not first:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._moved.wait(left)
                    continue
            if self.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                self.step_out(owner)
                return True
            return False

    def step_out(self, owner: object) -> None:
        """Leave the line (given up, cancelled, or served); the next one moves up."""
        with self._moved:
            self._line = [waiter for waiter in self._line if waiter is not owner]
            self._moved.notify_all()

    def enter(
        self, *, timeout_s: float, cancel: object | None = None, owner: object | None = None
    ) -> GatePass | None:
        """Admit, then wait in line for the engine; blocking (for threads, never an event loop).

        Args:
            timeout_s: the longest wait for the engine once admitted.
            cancel: a `CancelToken` (or Event) that ends the wait.
            owner: who waits, for `position`; default `cancel` (a turn's token).

        Returns:
            A `GatePass` to `release()` when the work is done (from any thread), or
            None when `cancel` fired while waiting (the place is given back).

        Raises:
            BusyError: the queue is full, or the engine stayed busy past `timeout_s`.
        """
        self.admit()
        deadline = time.monotonic() + timeout_s
        waiter = owner if owner is not None else cancel if cancel is not None else object()
        try:
            while not self.take(waiter, POLL_S):
                if is_cancelled(cancel):
                    self.step_out(waiter)
                    self.leave()
                    return None
                if time.monotonic() > deadline:
                    raise BusyError(
                        f"the {self.name} engine stayed busy for {timeout_s:g} s; retry later",
                        retry_after_s=self.retry_after_s(),
                    )
        except BaseException:
            self.step_out(waiter)
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
