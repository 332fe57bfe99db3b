"""Every conversation's timers: set by the timer tools (`tools.timers`), rung by its tab.

Nothing here rings by itself: the Conversation tab asks `take_rung` about once a
second and speaks `Timer.announcement()` ("Your 10 minute timer is done.") for
each timer that is due.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

MAX_TIMERS = 20  # per conversation
MAX_SECONDS = 24 * 3600.0
MIN_SECONDS = 1.0


@dataclass
class Timer:
    """One timer: when it is due (`time.monotonic()`), and what it is for."""

    id: int
    session_id: str
    seconds: float
    label: str = ""
    due: float = 0.0
    set_at: float = field(default_factory=time.time)

    def remaining(self, now: float | None = None) -> float:
        return max(0.0, self.due - (time.monotonic() if now is None else now))

    @property
    def name(self) -> str:
        """'10 minute' or the label, as in "your 10 minute timer"."""
        return self.label or f"{duration_words(self.seconds)}"

    def announcement(self) -> str:
        return f"Your {self.name} timer is done."

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "duration": duration_words(self.seconds),
            "remaining": duration_words(self.remaining()),
        }


def duration_words(seconds: float) -> str:
    """12 -> '12 second', 600 -> '10 minute', 5400 -> '1 hour 30 minute' (as "a 10 minute timer")."""
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{n} {unit}" for n, unit in ((hours, "hour"), (minutes, "minute"), (secs, "second")) if n
    ]
    return " ".join(parts) or "0 second"


class TimerBoard:
    """Every conversation's timers (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._timers: dict[str, list[Timer]] = {}
        self._ids = itertools.count(1)

    def set(self, session_id: str, seconds: float, label: str = "") -> Timer:
        """A new timer (ValueError: out of range, or too many for this conversation)."""
        if not MIN_SECONDS <= seconds <= MAX_SECONDS:
            raise ValueError(
                f"a timer runs from {MIN_SECONDS:g} second to {MAX_SECONDS / 3600:g} hours, "
                f"not {duration_words(seconds)}."
            )
        with self._lock:
            timers = self._timers.setdefault(session_id, [])
            if len(timers) >= MAX_TIMERS:
                raise ValueError(f"this conversation already has {MAX_TIMERS} timers running.")
            timer = Timer(next(self._ids), session_id, seconds, label.strip()[:60])
            timer.due = time.monotonic() + seconds
            timers.append(timer)
            return timer

    def pending(self, session_id: str) -> list[Timer]:
        with self._lock:
            return sorted(self._timers.get(session_id, []), key=lambda t: t.due)

    def cancel(self, session_id: str, which: str = "") -> list[Timer]:
        """Cancel the timers whose label or id is `which` (all of them for "")."""
        key = which.strip().lower()
        with self._lock:
            timers = self._timers.get(session_id, [])
            gone = [t for t in timers if not key or key in (t.label.lower(), str(t.id))]
            self._timers[session_id] = [t for t in timers if t not in gone]
            return gone

    def take_rung(self, session_id: str, now: float | None = None) -> list[Timer]:
        """The timers now due, removed from the board (each rings once)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            timers = self._timers.get(session_id, [])
            rung = [t for t in timers if t.due <= now]
            self._timers[session_id] = [t for t in timers if t.due > now]
            return rung

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._timers.pop(session_id, None)
