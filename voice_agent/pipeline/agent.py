"""One conversation turn, made of stages: hear -> think -> speak -> relay.

`Agent.run_turn` is a generator of `TurnEvent`s, yielded as they happen:

    transcript -> text, text, ... (audio interleaved as soon as the TTS has some) -> done

Each stage is one module of this package, and typed values pass between them:

- `hear`: the user's words. A recording is decoded and run through the speech
  gate once, and the STT engine gets the result as a `Speech` value (`Heard`).
- `think`: the LLM's reply to them, streamed on a worker; each piece goes to
  the caller and into a `TextFeed`; what the history keeps of the reply. When
  the model calls tools, `act` runs them (a filler is said if they take long)
  and the model answers with their results.
- `speak`: the feed's text -> phrases (one `Phrasing` for the one splitter,
  chosen from the engine's declared `capabilities`) -> audio chunks, on a
  second worker, so speech starts after the first phrase instead of after the
  whole reply.
- `relay`: the workers' messages turned into the caller's events in arrival
  order, with their timings.

This module keeps the orchestration: sessions, one turn at a time per session,
cancel, and the end of every turn, exactly one `done` or `error` event carrying
its `TurnTimings`. Each stage passes its engine's admission gate
(`voice_agent.pipeline.admission`, shared with the REST API) while it runs.

Barge-in and Stop: `Agent.cancel(session)` (or the turn's own `CancelToken`)
stops the LLM and the TTS within one step; the words already produced stay in
the session's history with " …" appended and `Session.interrupted` set for
that message, and the next turn starts cleanly. A second turn on a busy
session waits `busy_wait_s` for the first and is otherwise refused with a
`BusyError` event; turns never interleave.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

import numpy as np

from voice_agent.core.cancel import CancelToken, wait_unless_cancelled
from voice_agent.core.config import Settings
from voice_agent.core.errors import BusyError, InputError, ModelUnavailableError
from voice_agent.llm.base import ChatMessage, GenerationSettings
from voice_agent.pipeline.act import FILLER, FILLER_AFTER_S, Acting
from voice_agent.pipeline.hear import (
    NO_SPEECH_HINT,
    EarlyHearing,
    Heard,
    hear_audio,
    hear_text,
    stt_unavailable,
)
from voice_agent.pipeline.models import LoadedModels, get_models
from voice_agent.pipeline.relay import WORKER_JOIN_S, Relay, Relayed
from voice_agent.pipeline.speak import (
    FIRST_PHRASE_WORDS,
    MAX_UNSPOKEN_WORDS,
    SpeechStop,
    TextFeed,
    phrasing_for,
    speak,
)
from voice_agent.pipeline.think import (
    INTERRUPTED_SUFFIX,
    ReplyStart,
    assistant_message,
    start_reply,
    think,
)
from voice_agent.pipeline.turn import (
    STAGES,
    EventKind,
    StageCancelled,
    StageError,
    TurnClock,
    TurnEvent,
    TurnTimings,
    code_for,
    reason,
)
from voice_agent.stt.base import AudioInput
from voice_agent.tools.base import ToolContext
from voice_agent.tools.clock import local_zone
from voice_agent.tools.timer_board import TimerBoard
from voice_agent.tools.toolbox import Toolbox
from voice_agent.tts.base import TTSEngine

__all__ = [
    "FILLER",
    "FIRST_PHRASE_WORDS",
    "INTERRUPTED_SUFFIX",
    "MAX_UNSPOKEN_WORDS",
    "NO_SPEECH_HINT",
    "RECENT_TURNS",
    "STAGES",
    "WORKER_JOIN_S",
    "Agent",
    "EventKind",
    "Session",
    "StageResult",
    "TurnEvent",
    "TurnTimings",
    "get_agent",
]

log = logging.getLogger(__name__)

RECENT_TURNS = 50
_POLL_S = 0.05
T = TypeVar("T")


@dataclass
class StageResult:
    """One stage of the self-test."""

    stage: str
    ok: bool
    summary: str = ""
    seconds: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Turn:
    """A running turn's state, shared with whoever supersedes it after a cancel."""

    token: CancelToken
    user: ChatMessage | None = None
    parts: list[str] = field(default_factory=list)
    reply: ReplyStart | None = None  # its steps: the tool calls and results, in order
    committed: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    confirmed: threading.Event | None = None  # a tentative turn's (`run_turn(confirmed=...)`)

    @property
    def dropped(self) -> bool:
        """A tentative turn cancelled before it was confirmed: nothing of it is kept."""
        return self.confirmed is not None and not self.confirmed.is_set() and self.token.cancelled


