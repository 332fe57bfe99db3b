"""Relay: the stage workers' output, merged into the turn's events in arrival order.

The think and speak stages run on their own threads and `put` typed messages
(`TextOut`, `AudioOut`, `ToolOut`, `FillerOut`, `SpeechFailed`, `StageDone`) here; `Relay.events`, on
the caller's thread, turns them into `TurnEvent`s as they arrive, until every
started stage is done. Text after a cancel is kept (it belongs to the
interrupted reply) but not relayed; audio after a cancel is dropped. A worker
that ignores its cancel is given `WORKER_JOIN_S` to stop, so it cannot hang the
caller.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Literal

from voice_agent.core.cancel import CancelToken
from voice_agent.pipeline.turn import TurnEvent, reason
from voice_agent.tools.base import ToolRecord
from voice_agent.tts.base import AudioChunk

log = logging.getLogger(__name__)

Stage = Literal["think", "speak"]
# How long the turn waits for its workers to wind down after a cancel; an engine
# that ignores its cancel token must not hang the caller.
WORKER_JOIN_S = 10.0
_POLL_S = 0.05


@dataclass(frozen=True)
class TextOut:
    """A piece of the reply's text, from the think stage."""

    text: str


@dataclass(frozen=True)
class AudioOut:
    """A chunk of speech, from the speak stage."""

    chunk: AudioChunk


@dataclass(frozen=True)
class ToolOut:
    """A tool call started (status "running") or ended, from the think stage."""

    record: ToolRecord


@dataclass(frozen=True)
class FillerOut:
    """The short phrase said while a tool runs long ("One moment.")."""

    text: str


@dataclass(frozen=True)
class SpeechFailed:
    """The speak stage stopped (engine error or full queue); the reply goes on as text."""

    error: Exception


@dataclass(frozen=True)
class StageDone:
    """A stage's worker has finished; `error` is set when the LLM failed mid-reply."""

    stage: Stage
    error: Exception | None = None


Message = TextOut | AudioOut | ToolOut | FillerOut | SpeechFailed | StageDone


@dataclass(frozen=True)
class Relayed:
    """How the relay ended: `llm_error` when the reply failed mid-way."""

    llm_error: Exception | None = None


class Relay:
    """The stage workers of one turn and the queue between them and the caller.

    Args:
        name: names the worker threads (the session id).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.Queue[Message] = queue.Queue()
        self._pending: set[Stage] = set()
        self._workers: list[threading.Thread] = []

    def put(self, message: Message) -> None:
        """Hand a message to the caller (any thread)."""
        self._queue.put(message)

    def start(self, stage: Stage, work: Callable[[], None]) -> None:
        """Run a stage on its own thread; `work` must end by putting `StageDone(stage)`."""
        self._pending.add(stage)
        worker = threading.Thread(target=work, name=f"turn-{stage}-{self.name}", daemon=True)
        self._workers.append(worker)
        worker.start()

    def events(
        self, parts: list[str], *, cancel: CancelToken, stopped: Callable[[], bool]
    ) -> Generator[TurnEvent, None, Relayed]:
        """The turn's `text`, `audio` and `notice` events as they arrive.

        Args:
            parts: the reply's text so far; every piece is appended, relayed or not.
            cancel: the caller's token: no text is relayed once it is cancelled.
            stopped: True once speech must stop (a cancel or a failed reply).

        Returns:
            (as the generator's value) how it ended, once every stage is done and
            the workers are joined.
        """
        pending = set(self._pending)
        llm_error: Exception | None = None
        cancelled_at: float | None = None
        while pending:
            try:
                message = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if stopped():
                    cancelled_at = cancelled_at or time.monotonic()
                    if time.monotonic() - cancelled_at > WORKER_JOIN_S:
                        log.warning("turn workers did not stop %.0f s after cancel", WORKER_JOIN_S)
                        break
                continue
            if isinstance(message, TextOut):
                parts.append(message.text)
                if not cancel.cancelled:
                    yield TurnEvent("text", message.text)
            elif isinstance(message, AudioOut):
                if not stopped():
                    yield TurnEvent("audio", audio=message.chunk)
            elif isinstance(message, ToolOut):
                yield TurnEvent("tool", message.record.name, tool=message.record)
            elif isinstance(message, FillerOut):
                if not cancel.cancelled:
                    yield TurnEvent("notice", message.text, code="filler")
            elif isinstance(message, SpeechFailed):
                log.warning("speech stopped mid-reply: %r", message.error)
                yield TurnEvent(
                    "notice",
                    f"Speech stopped: {reason(message.error)}. The reply continues as text.",
                    code="tts_failed",
                    error=message.error,
                )
            else:
                if message.error is not None:
                    llm_error = message.error
                pending.discard(message.stage)
        for worker in self._workers:
            worker.join(timeout=WORKER_JOIN_S)
        return Relayed(llm_error)
