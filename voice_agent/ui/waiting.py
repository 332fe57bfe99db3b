"""While a turn waits in line for an engine: its place, for the Conversation tab's status.

A turn blocks in an engine's admission gate (`voice_agent.pipeline.admission`)
while other conversations, or REST requests, are served; the page must still
say why nothing happens. `watch_queue` iterates the turn's events on a helper
thread and, whenever no event has come for `POLL_S`, asks the gates where the
turn stands in line (`EngineGate.position`, keyed by the turn's `CancelToken`),
yielding a `Queued` each time that changes.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often a waiting turn's place in line is looked up
JOIN_S = 10.0  # how long closing waits for a cancelled turn to wind down
T = TypeVar("T")

WAITING_FOR = {"stt": "speech recognition", "llm": "the language model", "tts": "the voice"}
ONCE_IN = {"stt": "Listening…", "llm": "Thinking…", "tts": "Speaking…"}


@dataclass(frozen=True)
class Queued:
    """The turn's place in line for `component` (1: next); None once it is being served."""

    component: str
    position: int | None

    def status(self) -> str:
        """'Queued: position 2 (waiting for the language model)', or the stage's own status."""
        if self.position is None:
            return ONCE_IN.get(self.component, "Working…")
        waiting_for = WAITING_FOR.get(self.component, self.component)
        return f"Queued: position {self.position} (waiting for {waiting_for})"


def place_in_line(gates: Mapping[str, Any], owner: object) -> Queued | None:
    """Where `owner` waits, if it waits anywhere."""
    for component, gate in gates.items():
        position = gate.position(owner)
        if position is not None:
            return Queued(component, position)
    return None


def watch_queue(
    events: Iterator[T], owner: object, gates: Mapping[str, Any], poll_s: float = POLL_S
) -> Generator[T | Queued, None, None]:
    """`events` as they come, with a `Queued` whenever the turn's place in line changes.

    Without gates (a fake agent) the events pass straight through. Closing this
    generator stops reading: cancel the turn first, so it ends within a step.
    """
    if not gates:
        yield from events
        return
    out: queue.Queue[tuple[str, Any]] = queue.Queue()
    stop = threading.Event()

    def pump() -> None:
        try:
            for event in events:
                out.put(("event", event))
                if stop.is_set():
                    break
        except BaseException as exc:  # raised on the caller's thread, in order
            out.put(("error", exc))
        finally:
            close = getattr(events, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # the turn is over either way
                    log.debug("closing the turn's events failed", exc_info=True)
            out.put(("end", None))

    helper = threading.Thread(target=pump, name="turn-events", daemon=True)
    helper.start()
    last: Queued | None = None
    try:
        while True:
            try:
                kind, value = out.get(timeout=poll_s)
            except queue.Empty:
                now = place_in_line(gates, owner)
                if now is None and last is not None and last.position is not None:
                    now = Queued(last.component, None)  # out of the line: being served
                if now is not None and now != last:
                    last = now
                    yield now
                continue
            if kind == "end":
                return
            if kind == "error":
                raise value
            if last is not None and last.position is not None:
                last = Queued(last.component, None)
            yield value
    finally:
        stop.set()
        helper.join(JOIN_S)
