"""A hands-free turn started at the user's short pause, before the turn is known to be over.

Hands-free mode ends a turn after `VAD_PAUSE_SECONDS` (0.6 s) of silence, and hears
the words so far after `VAD_EARLY_PAUSE_SECONDS` (0.2 s, `hear.EarlyHearing`). A
`TurnAhead` goes one step further: at that short pause it starts the whole turn
(`Agent.run_turn`: the words, the reply, its voice) on a worker and keeps every event,
so the rest of the pause overlaps the LLM's first phrase instead of coming before it.

- The user says nothing more: the pause grows into the end of the turn with the same
  audio, and the page's turn reads its `events` (what was made so far at once, then
  the rest as it comes), which confirms it: only then may its tools run and its words
  join the history. Nothing reaches the speaker before that, since only the page's
  turn plays audio.
- The user goes on speaking: `discard` cancels it with reason `DISCARDED`, and the
  agent keeps nothing of it (no history, turn count or timings). Its tool calls never
  ran: a tentative turn's calls wait for confirmation (`act.Acting.confirmed`), and so
  does its commit to the history (`Agent.run_turn(confirmed=...)`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from voice_agent.audio.io import SAMPLE_RATE
from voice_agent.core.cancel import DISCARDED, CancelToken
from voice_agent.pipeline.hear import EarlyHearing, same_audio
from voice_agent.pipeline.turn import TurnEvent, reason

log = logging.getLogger(__name__)

# Nobody took it this long after it started: its caller lost it (a race, a bug), and the
# session must not stay held by a turn waiting to be confirmed. The end of the pause that
# confirms one comes within VAD_PAUSE_SECONDS of its start.
UNCLAIMED_S = 30.0


class TurnAhead:
    """One tentative turn on a worker (see the module docstring).

    Args:
        agent: the `Agent` (its `run_turn` takes `confirmed`).
        session: the conversation the turn belongs to.
        samples: the utterance so far, 16 kHz mono float32.
        early: its words being heard (`Agent.hear_early`), handed to the turn.
        speech_ended_at: `time.perf_counter()` when the user stopped speaking.
        controls: what the caller started it with (its settings), for the caller to
            compare with what the turn should have had.
    """

    def __init__(
        self,
        agent: Any,
        session: Any,
        samples: np.ndarray,
        *,
        early: EarlyHearing | None = None,
        speech_ended_at: float | None = None,
        controls: Any = None,
    ) -> None:
        self.samples = samples
        self.controls = controls
        self.token = CancelToken()  # the turn's own: Stop and barge-in cancel it once adopted
        self.confirmed = threading.Event()
        self._events: queue.Queue[TurnEvent | None] = queue.Queue()
        self._worker = threading.Thread(
            target=self._run,
            args=(agent, session, early, speech_ended_at),
            name="turn-ahead",
            daemon=True,
        )
        self._expiry = threading.Timer(UNCLAIMED_S, self.discard)
        self._expiry.daemon = True
        self._worker.start()
        self._expiry.start()

    @property
    def discarded(self) -> bool:
        return self.token.reason == DISCARDED

    @property
    def done(self) -> bool:
        """The worker has finished (the turn ended one way or another)."""
        return not self._worker.is_alive()

    def made_from(self, audio: object) -> bool:
        """Whether `audio` (`(16000, samples)` or a bare 16 kHz array) is this turn's."""
        return same_audio(self.samples, audio)

    def discard(self) -> None:
        """The user went on, or the turn will not be shown (Clear, hands-free switched off,
        the tab closed): drop it. A turn already being read is the reader's to stop."""
        if not self.confirmed.is_set():
            self.token.cancel(DISCARDED)

    def events(self) -> Iterator[TurnEvent]:
        """The turn's events from its start: reading them confirms it (it is the turn now).

        Closing this iterator early cancels the turn ("closed"), as closing
        `Agent.run_turn` does.

        Raises:
            RuntimeError: read twice, or after `discard`.
        """
        if self.confirmed.is_set() or self.token.cancelled:
            raise RuntimeError("a turn ahead is read once, and not after it was cancelled")
        self._expiry.cancel()
        self.confirmed.set()
        finished = False
        try:
            while (event := self._events.get()) is not None:
                yield event
            finished = True
        finally:
            if not finished:
                self.token.cancel("closed")

    def _run(
        self,
        agent: Any,
        session: Any,
        early: EarlyHearing | None,
        speech_ended_at: float | None,
    ) -> None:
        try:
            for event in agent.run_turn(
                session,
                audio=(SAMPLE_RATE, self.samples),
                cancel=self.token,
                speech_ended_at=speech_ended_at,
                early=early,
                confirmed=self.confirmed,
            ):
                self._events.put(event)
        except Exception as exc:  # the adopting turn shows it; a discarded one is forgotten
            if not self.discarded:
                log.exception("the turn started ahead failed")
            self._events.put(TurnEvent("error", f"The turn failed: {reason(exc)}", error=exc))
        finally:
            self._expiry.cancel()
            self._events.put(None)