@dataclass
class Session:
    """One conversation: its history, system prompt, sampling settings and voice.

    `history` holds only valid `ChatMessage`s (what the LLM gets), tool calls and
    their results included; `interrupted` runs parallel to it and is True for
    replies cut short by cancel (their content ends with " …"). Sessions share
    nothing.

    Tools: `tools` switches them off for this conversation; `allow_actions` is the
    user's consent to tools that act (None: TOOLS_ALLOW_ACTIONS); `ring_timers` says
    the conversation has a tab that rings its timers (the UI sets it).
    """

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    history: list[ChatMessage] = field(default_factory=list)
    system_prompt: str | None = None
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    voice: str | None = None
    interrupted: list[bool] = field(default_factory=list)
    turns: int = 0
    tools: bool = True
    allow_actions: bool | None = None
    ring_timers: bool = False
    _mutex: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _turn: _Turn | None = field(default=None, repr=False)

    @property
    def busy(self) -> bool:
        turn = self._turn
        return turn is not None and not turn.done.is_set()

    def clear(self) -> None:
        """Forget the conversation (settings stay)."""
        with self._mutex:
            self.history.clear()
            self.interrupted.clear()

    def transcript(self) -> str:
        """The conversation as plain text, one 'Role: content' paragraph per message."""
        names = {"user": "You", "assistant": "Assistant", "system": "System", "tool": "Tool"}
        lines = []
        for m in self.history:
            text = m["content"]
            for call in m.get("tool_calls", []):
                function = call["function"]
                text = f"{text} [calls {function['name']}({json.dumps(function['arguments'])})]"
            lines.append(f"{names[m['role']]}: {text.strip()}")
        return "\n\n".join(lines)


