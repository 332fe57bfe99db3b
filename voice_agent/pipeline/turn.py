"""What a turn is made of and hands out: its events, its timings and how a stage fails.

The stage modules (`hear`, `think`, `speak`, `relay`) and the `Agent` share these
types; callers read them from `voice_agent.pipeline.agent`, which re-exports them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from voice_agent.core.errors import BusyError, ModelUnavailableError
from voice_agent.tools.base import ToolRecord
from voice_agent.tts.base import AudioChunk

EventKind = Literal["transcript", "text", "audio", "tool", "done", "error", "notice"]
STAGES = (
    "transcript_ready",
    "first_token",
    "first_audio",
    "first_audio_heard",
    "last_audio",
    "total",
    "stt_s",
    "llm_s",
    "tts_s",
    "tool_s",
    "answer_audio",
)


@dataclass
class TurnTimings:
    """Seconds since the end of user speech (or text submit), plus compute per stage.

    A turn that calls tools also has `tool_calls`, `tool_s` (time the tools ran),
    `filler_at` (when "One moment." went to the voice, if a tool ran long),
    `answer_token` and `answer_audio` (the first word and first sound of the answer
    written after the tools; `first_audio` may be the filler's). `heard_early`: the
    transcript was made while the user paused, before the turn ended (hands-free,
    `hear.EarlyHearing`); `stt_s` is then that transcription's time. `ahead`: the
    turn itself started at that pause (`pipeline.ahead.TurnAhead`) and was kept.
    `first_audio_heard`: when the first sound came out in the browser, as the page
    player reported it (the Conversation tab only; `ui.playback`).
    """

    transcript_ready: float | None = None
    first_token: float | None = None
    first_audio: float | None = None
    first_audio_heard: float | None = None
    last_audio: float | None = None
    total: float | None = None
    stt_s: float | None = None
    llm_s: float | None = None
    tts_s: float | None = None
    tool_s: float | None = None
    answer_audio: float | None = None
    answer_token: float | None = None
    filler_at: float | None = None
    tool_calls: int = 0
    session_id: str = ""
    turn: int = 0
    input: Literal["audio", "text"] = "text"
    started_at: float = field(default_factory=time.time)  # wall clock, for tables
    reply_chars: int = 0
    audio_s: float = 0.0  # seconds of speech produced
    interrupted: bool = False
    heard_early: bool = False
    ahead: bool = False

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
    delta), `audio` (an `AudioChunk`), `tool` (a tool call started or ended:
    `tool` holds its `ToolRecord`, `text` its name), `notice` (degraded mode,
    speech stopped, nothing heard, the filler while a tool runs: code "filler"),
    `error` (the turn failed; `text` says why, `error` holds the exception) and
    `done` (`text` is the whole reply).
    """

    kind: EventKind
    text: str = ""
    audio: AudioChunk | None = None
    timings: TurnTimings | None = None
    code: str = ""  # machine-readable reason for error/notice, e.g. "no_speech", "busy"
    interrupted: bool = False  # on done: the reply was cut short by cancel
    error: Exception | None = field(default=None, repr=False)
    tool: ToolRecord | None = None


@dataclass(frozen=True)
class TurnClock:
    """Seconds since the end of the user's speech (`time.perf_counter()` at `t0`)."""

    t0: float

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


class StageError(Exception):
    """A stage could not do its part: the turn ends with an `error` event saying so.

    Args:
        error: what went wrong (the event's `error`).
        code: the event's code; default the error's own (`InputError.code`, "busy", ...).
        message: the event's text; default the error's message.
    """

    def __init__(self, error: Exception, code: str | None = None, message: str | None = None):
        super().__init__(message or str(error))
        self.error = error
        self.code = code
        self.message = message


class StageCancelled(Exception):
    """The turn was cancelled while a stage waited for its engine; nothing was produced."""


def reason(exc: BaseException) -> str:
    """The first line of an error's message (its type when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def code_for(exc: Exception) -> str:
    """The event code of an error that does not carry its own."""
    own = getattr(exc, "code", "")
    if isinstance(own, str) and own:
        return own
    if isinstance(exc, BusyError):
        return "busy"
    if isinstance(exc, ModelUnavailableError):
        return "model_unavailable"
    return "error"
