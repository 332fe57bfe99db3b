"""One conversation turn: audio -> transcript -> streamed reply -> streamed speech.

`Agent.run_turn` is a generator of `TurnEvent`s, yielded as they happen:

    transcript -> text, text, ... (audio interleaved as soon as the TTS has some) -> done

The LLM runs on a worker thread and pushes each text piece both to the caller
and into a queue that a second worker feeds to `tts.stream(...)` as an
iterator, so speech starts after the first sentence (or, with Dia2, the first
words) instead of after the whole reply. Every turn ends with exactly one
`done` or `error` event carrying its `TurnTimings`.

Barge-in and Stop: `Agent.cancel(session)` (or the turn's own `CancelToken`)
stops the LLM and the TTS within one step; the words already produced stay in
the session's history with " …" appended and `Session.interrupted` set for
that message, and the next turn starts cleanly. A second turn on a busy
session waits `busy_wait_s` for the first and is otherwise refused with a
`BusyError` event; turns never interleave.
"""

from __future__ import annotations

import logging
import queue
import re
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .cancel import CancelToken
from .errors import BusyError, InputError, InputTooLargeError, ModelUnavailableError
from .llm.base import ChatMessage, GenerationSettings
from .models import LoadedModels, get_models
from .stt.base import AudioInput
from .tts.base import AudioChunk

log = logging.getLogger(__name__)

EventKind = Literal["transcript", "text", "audio", "done", "error", "notice"]
INTERRUPTED_SUFFIX = " …"
RECENT_TURNS = 50
STAGES = (
    "transcript_ready",
    "first_token",
    "first_audio",
    "last_audio",
    "total",
    "stt_s",
    "llm_s",
    "tts_s",
)
NO_SPEECH_HINT = "I didn't hear any speech. Try again a little closer to the microphone."
# How long the turn waits for its workers to wind down after a cancel; an engine
# that ignores its cancel token must not hang the caller.
WORKER_JOIN_S = 10.0
# A reply that runs this many words without a sentence end is handed to the TTS with a
# line break there: sentence-at-a-time backends would otherwise wait for the whole run.
MAX_UNSPOKEN_WORDS = 25
# The first phrase is spoken once it has this many words (or a clause mark after 3):
# time to first audio is what a listener notices most.
FIRST_PHRASE_WORDS = 8
FIRST_PHRASE_MIN_WORDS = 3
CHARS_PER_WORD = 8  # generous: an English word and its space average about 6
_CLAUSE_END = re.compile(r"[,;:]\s*$")
_SENTENCE_END = re.compile(r"[.!?;:\n]")
_WORD_START = re.compile(r"\s\S")
_POLL_S = 0.05
_END = object()


@dataclass
class TurnTimings:
    """Seconds since the end of user speech (or text submit), plus compute per stage."""

    transcript_ready: float | None = None
    first_token: float | None = None
    first_audio: float | None = None
    last_audio: float | None = None
    total: float | None = None
    stt_s: float | None = None
    llm_s: float | None = None
    tts_s: float | None = None
    session_id: str = ""
    turn: int = 0
    input: Literal["audio", "text"] = "text"
    started_at: float = field(default_factory=time.time)  # wall clock, for tables
    reply_chars: int = 0
    audio_s: float = 0.0  # seconds of speech produced
    interrupted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def summary(self) -> str:
        """'heard in 0.4 s · first word 0.9 s · speaking at 1.3 s' (what is known)."""
        parts = []
        for label, value in (
            ("heard in", self.transcript_ready if self.input == "audio" else None),
            ("first word", self.first_token),
            ("speaking at", self.first_audio),
        ):
            if value is not None:
                parts.append(f"{label} {value:.1f} s")
        return " · ".join(parts)


@dataclass
class TurnEvent:
    """Something that happened in a turn, in the order it happened.

    kinds: `transcript` (the user's words, heard or typed), `text` (a reply
    delta), `audio` (an `AudioChunk`), `notice` (degraded mode, speech stopped,
    nothing heard), `error` (the turn failed; `text` says why, `error` holds the
    exception) and `done` (`text` is the whole reply).
    """

    kind: EventKind
    text: str = ""
    audio: AudioChunk | None = None
    timings: TurnTimings | None = None
    code: str = ""  # machine-readable reason for error/notice, e.g. "no_speech", "busy"
    interrupted: bool = False  # on done: the reply was cut short by cancel
    error: Exception | None = field(default=None, repr=False)


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
    committed: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class _SpeechStop:
    """The TTS worker's cancel flag: the caller's token, or an abort after an LLM failure."""

    def __init__(self, token: CancelToken) -> None:
        self._token = token
        self._abort = threading.Event()

    def abort(self) -> None:
        self._abort.set()

    @property
    def cancelled(self) -> bool:
        return self._token.cancelled or self._abort.is_set()

    def is_set(self) -> bool:
        return self.cancelled


