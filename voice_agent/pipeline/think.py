"""Think: the LLM's reply to the user's words, streamed, with tool calls, and what the history keeps.

`start_reply` takes the LLM gate and opens the reply stream on the turn's own
thread, so bad input or a busy engine ends the turn before anything is relayed.
`think` then runs on a worker: each text piece goes both to the relay (for the
caller) and into the `TextFeed` the speak stage reads. The engine is handed
back (the gate released) once the stream has ended.

Tools: when the reply ends in tool calls (`Reply.tool_calls`; the engine never
lets the call's own text through), the gate is released, the calls run (`act`,
which says the filler if they take long), and the reply is opened again with the
calls and their results, under the gate again, until the model answers or
`MAX_TOOL_ROUNDS` rounds have run (the last answer is then written without
tools). The person hears only what the model says, never a call.

History: a finished reply is kept as is; one cut short by cancel ends in
`INTERRUPTED_SUFFIX`; a failed one is not kept at all. Tool calls and their
results are kept between the user's message and the answer (`ReplyStart.steps`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from voice_agent.core.cancel import is_cancelled
from voice_agent.core.errors import BusyError, InputError
from voice_agent.llm.base import ChatMessage, GenerationSettings, LLMEngine, ReplyStream
from voice_agent.llm.errors import PromptTooLongError
from voice_agent.pipeline.act import MAX_TOOL_ROUNDS, Acting, act, call_message
from voice_agent.pipeline.admission import EngineGate, GatePass
from voice_agent.pipeline.relay import Relay, StageDone, TextOut
from voice_agent.pipeline.speak import SpeechStop, TextFeed
from voice_agent.pipeline.turn import StageCancelled, StageError, TurnClock, TurnTimings

log = logging.getLogger(__name__)

INTERRUPTED_SUFFIX = " …"


@dataclass
class ReplyRequest:
    """Everything needed to (re)open the reply: the engine, its gate and the conversation."""

    llm: LLMEngine
    gate: EngineGate
    history: list[ChatMessage]
    user: ChatMessage
    generation: GenerationSettings
    system_prompt: str | None
    timeout_s: float
    tools: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ReplyStart:
    """A reply the LLM has started: the user's message, its pieces and the engine held for it.

    `steps` (tool calls and results, in order) and `answer_from` (where the answer
    after the last tools starts in the relayed text) are filled in by `think`.
    """

    user: ChatMessage
    pieces: Iterator[str]
    held: GatePass
    started_at: float  # time.perf_counter() once the engine was ours, for `llm_s`
    stream: ReplyStream | None = None
    request: ReplyRequest | None = None
    steps: list[ChatMessage] = field(default_factory=list)
    answer_from: int = 0


def _open(
    request: ReplyRequest, extra: list[ChatMessage], tools: bool, cancel: object
) -> tuple[GatePass, ReplyStream]:
    """Take the gate and open the stream (`StageError` / `StageCancelled` when it cannot)."""
    try:
        held = request.gate.enter(timeout_s=request.timeout_s, cancel=cancel)
    except BusyError as exc:
        raise StageError(exc, "busy") from exc
    if held is None:
        raise StageCancelled
    messages = [*request.history, request.user, *extra]
    try:
        try:
            stream = request.llm.stream_reply(
                messages,
                request.generation,
                cancel=cancel,
                system_prompt=request.system_prompt,
                tools=request.tools if tools and request.tools else None,
            )
        except PromptTooLongError:
            if not (tools and request.tools):
                raise
            # A small context (or many MCP tools) leaves no room for the tool list: answer
            # without tools rather than not at all.
            log.warning(
                "the %d tools do not fit in the model's context; replying without them",
                len(request.tools),
            )
            request.tools = []
            stream = request.llm.stream_reply(
                messages, request.generation, cancel=cancel, system_prompt=request.system_prompt
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
    return held, stream


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
    tools: list[dict[str, Any]] | None = None,
) -> ReplyStart:
    """Take the LLM gate and start the reply to `user_text` after `history`.

    Args:
        tools: the tools the model may call (specs); none: a plain reply.

    Raises:
        StageError: a full queue or busy engine ("busy"), bad input, or an engine
            that could not start ("llm_failed").
        StageCancelled: cancelled while waiting for the engine.
    """
    user: ChatMessage = {"role": "user", "content": user_text}
    request = ReplyRequest(
        llm, gate, history, user, generation, system_prompt, timeout_s, list(tools or [])
    )
    held, stream = _open(request, [], True, cancel)
    return ReplyStart(user, iter(stream), held, time.perf_counter(), stream, request)


def think(
    reply: ReplyStart,
    relay: Relay,
    feed: TextFeed,
    *,
    cancel: object,
    speech: SpeechStop,
    timings: TurnTimings,
    clock: TurnClock,
    acting: Acting | None = None,
) -> None:
    """Worker: relay the reply's pieces and feed them to the speak stage; run its tool calls.

    Ends with `StageDone("think")`, carrying the error when the LLM failed (the
    speech then stops too, without cancelling the caller's token: a failed reply
    is not a "stopped" one). Records `first_token`, `llm_s` and, with tools,
    `answer_token`.
    """
    relayed = 0  # characters relayed so far, over every round
    rounds = 0
    pieces, held, stream = reply.pieces, reply.held, reply.stream
    llm_s = 0.0
    try:
        while True:
            t0 = reply.started_at if rounds == 0 else time.perf_counter()
            said: list[str] = []
            try:
                for piece in pieces:
                    now = clock.elapsed()
                    if timings.first_token is None:
                        timings.first_token = now
                    if rounds and timings.answer_token is None:
                        timings.answer_token = now
                    relay.put(TextOut(piece))
                    feed.put(piece)
                    said.append(piece)
                    relayed += len(piece)
                    if is_cancelled(cancel):
                        break
            finally:
                llm_s += time.perf_counter() - t0
                _close(pieces)
                held.release()
            result = stream.reply if stream is not None else None
            calls = result.tool_calls if result is not None else []
            if not calls or acting is None or reply.request is None or is_cancelled(cancel):
                break
            rounds += 1
            records = act(calls, acting, relay, feed, cancel=cancel, timings=timings, clock=clock)
            reply.steps.append(call_message("".join(said), calls))
            reply.steps.extend(record.message() for record in records)
            reply.answer_from = relayed
            feed.mark_answer()
            if is_cancelled(cancel):
                break
            try:
                held, stream = _open(reply.request, reply.steps, rounds < MAX_TOOL_ROUNDS, cancel)
            except StageCancelled:
                break
            pieces = iter(stream)
        relay.put(StageDone("think"))
    except StageError as exc:
        speech.abort()
        relay.put(StageDone("think", exc.error))
    except Exception as exc:  # relayed to the caller as an error event
        speech.abort()
        relay.put(StageDone("think", exc))
    finally:
        timings.llm_s = llm_s
        feed.close()


def _close(pieces: Iterator[str]) -> None:
    close = getattr(pieces, "close", None)
    if callable(close):
        # Now, on this thread: the engine's own cleanup runs before the gate opens.
        try:
            close()
        except Exception:  # the reply is over either way
            log.debug("closing the reply stream failed", exc_info=True)


def assistant_message(parts: list[str], *, interrupted: bool) -> ChatMessage:
    """What the history keeps of a reply made of `parts` (marked when cut short)."""
    reply = "".join(list(parts))
    if interrupted:
        reply = reply.rstrip() + INTERRUPTED_SUFFIX if reply.strip() else "…"
    return {"role": "assistant", "content": reply}
