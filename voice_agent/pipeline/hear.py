"""Hear: the user's words for a turn, typed or spoken.

A recording is decoded to 16 kHz mono and run through the speech gate here,
once per turn; what passes goes to the STT engine as a `Speech` value, which
the engine neither decodes nor gates again. Silence and noise never reach the
engine. Typed text is checked against `MAX_TEXT_CHARS`.

Every failure is a `StageError` with the code and words the turn's `error`
event carries.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from voice_agent.audio.gate import is_speech
from voice_agent.audio.io import SAMPLE_RATE, load_audio
from voice_agent.core.config import Settings
from voice_agent.core.errors import (
    BusyError,
    InputError,
    InputTooLargeError,
    ModelUnavailableError,
)
from voice_agent.core.threads import CPU_CORES
from voice_agent.pipeline.admission import EngineGate
from voice_agent.pipeline.turn import StageCancelled, StageError, TurnTimings
from voice_agent.stt.base import AudioInput, Speech, STTEngine

log = logging.getLogger(__name__)

NO_SPEECH_HINT = "I didn't hear any speech. Try again a little closer to the microphone."


@dataclass(frozen=True)
class Heard:
    """The user's words for this turn.

    Attributes:
        text: the words, stripped; "" when nothing was heard.
        transcribed: the STT engine ran (False for typed text and for a recording
            the speech gate turned away).
    """

    text: str
    transcribed: bool = False


def hear_text(text: object, settings: Settings) -> Heard:
    """Typed words, checked.

    Raises:
        StageError: empty, not text, or longer than MAX_TEXT_CHARS.
    """
    user_text = text.strip() if isinstance(text, str) else ""
    if not user_text:
        raise StageError(InputError("The message is empty: type something first."))
    limit = settings.max_text_chars
    if len(user_text) > limit:
        raise StageError(
            InputTooLargeError(
                f"The message is {len(user_text)} characters long; the limit is {limit} "
                "(MAX_TEXT_CHARS)."
            )
        )
    return Heard(user_text)


def check_audio(audio: AudioInput, settings: Settings) -> Speech | None:
    """Decode and check the recording once; None when the speech gate finds no speech.

    Raises:
        InputError: empty, garbage, too short, too long or too large.
    """
    limit = settings.max_upload_bytes
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
    samples = load_audio(audio, max_seconds=settings.max_audio_seconds)
    if not is_speech(samples, SAMPLE_RATE):
        return None
    return Speech(SAMPLE_RATE, samples)


def hear_audio(
    audio: AudioInput,
    stt: STTEngine,
    gate: EngineGate,
    settings: Settings,
    *,
    cancel: object,
    timings: TurnTimings,
) -> Heard:
    """The words in a recording: decoded and gated here, transcribed under the STT gate.

    Records `timings.stt_s` (the engine's time, not the wait for it).

    Raises:
        StageError: bad audio, a busy or failing engine.
        StageCancelled: cancelled while waiting for the engine.
    """
    try:
        speech = check_audio(audio, settings)
    except InputError as exc:
        raise StageError(exc) from exc
    if speech is None:
        return Heard("")
    try:
        held = gate.enter(timeout_s=settings.server_timeout_s, cancel=cancel)
    except BusyError as exc:
        raise StageError(exc, "busy") from exc
    if held is None:
        raise StageCancelled
    s0 = time.perf_counter()
    CPU_CORES.fit()  # this thread may have started with a stage's smaller share
    try:
        transcript = stt.transcribe(speech)
    except InputError as exc:
        raise StageError(exc) from exc
    except BusyError as exc:
        raise StageError(exc, "busy") from exc
    except Exception as exc:
        log.exception("transcription failed")
        raise StageError(exc, "stt_failed", f"Transcription failed: {exc}") from exc
    finally:
        held.release()
    timings.stt_s = time.perf_counter() - s0
    text = transcript.text.strip() if transcript.speech_detected else ""
    return Heard(text, transcribed=True)


def stt_unavailable(exc: ModelUnavailableError) -> StageError:
    """The error of a spoken turn without a speech recogniser."""
    return StageError(exc, "stt_unavailable", f"{exc} Type your message instead.")
