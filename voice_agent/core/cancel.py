"""Cooperative cancellation shared by the LLM, TTS and the turn pipeline."""

from __future__ import annotations

import threading

# The cancel reason of work whose result will not be used (a guess the user's next words
# made wrong): a tentative turn cancelled with it leaves nothing behind.
DISCARDED = "discarded"


class CancelToken:
    """A flag that a running generation checks once per step.

    Set by barge-in, the Stop button or a client disconnect. Also usable where
    a `threading.Event` is expected (`is_set`, `set`).
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._event.is_set():
            self.reason = reason
        self._event.set()

    set = cancel

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


def wait_unless_cancelled(event: threading.Event, cancel: object | None, poll_s: float) -> bool:
    """Wait until `event` is set (True) or `cancel` fires first (False), looking every
    `poll_s`: for waits that a cancel must end within a step."""
    while not event.wait(poll_s):
        if is_cancelled(cancel):
            return False
    return True


def is_cancelled(token: object | None) -> bool:
    """True when `token` (CancelToken, threading.Event or None) says stop."""
    if token is None:
        return False
    flag = getattr(token, "cancelled", None)
    if isinstance(flag, bool):
        return flag
    is_set = getattr(token, "is_set", None)
    return bool(is_set()) if callable(is_set) else False