@dataclass
class Session:
    """One conversation: its history, system prompt, sampling settings and voice.

    `history` holds only valid `ChatMessage`s (what the LLM gets); `interrupted`
    runs parallel to it and is True for replies cut short by cancel (their
    content ends with " …"). Sessions share nothing.
    """

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    history: list[ChatMessage] = field(default_factory=list)
    system_prompt: str | None = None
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    voice: str | None = None
    interrupted: list[bool] = field(default_factory=list)
    turns: int = 0
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
        names = {"user": "You", "assistant": "Assistant", "system": "System"}
        return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in self.history)


class Agent:
    """Runs conversation turns on the shared models.

    Args:
        models: the cached loader's `LoadedModels`.
        busy_wait_s: how long a turn waits for the same session's running turn.
        max_unspoken_words: words without a sentence end after which the TTS gets a
            line break (0: never), so a run-on reply does not hold speech back.
        first_phrase_words: speak the first phrase after this many words without
            waiting for the sentence to end (0: off; Dia2 streams words anyway).
    """

    def __init__(
        self,
        models: LoadedModels,
        *,
        busy_wait_s: float = 2.0,
        max_unspoken_words: int = MAX_UNSPOKEN_WORDS,
        first_phrase_words: int = FIRST_PHRASE_WORDS,
    ) -> None:
        self.models = models
        self.busy_wait_s = busy_wait_s
        self.max_unspoken_words = max_unspoken_words
        self.first_phrase_words = first_phrase_words
        self._timings: deque[TurnTimings] = deque(maxlen=RECENT_TURNS)
        self._timings_lock = threading.Lock()

    @property
    def settings(self):
        return self.models.settings

    # --- sessions ---------------------------------------------------------------------------

    def new_session(self, **overrides: Any) -> Session:
        """A fresh session. Overrides: `system_prompt`, `voice`, `generation`, `history`, `id`,
        or any `GenerationSettings` field (`temperature`, `max_new_tokens`, ...)."""
        generation = overrides.pop("generation", None) or GenerationSettings()
        sampling = {k: overrides.pop(k) for k in list(overrides) if hasattr(generation, k)}
        if sampling:
            generation = replace(generation, **sampling)
        allowed = {"system_prompt", "voice", "history", "id"}
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
    ) -> Iterator[TurnEvent]:
        """Run one turn and yield its events as they happen.

        Args:
            session: the conversation.
            audio: the user's recording (any `AudioInput`), or
            text: the typed message (exactly one of the two).
            cancel: a token the caller can cancel; `Agent.cancel` cancels it too.
            speech_ended_at: `time.perf_counter()` when the user stopped speaking
                (hands-free knows it); default: now.
        """
        t0 = speech_ended_at if speech_ended_at is not None else time.perf_counter()
        timings = TurnTimings(session_id=session.id, input="audio" if audio is not None else "text")
        if (audio is None) == (text is None):
            err = InputError("Send either audio or text for a turn (exactly one of them).")
            yield self._error(err, timings, t0)
            return
        token = cancel or CancelToken()
        turn = _Turn(token)
        try:
            self._enter(session, turn)
        except BusyError as exc:
            yield self._error(exc, timings, t0, code="busy")
            return
        session.turns += 1
        timings.turn = session.turns
        finished = False
        try:
            yield from self._turn_events(session, turn, timings, t0, audio, text)
            finished = True
        finally:
            if not finished:
                # The caller closed the generator (client gone) or an error escaped: stop
                # the workers; the words so far are kept as an interrupted reply.
                token.cancel("closed")
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
        """Append the turn to history once (caller holds `session._mutex`)."""
        if turn.committed or turn.user is None:
            turn.committed = True
            return
        turn.committed = True
        reply = "".join(list(turn.parts))
        if interrupted:
            reply = reply.rstrip() + INTERRUPTED_SUFFIX if reply.strip() else "…"
        session.history.append(turn.user)
        session.history.append({"role": "assistant", "content": reply})
        session.interrupted.extend([False, interrupted])

    def _error(
        self,
        exc: Exception,
        timings: TurnTimings,
        t0: float,
        code: str | None = None,
        message: str | None = None,
    ) -> TurnEvent:
        timings.total = time.perf_counter() - t0
        code = code or getattr(exc, "code", "") or _code_for(exc)
        log.info("turn error (%s): %s", code, message or exc)
        return TurnEvent("error", message or str(exc), timings=timings, code=code, error=exc)

    def _turn_events(
        self,
        session: Session,
        turn: _Turn,
        timings: TurnTimings,
        t0: float,
        audio: AudioInput | None,
        text: str | None,
    ) -> Iterator[TurnEvent]:
        token = turn.token

        def elapsed() -> float:
            return time.perf_counter() - t0

        # 1. The user's words.
        if audio is not None:
            try:
                stt = self.models.require("stt")
            except ModelUnavailableError as exc:
                yield self._error(
                    exc, timings, t0, "stt_unavailable", f"{exc} Type your message instead."
                )
                return
            try:
                samples = self._check_audio(audio)
            except InputError as exc:
                yield self._error(exc, timings, t0)
                return
            if samples is None:
                timings.total = elapsed()
                yield TurnEvent("notice", NO_SPEECH_HINT, code="no_speech")
                yield TurnEvent("done", "", timings=timings)
                return
            s0 = time.perf_counter()
            try:
                transcript = stt.transcribe((16_000, samples))
            except InputError as exc:
                yield self._error(exc, timings, t0)
                return
            except BusyError as exc:
                yield self._error(exc, timings, t0, "busy")
                return
            except Exception as exc:
                log.exception("transcription failed")
                yield self._error(exc, timings, t0, "stt_failed", f"Transcription failed: {exc}")
                return
            timings.stt_s = time.perf_counter() - s0
            user_text = transcript.text.strip()
            if not transcript.speech_detected or not user_text:
                timings.transcript_ready = timings.total = elapsed()
                yield TurnEvent("notice", NO_SPEECH_HINT, code="no_speech")
                yield TurnEvent("done", "", timings=timings)
                return
        else:
            assert text is not None
            user_text = text.strip() if isinstance(text, str) else ""
            if not isinstance(text, str) or not user_text:
                yield self._error(
                    InputError("The message is empty: type something first."), timings, t0
                )
                return
            limit = self.settings.max_text_chars
            if len(user_text) > limit:
                err = InputTooLargeError(
                    f"The message is {len(user_text)} characters long; the limit is {limit} "
                    "(MAX_TEXT_CHARS)."
                )
                yield self._error(err, timings, t0)
                return
        timings.transcript_ready = elapsed()
        yield TurnEvent("transcript", user_text)
        if token.cancelled:
            timings.total = elapsed()
            yield TurnEvent("done", "", timings=timings, interrupted=True)
            return

        # 2. The engines for the reply.
        try:
            llm = self.models.require("llm")
        except ModelUnavailableError as exc:
            yield self._error(exc, timings, t0, "llm_unavailable")
            return
        try:
            tts = self.models.require("tts")
        except ModelUnavailableError as exc:
            tts = None
            yield TurnEvent(
                "notice", f"{exc} Replying in text only.", code="tts_unavailable", error=exc
            )

        user_msg: ChatMessage = {"role": "user", "content": user_text}
        messages = [*session.history, user_msg]
        l0 = time.perf_counter()
        try:
            stream = llm.stream_reply(
                messages, session.generation, cancel=token, system_prompt=session.system_prompt
            )
        except BusyError as exc:
            yield self._error(exc, timings, t0, "busy")
            return
        except InputError as exc:
            yield self._error(exc, timings, t0)
            return
        except Exception as exc:
            log.exception("the LLM could not start")
            yield self._error(exc, timings, t0, "llm_failed", f"The reply failed: {exc}")
            return
        turn.user = user_msg

        # 3. LLM and TTS workers; this generator relays their events in arrival order.
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        text_queue: queue.Queue[Any] = queue.Queue()
        waits = [0.0]  # seconds the TTS spent waiting for text (not compute)
        # The TTS stops on the caller's cancel and when the LLM fails (without touching
        # the caller's token: a failed reply is not a "stopped" one).
        speech_stop = _SpeechStop(token)
        stopped = speech_stop.is_set

        def run_llm() -> None:
            try:
                for piece in stream:
                    if timings.first_token is None:
                        timings.first_token = elapsed()
                    events.put(("text", piece))
                    text_queue.put(piece)
                    if token.cancelled:
                        break
                events.put(("llm_end", None))
            except Exception as exc:  # relayed to the caller as an error event
                speech_stop.abort()
                events.put(("llm_error", exc))
            finally:
                timings.llm_s = time.perf_counter() - l0
                text_queue.put(_END)

        def text_pieces() -> Iterator[str]:
            while not stopped():
                w0 = time.perf_counter()
                try:
                    piece = text_queue.get(timeout=_POLL_S)
                except queue.Empty:
                    waits[0] += time.perf_counter() - w0
                    continue
                waits[0] += time.perf_counter() - w0
                if piece is _END:
                    return
                yield piece

        def run_tts() -> None:
            a0 = time.perf_counter()
            try:
                # Dia2 takes words as they come; the others speak a sentence at a time.
                first = 0 if getattr(tts, "backend", "") == "dia2" else self.first_phrase_words
                pieces = speech_pieces(
                    text_pieces(), first_phrase_words=first, max_words=self.max_unspoken_words
                )
                for chunk in tts.stream(pieces, voice=session.voice, cancel=speech_stop):
                    if stopped():
                        break
                    now = elapsed()
                    if timings.first_audio is None:
                        timings.first_audio = now
                    timings.last_audio = now
                    timings.audio_s += len(chunk.samples) / float(chunk.sample_rate)
                    events.put(("audio", chunk))
            except Exception as exc:  # text goes on; the caller gets a notice
                events.put(("tts_error", exc))
            finally:
                timings.tts_s = max(0.0, time.perf_counter() - a0 - waits[0])
                events.put(("tts_end", None))

        workers = [threading.Thread(target=run_llm, name=f"turn-llm-{session.id}", daemon=True)]
        if tts is not None:
            workers.append(
                threading.Thread(target=run_tts, name=f"turn-tts-{session.id}", daemon=True)
            )
        for worker in workers:
            worker.start()

        pending = {"llm_end", "tts_end"} if tts is not None else {"llm_end"}
        llm_error: Exception | None = None
        cancelled_at: float | None = None
        while pending:
            try:
                kind, payload = events.get(timeout=_POLL_S)
            except queue.Empty:
                if stopped():
                    cancelled_at = cancelled_at or time.monotonic()
                    if time.monotonic() - cancelled_at > WORKER_JOIN_S:
                        log.warning("turn workers did not stop %.0f s after cancel", WORKER_JOIN_S)
                        break
                continue
            if kind == "text":
                turn.parts.append(payload)
                if not token.cancelled:
                    yield TurnEvent("text", payload)
            elif kind == "audio":
                if not stopped():
                    yield TurnEvent("audio", audio=payload)
            elif kind == "tts_error":
                log.warning("speech stopped mid-reply: %r", payload)
                yield TurnEvent(
                    "notice",
                    f"Speech stopped: {_reason(payload)}. The reply continues as text.",
                    code="tts_failed",
                    error=payload,
                )
            elif kind == "llm_error":
                llm_error = payload
                pending.discard("llm_end")
            else:
                pending.discard(kind)
        for worker in workers:
            worker.join(timeout=WORKER_JOIN_S)

        reply = "".join(turn.parts)
        timings.reply_chars = len(reply)
        if llm_error is not None:
            turn.user = None  # a failed reply leaves the history as it was
            log.error("the LLM failed mid-reply: %r", llm_error)
            yield self._error(
                llm_error, timings, t0, "llm_failed", f"The reply failed: {_reason(llm_error)}"
            )
            return
        interrupted = token.cancelled
        timings.interrupted = interrupted
        with session._mutex:
            self._commit(session, turn, interrupted=interrupted)
        timings.total = elapsed()
        self._record(timings)
        yield TurnEvent("done", reply, timings=timings, interrupted=interrupted)

    def _check_audio(self, audio: AudioInput) -> Any | None:
        """Decode and check the recording; None when it holds no speech.

        Raises:
            InputError: empty, garbage, too short, too long or too large.
        """
        from . import audio as audio_io

        limit = self.settings.max_upload_bytes
        if isinstance(audio, bytes | bytearray) and len(audio) > limit:
            raise InputTooLargeError(
                f"The recording is {len(audio) / 1e6:.1f} MB; the limit is {limit / 1e6:g} MB "
                "(MAX_UPLOAD_MB)."
            )
        if isinstance(audio, str | Path) and Path(audio).is_file():
            size = Path(audio).stat().st_size
            if size > limit:
                raise InputTooLargeError(
                    f"The recording is {size / 1e6:.1f} MB; the limit is {limit / 1e6:g} MB "
                    "(MAX_UPLOAD_MB)."
                )
        samples = audio_io.load_audio(audio, max_seconds=self.settings.max_audio_seconds)
        if not audio_io.is_speech(samples, audio_io.SAMPLE_RATE):
            return None
        return samples

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
        from .llm.base import GenerationSettings
        from .testing.paths import REPO_ROOT

        clip = REPO_ROOT / "assets" / "hello.wav"
        results: list[StageResult] = []

        def stage(name: str, fn) -> None:
            t0 = time.perf_counter()
            try:
                summary = fn()
                results.append(StageResult(name, True, summary, time.perf_counter() - t0))
            except Exception as exc:  # reported per stage, never raised
                results.append(StageResult(name, False, "", time.perf_counter() - t0, _reason(exc)))

        def stt_stage() -> str:
            from .audio import SAMPLE_RATE, load_audio

            stt = self.models.require("stt")
            transcript = stt.transcribe((SAMPLE_RATE, load_audio(str(clip))))
            return (
                f"heard {transcript.text.strip()[:60]!r} in {transcript.duration_s:.1f} s of audio"
            )

        def llm_stage() -> str:
            reply = self.models.require("llm").generate_reply(
                "Say hello in five words.", GenerationSettings(max_new_tokens=16, temperature=0.0)
            )
            return f"{reply.completion_tokens} tokens: {reply.text.strip()[:60]!r}"

        def tts_stage() -> str:
            rate, samples = self.models.require("tts").synthesize("Hello, this is a self-test.")
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