class Agent:
    """Runs conversation turns on the shared models.

    Args:
        models: the cached loader's `LoadedModels`.
        busy_wait_s: how long a turn waits for the same session's running turn.
        max_unspoken_words: words without a sentence end after which speech is cut
            there (0: never), so a run-on reply does not hold speech back.
        first_phrase_words: speak the first phrase after this many words without
            waiting for the sentence to end (0: off; Dia2 phrases words itself).
        tools: the tools turns may use (default `Toolbox.from_settings`, built on first use).
        filler_after_s: say the filler when tools run longer than this (seconds).
    """

    def __init__(
        self,
        models: LoadedModels,
        *,
        busy_wait_s: float = 2.0,
        max_unspoken_words: int = MAX_UNSPOKEN_WORDS,
        first_phrase_words: int = FIRST_PHRASE_WORDS,
        tools: Toolbox | None = None,
        filler_after_s: float = FILLER_AFTER_S,
    ) -> None:
        self.models = models
        self.busy_wait_s = busy_wait_s
        self.max_unspoken_words = max_unspoken_words
        self.first_phrase_words = first_phrase_words
        self.filler_after_s = filler_after_s
        self.timers = TimerBoard()
        self._toolbox = tools
        self._toolbox_lock = threading.Lock()
        self._timings: deque[TurnTimings] = deque(maxlen=RECENT_TURNS)
        self._timings_lock = threading.Lock()

    @property
    def settings(self) -> Settings:
        return self.models.settings

    @property
    def toolbox(self) -> Toolbox:
        """The tools on offer (built from the settings on first use: MCP servers connect)."""
        with self._toolbox_lock:
            if self._toolbox is None:
                self._toolbox = Toolbox.from_settings(self.settings)
            return self._toolbox

    def prime(self, wait_s: float | None = None) -> bool:
        """Prefill what every conversation's prompt starts with, once, before anyone talks.

        The LLM engine keeps its last prompt's KV cache (`OpenSourceLLM`, "PromptCache"),
        and every conversation starts with the same system prompt and tool list (hundreds
        of tokens with the tools): prefilled here, the first turn computes only its own
        words. Waits up to `wait_s` for the models to load; True if the prompt was primed.
        """
        if not self.models.wait(wait_s) or self.models.status.get("llm") != "ready":
            return False
        return self._prefill(self.new_session(), "Hello.", self.settings.server_timeout_s)

    def read_ahead(self, session: Session, words: str) -> bool:
        """Prefill `session`'s next prompt with `words` as the start of the user's message.

        The user paused (the words so far were heard early) and went on: the words are
        theirs whatever follows, so while they talk the LLM computes them into its KV
        cache, and the turn prefills only what came after. Only when the LLM is free (no
        turn or request runs or waits on it): never a wait for anyone. True if it did.
        """
        if not words.strip() or self.models.status.get("llm") != "ready":
            return False
        if self.models.gates["llm"].admitted:
            return False
        return self._prefill(session, words, 0.0)

    def _prefill(self, session: Session, words: str, wait_s: float) -> bool:
        """Run the LLM for one token on `session`'s prompt with `words` as the user's next
        message, so its KV cache holds that prompt (`reuse_prompt_cache` engines only)."""
        try:
            llm = self.models.require("llm")
            if not getattr(llm, "reuse_prompt_cache", False):
                return False  # nothing to keep: a serving engine, or the cache is off
            tools = self.toolbox.specs() if session.tools and llm.capabilities.tools else None
            held = self.models.gates["llm"].enter(timeout_s=wait_s)
        except (BusyError, ModelUnavailableError):
            return False
        if held is None:
            return False
        try:
            llm.generate_reply(
                [*session.history, {"role": "user", "content": words}],
                GenerationSettings(max_new_tokens=1, temperature=0.0),
                system_prompt=session.system_prompt,
                tools=tools or None,
            )
        except Exception as exc:  # the turn just prefills it all itself
            log.warning("could not prefill the prompt: %s", exc)
            return False
        finally:
            held.release()
        return True

    def describe_tools(self) -> dict[str, Any]:
        """For the Diagnostics tab: each tool and where it came from, and the MCP servers."""
        return {
            **self.toolbox.describe(),
            "allow_actions_default": self.settings.tools_allow_actions,
        }

    def _acting(
        self,
        session: Session,
        token: CancelToken,
        spoken: bool,
        confirmed: threading.Event | None = None,
    ) -> Acting:
        zone = self.settings.time_zone
        if zone:
            from zoneinfo import ZoneInfo

            time_zone: Any = ZoneInfo(zone)
        else:
            time_zone = local_zone()
        allow = session.allow_actions
        context = ToolContext(
            session_id=session.id,
            cancel=token,
            allow_actions=self.settings.tools_allow_actions if allow is None else allow,
            timers=self.timers if session.ring_timers else None,
            time_zone=time_zone,
        )
        return Acting(
            self.toolbox,
            context,
            speak_filler=spoken,
            filler_after_s=self.filler_after_s,
            confirmed=confirmed,
        )

    # --- sessions ---------------------------------------------------------------------------

    def new_session(self, **overrides: Any) -> Session:
        """A fresh session. Overrides: `system_prompt`, `voice`, `generation`, `history`, `id`,
        or any `GenerationSettings` field (`temperature`, `max_new_tokens`, ...)."""
        generation = overrides.pop("generation", None) or GenerationSettings()
        sampling = {k: overrides.pop(k) for k in list(overrides) if hasattr(generation, k)}
        if sampling:
            generation = replace(generation, **sampling)
        allowed = {
            "system_prompt",
            "voice",
            "history",
            "id",
            "tools",
            "allow_actions",
            "ring_timers",
        }
        unknown = set(overrides) - allowed
        if unknown:
            raise TypeError(f"unknown session settings: {', '.join(sorted(unknown))}")
        session = Session(generation=generation, **overrides)
        session.history = [dict(m) for m in session.history]  # type: ignore[misc]
        session.interrupted = [False] * len(session.history)
        return session

    def cancel(self, session: Session, reason: str = "stopped") -> bool:
        """Stop the session's running turn (barge-in, Stop, disconnect). False when idle."""
        turn = session._turn
        if turn is None or turn.done.is_set() or turn.token.cancelled:
            return False
        turn.token.cancel(reason)
        log.info("session %s: turn cancelled (%s)", session.id, reason)
        return True

    # --- the turn ---------------------------------------------------------------------------

    def run_turn(
        self,
        session: Session,
        *,
        audio: AudioInput | None = None,
        text: str | None = None,
        cancel: CancelToken | None = None,
        speech_ended_at: float | None = None,
        speak: bool = True,
        early: EarlyHearing | None = None,
        confirmed: threading.Event | None = None,
    ) -> Iterator[TurnEvent]:
        """Run one turn and yield its events as they happen.

        Args:
            session: the conversation.
            audio: the user's recording (any `AudioInput`), or
            text: the typed message (exactly one of the two).
            cancel: a token the caller can cancel; `Agent.cancel` cancels it too.
            speech_ended_at: `time.perf_counter()` when the user stopped speaking
                (hands-free knows it); default: now.
            speak: False for a reply in text only (no TTS, no filler).
            early: `audio` heard ahead (`hear_early`, hands-free): its words are used when
                it heard this very audio and came to a result (waiting for it if it is
                still running); otherwise the turn transcribes as usual. Discarded after.
            confirmed: makes the turn tentative (`pipeline.ahead.TurnAhead`: started at
                the user's short pause): its tool calls and its commit to the history
                wait until this is set, and a cancel before that (for whatever reason;
                `DISCARDED` says the user went on) leaves nothing of it behind: no
                history, turn number or timings, and `early` is left to its owner.
        """
        clock = TurnClock(speech_ended_at if speech_ended_at is not None else time.perf_counter())
        timings = TurnTimings(session_id=session.id, input="audio" if audio is not None else "text")
        if (audio is None) == (text is None):
            err = InputError("Send either audio or text for a turn (exactly one of them).")
            yield self._error(err, timings, clock)
            return
        token = cancel or CancelToken()
        turn = _Turn(token, confirmed=confirmed)
        try:
            self._enter(session, turn)
        except BusyError as exc:
            yield self._error(exc, timings, clock, code="busy")
            return
        if confirmed is None:  # a tentative turn is numbered when it is kept
            with session._mutex:
                session.turns += 1
                timings.turn = session.turns
        timings.ahead = confirmed is not None
        finished = False
        try:
            yield from self._turn_events(
                session, turn, timings, clock, audio, text, speak, early, confirmed
            )
            finished = True
        finally:
            if not finished:
                # The caller closed the generator (client gone) or an error escaped: stop
                # the workers; the words so far are kept as an interrupted reply.
                token.cancel("closed")
            if early is not None and not turn.dropped:
                early.discard()  # used or not, nothing may take it again
            self._leave(session, turn, interrupted=True)

    def _enter(self, session: Session, turn: _Turn) -> None:
        deadline = time.monotonic() + self.busy_wait_s
        while True:
            with session._mutex:
                current = session._turn
                if current is None or current.done.is_set():
                    session._turn = turn
                    return
                if current.token.cancelled and time.monotonic() >= deadline:
                    # The cancelled turn's caller stopped reading: commit its partial reply
                    # on its behalf and take over (its workers stop within a step).
                    self._commit(session, current, interrupted=True)
                    current.done.set()
                    session._turn = turn
                    return
            if time.monotonic() >= deadline:
                raise BusyError(
                    "This conversation is still answering the previous message; "
                    "wait for it or press Stop.",
                    retry_after_s=1.0,
                )
            current.done.wait(_POLL_S)

    def _leave(self, session: Session, turn: _Turn, *, interrupted: bool) -> None:
        with session._mutex:
            self._commit(session, turn, interrupted=interrupted)
            turn.done.set()
            if session._turn is turn:
                session._turn = None

    @staticmethod
    def _commit(session: Session, turn: _Turn, *, interrupted: bool) -> None:
        """Append the turn to history once (caller holds `session._mutex`); a discarded
        tentative turn is never appended."""
        if turn.committed or turn.user is None or turn.dropped:
            turn.committed = True
            return
        turn.committed = True
        steps = list(turn.reply.steps) if turn.reply is not None else []
        answer_from = turn.reply.answer_from if turn.reply is not None else 0
        session.history.append(turn.user)
        session.history.extend(steps)
        answer = "".join(turn.parts)[answer_from:]
        session.history.append(assistant_message([answer], interrupted=interrupted))
        session.interrupted.extend([False] * (1 + len(steps)) + [interrupted])

    def _error(
        self,
        exc: Exception,
        timings: TurnTimings,
        clock: TurnClock,
        code: str | None = None,
        message: str | None = None,
    ) -> TurnEvent:
        timings.total = clock.elapsed()
        code = code or code_for(exc)
        log.info("turn error (%s): %s", code, message or exc)
        return TurnEvent("error", message or str(exc), timings=timings, code=code, error=exc)

    def _ended_early(self, timings: TurnTimings, clock: TurnClock) -> TurnEvent:
        """The `done` of a turn cancelled before its reply started."""
        timings.total = clock.elapsed()
        return TurnEvent("done", "", timings=timings, interrupted=True)

    def _turn_events(
        self,
        session: Session,
        turn: _Turn,
        timings: TurnTimings,
        clock: TurnClock,
        audio: AudioInput | None,
        text: str | None,
        speak: bool = True,
        early: EarlyHearing | None = None,
        confirmed: threading.Event | None = None,
    ) -> Iterator[TurnEvent]:
        token = turn.token

        # 1. Hear: the user's words.
        try:
            heard = self._hear(audio, text, token, timings, early)
        except StageError as exc:
            yield self._error(exc.error, timings, clock, exc.code, exc.message)
            return
        except StageCancelled:
            yield self._ended_early(timings, clock)
            return
        if not heard.text:
            timings.total = clock.elapsed()
            if heard.transcribed:
                timings.transcript_ready = timings.total
            yield TurnEvent("notice", NO_SPEECH_HINT, code="no_speech")
            yield TurnEvent("done", "", timings=timings)
            return
        timings.transcript_ready = clock.elapsed()
        yield TurnEvent("transcript", heard.text)
        if token.cancelled:
            yield self._ended_early(timings, clock)
            return

        # 2. Think: the engines for the reply, and the reply started under the LLM gate.
        try:
            llm = self.models.require("llm")
        except ModelUnavailableError as exc:
            yield self._error(exc, timings, clock, "llm_unavailable")
            return
        tts: TTSEngine | None = None
        if speak:
            try:
                tts = self.models.require("tts")
            except ModelUnavailableError as exc:
                yield TurnEvent(
                    "notice", f"{exc} Replying in text only.", code="tts_unavailable", error=exc
                )
        acting = None
        if session.tools and llm.capabilities.tools:
            acting = self._acting(session, token, spoken=tts is not None, confirmed=confirmed)
        try:
            reply = start_reply(
                llm,
                self.models.gates["llm"],
                history=session.history,
                user_text=heard.text,
                generation=session.generation,
                system_prompt=session.system_prompt,
                cancel=token,
                timeout_s=self.settings.server_timeout_s,
                tools=acting.toolbox.specs() if acting is not None else None,
            )
        except StageError as exc:
            yield self._error(exc.error, timings, clock, exc.code, exc.message)
            return
        except StageCancelled:
            yield self._ended_early(timings, clock)
            return
        turn.user, turn.reply = reply.user, reply

        # 3. Think (and act) and speak on workers; the relay yields their output as it arrives.
        relayed = yield from self._think_and_speak(
            session, turn, reply, tts, timings, clock, acting
        )

        # 4. The end: exactly one done or error.
        reply_text = "".join(turn.parts)
        timings.reply_chars = len(reply_text)
        if relayed.llm_error is not None:
            turn.user = None  # a failed reply leaves the history as it was
            log.error("the LLM failed mid-reply: %r", relayed.llm_error)
            yield self._error(
                relayed.llm_error,
                timings,
                clock,
                "llm_failed",
                f"The reply failed: {reason(relayed.llm_error)}",
            )
            return
        if confirmed is not None:  # a tentative turn joins the history once it is the turn
            wait_unless_cancelled(confirmed, token, _POLL_S)
        interrupted = token.cancelled
        timings.interrupted = interrupted
        with session._mutex:
            if confirmed is not None and not turn.dropped:
                session.turns += 1
                timings.turn = session.turns
            self._commit(session, turn, interrupted=interrupted)
        timings.total = clock.elapsed()
        if not turn.dropped:
            self._record(timings)
        yield TurnEvent("done", reply_text, timings=timings, interrupted=interrupted)

    def _think_and_speak(
        self,
        session: Session,
        turn: _Turn,
        reply: ReplyStart,
        tts: TTSEngine | None,
        timings: TurnTimings,
        clock: TurnClock,
        acting: Acting | None = None,
    ) -> Generator[TurnEvent, None, Relayed]:
        """The reply written (think) and spoken (speak) on workers, relayed as it comes."""
        token = turn.token
        relay = Relay(session.id)
        feed = TextFeed()
        # Speech stops on the caller's cancel and when the LLM fails (without touching
        # the caller's token: a failed reply is not a "stopped" one).
        speech = SpeechStop(token)
        relay.start(
            "think",
            partial(
                think,
                reply,
                relay,
                feed,
                cancel=token,
                speech=speech,
                timings=timings,
                clock=clock,
                acting=acting,
            ),
        )
        if tts is not None:
            phrasing = phrasing_for(
                tts.capabilities,
                first_phrase_words=self.first_phrase_words,
                max_words=self.max_unspoken_words,
            )
            relay.start(
                "speak",
                partial(
                    speak,
                    tts,
                    self.models.gates["tts"],
                    feed,
                    relay,
                    voice=session.voice,
                    phrasing=phrasing,
                    stop=speech,
                    timings=timings,
                    clock=clock,
                    timeout_s=self.settings.server_timeout_s,
                ),
            )
        return (yield from relay.events(turn.parts, cancel=token, stopped=speech.is_set))

    def _hear(
        self,
        audio: AudioInput | None,
        text: str | None,
        token: CancelToken,
        timings: TurnTimings,
        early: EarlyHearing | None = None,
    ) -> Heard:
        if audio is None:
            return hear_text(text, self.settings)
        if early is not None:
            heard = early.result(audio, token)
            if heard is not None:
                timings.stt_s = early.stt_s
                timings.heard_early = True
                return heard
            if early.failure:
                log.info(
                    "transcribing the turn: the early transcription had none (%s)", early.failure
                )
        try:
            stt = self.models.require("stt")
        except ModelUnavailableError as exc:
            raise stt_unavailable(exc) from exc
        return hear_audio(
            audio, stt, self.models.gates["stt"], self.settings, cancel=token, timings=timings
        )

    def hear_early(
        self, samples: np.ndarray, *, after: EarlyHearing | None = None
    ) -> EarlyHearing | None:
        """Start hearing hands-free speech (16 kHz mono float32) before its turn ends.

        The job transcribes on a worker, only while the STT engine is free; pass it to
        `run_turn(early=...)`. `after` is the microphone's previous job (discarded).
        None when no speech recogniser is ready (a loading or failed one is the turn's
        to report).
        """
        if self.models.status.get("stt") != "ready":
            if after is not None:
                after.discard()
            return None
        stt = self.models.require("stt")
        return EarlyHearing(samples, stt, self.models.gates["stt"], self.settings, after=after)

    def transcribe(self, audio: AudioInput) -> str:
        """The words in a recording, as a turn hears them (same checks, speech gate and STT
        gate): the app's `transcribe` API and MCP tool. "" when there is no speech.

        Raises:
            VoiceAgentError: bad audio (an `InputError`), no STT, a busy or failing one.
        """
        try:
            stt = self.models.require("stt")
        except ModelUnavailableError as exc:
            raise stt_unavailable(exc).error from exc
        try:
            heard = hear_audio(
                audio,
                stt,
                self.models.gates["stt"],
                self.settings,
                cancel=CancelToken(),
                timings=TurnTimings(),
            )
        except StageError as exc:
            raise exc.error from None
        except StageCancelled:  # nobody cancels this token
            raise BusyError("the speech recogniser could not be had") from None
        return heard.text

    def say(self, text: str, voice: str | None = None) -> tuple[int, Any]:
        """`(sample_rate, samples)` of `text` spoken, under the TTS gate (timers, the MCP tool).

        Raises:
            ModelUnavailableError, BusyError, InputError: no TTS, a busy one, bad text.
        """
        try:
            clean = hear_text(text, self.settings).text
        except StageError as exc:
            raise exc.error from None
        tts = self.models.require("tts")
        return self._gated("tts", lambda: tts.synthesize(clean, voice))

    def _gated(self, component: str, work: Callable[[], T]) -> T:
        """Run `work` holding `component`'s gate (for calls outside a turn: the self-test)."""
        held = self.models.gates[component].enter(timeout_s=self.settings.server_timeout_s)
        if held is None:  # only a cancel ends the wait early, and there is none here
            raise BusyError(f"the {component} engine could not be had")
        try:
            return work()
        finally:
            held.release()

    # --- diagnostics ------------------------------------------------------------------------

    def _record(self, timings: TurnTimings) -> None:
        with self._timings_lock:
            self._timings.append(timings)

    def recent_timings(self) -> dict[str, Any]:
        """The last turns' timings and, per stage, median and p90 (seconds)."""
        with self._timings_lock:
            turns = list(self._timings)
        stages: dict[str, dict[str, float | int | None]] = {}
        for stage in STAGES:
            values = [getattr(t, stage) for t in turns if getattr(t, stage) is not None]
            stages[stage] = {
                "n": len(values),
                "median": round(statistics.median(values), 4) if values else None,
                "p90": round(_percentile(values, 90), 4) if values else None,
            }
        return {"count": len(turns), "stages": stages, "turns": [t.as_dict() for t in turns]}

    def self_test(self) -> list[StageResult]:
        """Push `assets/hello.wav` through each stage and then the whole pipeline.

        Each stage runs on its own, so one failure does not hide the others.
        """
        from voice_agent.core.config import ASSETS_DIR

        clip = ASSETS_DIR / "hello.wav"
        results: list[StageResult] = []

        def stage(name: str, fn: Callable[[], str]) -> None:
            t0 = time.perf_counter()
            try:
                summary = fn()
                results.append(StageResult(name, True, summary, time.perf_counter() - t0))
            except Exception as exc:  # reported per stage, never raised
                results.append(StageResult(name, False, "", time.perf_counter() - t0, reason(exc)))

        def stt_stage() -> str:
            from voice_agent.audio.io import SAMPLE_RATE, load_audio

            stt = self.models.require("stt")
            samples = load_audio(str(clip))
            transcript = self._gated("stt", lambda: stt.transcribe((SAMPLE_RATE, samples)))
            return (
                f"heard {transcript.text.strip()[:60]!r} in {transcript.duration_s:.1f} s of audio"
            )

        def llm_stage() -> str:
            llm = self.models.require("llm")
            reply = self._gated(
                "llm",
                lambda: llm.generate_reply(
                    "Say hello in five words.",
                    GenerationSettings(max_new_tokens=16, temperature=0.0),
                ),
            )
            return f"{reply.completion_tokens} tokens: {reply.text.strip()[:60]!r}"

        def tts_stage() -> str:
            tts = self.models.require("tts")
            rate, samples = self._gated(
                "tts", lambda: tts.synthesize("Hello, this is a self-test.")
            )
            if len(samples) == 0:
                raise RuntimeError("the TTS returned no audio")
            return f"{len(samples) / rate:.2f} s of audio at {rate} Hz"

        def pipeline_stage() -> str:
            session = self.new_session(max_new_tokens=24, temperature=0.0)
            chunks = 0
            done: TurnEvent | None = None
            for event in self.run_turn(session, audio=str(clip)):
                if event.kind == "error":
                    raise RuntimeError(event.text)
                chunks += event.kind == "audio"
                if event.kind == "done":
                    done = event
            if done is None or done.timings is None:
                raise RuntimeError("the turn ended without a reply")
            spoken = f", {chunks} audio chunks" if chunks else " (no audio: text only)"
            return f"{len(done.text)} characters{spoken}; {done.timings.summary()}"

        stage("stt", stt_stage)
        stage("llm", llm_stage)
        stage("tts", tts_stage)
        stage("pipeline", pipeline_stage)
        return results


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


_agent: Agent | None = None
_agent_lock = threading.Lock()


def get_agent() -> Agent:
    """The process-wide agent on `get_models()`."""
    from voice_agent.pipeline.models import current_models

    global _agent
    with _agent_lock:
        # Create the models (loading them as MODEL_LOADING says) only the first time;
        # afterwards never block here on a background load.
        models = current_models() or get_models()
        if _agent is None or _agent.models is not models:
            _agent = Agent(models)
        return _agent
