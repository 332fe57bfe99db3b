"""Think: the LLM's reply to the user's words, streamed, and what the history keeps of it.

`start_reply` takes the LLM gate and opens the reply stream on the turn's own
thread, so bad input or a busy engine ends the turn before anything is relayed.
`think` then runs on a worker: each text piece goes both to the relay (for the
caller) and into the `TextFeed` the speak stage reads. The engine is handed
back (the gate released) once the stream has ended.

History: a finished reply is kept as is; one cut short by cancel ends in
`INTERRUPTED_SUFFIX`; a failed one is not kept at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from voice_agent.core.cancel import is_cancelled
from voice_agent.core.errors import BusyError, InputError
from voice_agent.llm.base import ChatMessage, GenerationSettings, LLMEngine
from voice_agent.pipeline.admission import EngineGate, GatePass
from voice_agent.pipeline.relay import Relay, StageDone, TextOut
from voice_agent.pipeline.speak import SpeechStop, TextFeed
from voice_agent.pipeline.turn import StageCancelled, StageError, TurnClock, TurnTimings

log = logging.getLogger(__name__)

INTERRUPTED_SUFFIX = " …"


@dataclass
class ReplyStart:
    """A reply the LLM has started: the user's message, its pieces and the engine held for it."""

    user: ChatMessage
    pieces: Iterator[str]
    held: GatePass
    started_at: float  # time.perf_counter() once the engine was ours, for `llm_s`


def start_reply(
    llm: LLMEngine,
    gate: EngineGate,
    *,
    history: list[ChatMessage],
    user_text: str,
    generation: GenerationSettings,
    system_prompt: str | None,
    cancel: object,
    timeout_s: float,
) -> ReplyStart:
    """Take the LLM gate and start the reply to `user_text` after `history`.

    Raises:
        StageError: a full queue or busy engine ("busy"), bad input, or an engine
            that could not start ("llm_failed").
        StageCancelled: cancelled while waiting for the engine.
    """
    user: ChatMessage = {"role": "user", "content": user_text}
    try:
        held = gate.enter(timeout_s=timeout_s, cancel=cancel)
    except BusyError as exc:
        raise StageError(exc, "busy") from exc
    if held is None:
        raise StageCancelled
    started_at = time.perf_counter()
    try:
        stream = llm.stream_reply(
            [*history, user], generation, cancel=cancel, system_prompt=system_prompt
        )
    except BaseException as exc:
        held.release()
        if isinstance(exc, BusyError):
            raise StageError(exc, "busy") from exc
        if isinstance(exc, InputError):
            raise StageError(exc) from exc
        if isinstance(exc, Exception):
            log.exception("the LLM could not start")
            raise StageError(exc, "llm_failed", f"The reply failed: {exc}") from exc
        raise
    return ReplyStart(user, iter(stream), held, started_at)


def think(
    reply: ReplyStart,
    relay: Relay,
    feed: TextFeed,
    *,
    cancel: object,
    speech: SpeechStop,
    timings: TurnTimings,
    clock: TurnClock,
) -> None:
    """Worker: relay the reply's pieces and feed them to the speak stage.

    Ends with `StageDone("think")`, carrying the error when the LLM failed (the
    speech then stops too, without cancelling the caller's token: a failed reply
    is not a "stopped" one). Records `first_token` and `llm_s`.
    """
    pieces = reply.pieces
    try:
        for piece in pieces:
            if timings.first_token is None:
                timings.first_token = clock.elapsed()
            relay.put(TextOut(piece))
            feed.put(piece)
            if is_cancelled(cancel):
                break
        relay.put(StageDone("think"))
    except Exception as exc:  # relayed to the caller as an error event
        speech.abort()
        relay.put(StageDone("think", exc))
    finally:
        timings.llm_s = time.perf_counter() - reply.started_at
        feed.close()
        close = getattr(pieces, "close", None)
        if callable(close):
            # Now, on this thread: the engine's own cleanup runs before the gate opens.
            try:
                close()
            except Exception:  # the reply is over either way
                log.debug("closing the reply stream failed", exc_info=True)
        reply.held.release()


def assistant_message(parts: list[str], *, interrupted: bool) -> ChatMessage:
    """What the history keeps of a reply made of `parts` (marked when cut short)."""
    reply = "".join(list(parts))
    if interrupted:
        reply = reply.rstrip() + INTERRUPTED_SUFFIX if reply.strip() else "…"
    return {"role": "assistant", "content": reply}