def speech_pieces(
    pieces: Iterator[str], *, first_phrase_words: int = 0, max_words: int = 0
) -> Iterator[str]:
    """The reply's text pieces as the TTS should get them, with line breaks where speech
    may start before a sentence ends (a line break ends a sentence for every backend).

    - The first phrase goes out early: after a clause mark (, ; :) once it has 3 words,
      or after `first_phrase_words` words, so the first audio does not wait for the whole
      first sentence. Later text goes a sentence at a time (better prosody).
    - Any run of `max_words` words without a sentence end is cut there.
    Text without spaces (Chinese, Japanese, or a random test model) counts
    `CHARS_PER_WORD` characters as a word. A value of 0 turns a rule off.
    """
    words = chars = 0
    first = first_phrase_words > 0
    for piece in pieces:
        limit = first_phrase_words if first else max_words
        starts_word = piece[:1].isspace() and bool(piece.strip())
        if limit and (
            (words >= limit and starts_word) or chars + len(piece) > limit * CHARS_PER_WORD
        ):
            yield "\n"
            words = chars = 0
            first = False
        yield piece
        words += len(_WORD_START.findall(piece)) + (words == 0 and not piece[:1].isspace())
        chars += len(piece)
        if _SENTENCE_END.search(piece):
            words = chars = 0
            first = False
        elif first and words >= FIRST_PHRASE_MIN_WORDS and _CLAUSE_END.search(piece):
            yield "\n"
            words = chars = 0
            first = False


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _code_for(exc: Exception) -> str:
    if isinstance(exc, BusyError):
        return "busy"
    if isinstance(exc, ModelUnavailableError):
        return "model_unavailable"
    return "error"


_agent: Agent | None = None
_agent_lock = threading.Lock()


def get_agent() -> Agent:
    """The process-wide agent on `get_models()`."""
    from .models import current_models

    global _agent
    with _agent_lock:
        # Create the models (loading them as MODEL_LOADING says) only the first time;
        # afterwards never block here on a background load.
        models = current_models() or get_models()
        if _agent is None or _agent.models is not models:
            _agent = Agent(models)
        return _agent
