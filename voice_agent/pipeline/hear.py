"""Hear: the user's words for a turn, typed or spoken.

A recording is decoded to 16 kHz mono and run through the speech gate here,
once per turn; what passes goes to the STT engine as a `Speech` value, which
the engine neither decodes nor gates again. Silence and noise never reach the
engine. Typed text is checked against `MAX_TEXT_CHARS`.

Hands-free mode and Record can hear a recording early: `EarlyHearing` does the
same work on a worker while the user is still pausing (before the turn ends), and
the turn takes its `Heard` when the audio is the same. When the user went on after
an earlier pause, only what was said since is transcribed (`SEGMENT_MIN_S`).

Every failure is a `StageError` with the code and words the turn's `error`
event carries.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voice_agent.audio.gate import is_speech
from voice_agent.audio.io import SAMPLE_RATE, load_audio
from voice_agent.core.cancel import DISCARDED, CancelToken, wait_unless_cancelled
from voice_agent.core.config import Settings
from voice_agent.core.errors import (
    BusyError,
    InputError,
    InputTooLargeError,
    ModelUnavailableError,
)
from voice_agent.core.threads import CPU_CORES
from voice_agent.pipeline.admission import POLL_S, EngineGate
from voice_agent.pipeline.turn import StageCancelled, StageError, TurnTimings, reason
from voice_agent.stt.base import AudioInput, Speech, STTEngine

log = logging.getLogger(__name__)

# The shortest stretch heard on its own when a guess reuses the words of the one before:
# a recogniser guesses worse at a word or two without its neighbours.
SEGMENT_MIN_S = 1.0
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
    timeout_s: float | None = None,
) -> Heard:
    """The words in a recording: decoded and gated here, transcribed under the STT gate.

    Records `timings.stt_s` (the engine's time, not the wait for it). `timeout_s` is
    the longest wait for the engine (default MODEL_SERVER_TIMEOUT_S).

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
        wait_s = settings.server_timeout_s if timeout_s is None else timeout_s
        held = gate.enter(timeout_s=wait_s, cancel=cancel)
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


def same_audio(samples: np.ndarray, audio: object) -> bool:
    """Whether `audio` (`(16000, samples)` or a bare 16 kHz array) is exactly `samples`."""
    if isinstance(audio, tuple) and len(audio) == 2:
        rate, other = audio
    elif isinstance(audio, np.ndarray):
        rate, other = SAMPLE_RATE, audio
    else:
        return False
    if rate != SAMPLE_RATE or not isinstance(other, np.ndarray):
        return False
    return other.shape == samples.shape and np.array_equal(other, samples)


class EarlyHearing:
    """The words of a hands-free utterance, heard on a worker before its turn starts.

    Hands-free mode starts one when the user has paused briefly (the turn
    detector's `pause`), with the utterance so far. When the turn then ends with
    nothing more said, its audio is the same, and the turn takes this `Heard`
    (`Agent.run_turn(early=...)`) instead of transcribing again: only the wait
    for the end of the pause is left between the user's last word and the reply.

    When the user went on after an earlier pause and that guess (`after`) came to
    words, its audio is how this one's starts: only the audio after it is
    transcribed, and the words are joined (a pause of 0.2 s or more is a clean cut
    between words). So at the last pause only what was said since the one before is
    left to transcribe, instead of the whole utterance again. Stretches shorter than
    `SEGMENT_MIN_S` are not heard on their own.

    The work is `hear_audio`'s: the same checks, speech gate and engine, under
    the STT gate. Being a guess, it never waits in line there: it runs only when
    nobody runs or waits on the engine (another conversation's turn or a REST
    request then waits at most for this one transcription), and after the job
    it replaces (`after`), whose engine work cannot be stopped, has finished.
    Anything that leaves it without a result (the engine busy, a failure,
    `discard`) leaves the turn to transcribe as usual.

    Args:
        samples: the utterance so far, 16 kHz mono float32.
        stt, gate, settings: the engine, its gate and the settings, as for `hear_audio`.
        after: the previous job of the same microphone (it is discarded).
    """

    def __init__(
        self,
        samples: np.ndarray,
        stt: STTEngine,
        gate: EngineGate,
        settings: Settings,
        *,
        after: EarlyHearing | None = None,
    ) -> None:
        self.samples = samples
        self.stt_s: float | None = None
        self.reused_s = 0.0  # seconds at the start whose words came from `after`
        self.failure = ""  # why there is no result, when there is none
        self._heard: Heard | None = None
        self._token = CancelToken()
        self._done = threading.Event()
        if after is not None:
            after.discard()
        worker = threading.Thread(
            target=self._run, args=(stt, gate, settings, after), name="early-hearing", daemon=True
        )
        worker.start()

    @property
    def discarded(self) -> bool:
        return self._token.cancelled

    @property
    def done(self) -> bool:
        """The worker has finished (with a result or without one)."""
        return self._done.is_set()

    def wait(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the worker to finish; True when it has."""
        return self._done.wait(timeout_s)

    def discard(self) -> None:
        """The result will not be used: the work stops unless the engine already has it."""
        self._token.cancel(DISCARDED)

    def made_from(self, audio: object) -> bool:
        """Whether `audio` (`(16000, samples)` or a bare 16 kHz array) is what was heard."""
        return same_audio(self.samples, audio)

    @property
    def words(self) -> str:
        """The words it came to ("" while running, or without a result), discarded or not:
        the words of its audio stay right whatever the user said after."""
        heard = self._heard
        return heard.text if self.done and heard is not None else ""

    def words_before(self, samples: np.ndarray) -> tuple[int, str] | None:
        """(samples heard, words): what this job heard, when `samples` starts with its
        audio and goes on for at least `SEGMENT_MIN_S` more, and it came to words."""
        words, n = self.words, self.samples.shape[0]
        least = int(SEGMENT_MIN_S * SAMPLE_RATE)
        if not words or n < least:
            return None
        if samples.shape[0] - n < least or not np.array_equal(samples[:n], self.samples):
            return None
        return n, words

    def result(self, audio: object, cancel: object) -> Heard | None:
        """The words, when this heard `audio` and came to a result; None otherwise.

        Waits for a worker still running (it is ahead of anything the turn could do).

        Raises:
            StageCancelled: `cancel` fired while waiting (this job is discarded too).
        """
        if self.discarded or not self.made_from(audio):
            self.discard()
            return None
        if not wait_unless_cancelled(self._done, cancel, POLL_S):
            self.discard()
            raise StageCancelled
        return self._heard

    def _run(
        self, stt: STTEngine, gate: EngineGate, settings: Settings, after: EarlyHearing | None
    ) -> None:
        try:
            if after is not None and not self._wait_for(after):
                return
            if gate.admitted:
                self.failure = "the speech recogniser is busy"
                return
            known = after.words_before(self.samples) if after is not None else None
            start, before = known if known is not None else (0, "")
            timings = TurnTimings()

            def hear(samples: np.ndarray) -> Heard:
                return hear_audio(
                    (SAMPLE_RATE, samples),
                    stt,
                    gate,
                    settings,
                    cancel=self._token,
                    timings=timings,
                    timeout_s=0.0,
                )

            heard = hear(self.samples[start:])
            if before and heard.text:
                heard = Heard(f"{before} {heard.text}", transcribed=True)
                self.reused_s = start / SAMPLE_RATE
            elif before:
                # The rest alone came to no words (a short word the speech gate or the
                # recogniser misses without its neighbours): hear it all together.
                heard = hear(self.samples)
            self._heard = heard
            self.stt_s = timings.stt_s
        except StageCancelled:
            self.failure = DISCARDED
        except StageError as exc:
            self.failure = exc.message or str(exc.error)
        except Exception as exc:  # a guess that failed; the turn transcribes as usual
            log.exception("early transcription failed")
            self.failure = reason(exc)
        finally:
            self._done.set()

    def _wait_for(self, other: EarlyHearing) -> bool:
        """Wait until `other` has finished; False when this one is discarded meanwhile."""
        wait_unless_cancelled(other._done, self._token, POLL_S)
        if self.discarded:
            self.failure = DISCARDED
            return False
        return True
