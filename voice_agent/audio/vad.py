"""Turn detection for hands-free talk: when the user starts, stops, or talks over the reply.

Microphone chunks (any sample rate, any dtype, mono or stereo) go in; events
come out: `speech_start` when the user has really started talking,
`barge_in` when that happens while the assistant is speaking, and
`end_of_turn` (with the utterance's audio at 16 kHz) once the user has been
quiet for the pause. With `early_pause_s` set, a shorter silence inside a turn
is reported first as `pause` (with the utterance so far, the very audio
`end_of_turn` will carry if nothing more is said), and speech after it as
`resume`: hands-free mode transcribes at the `pause`, so only what follows is
left to do when the turn ends.

Each 32 ms frame gets a speech probability from the process's voice-activity
model (`voice_activity`: Silero VAD, or the numpy detector), and two thresholds
make a hysteresis, as in Silero's own iterator:

- **Start.** A turn starts at the first frame at `start_threshold` (0.5) and is
  confirmed once `min_speech_s` of such frames have come; a candidate that goes
  quiet for `pause_s` before that (a click, a cough, a door) is dropped.
- **End, measured from the audio.** Every frame at `hold_threshold` (0.35) or
  above keeps the turn open; the turn ends when `pause_s` of stream audio has
  passed without one. Time is counted in frames of audio fed, never from when
  a chunk arrived, so network jitter and chunk sizes do not move the end.
- **Short pauses do not end a turn.** A hesitation shorter than the pause
  keeps it open; a filled pause ("uh", "um") is voiced and scores as speech;
  trailing consonants and breathy ends sit between the thresholds and hold.
- **Barge-in, echo-safe.** While the assistant speaks, a frame counts for the
  user only when the echo guard (`echo.EchoGuard`, fed with the reply through
  `play`) finds it `MARGIN_DB` louder than the echo of the reply expected in
  it; `barge_in_min_speech_s` of such frames within `barge_in_window_s`
  interrupt the assistant. Speech that fails the guard never starts a turn,
  so the assistant's own voice is never transcribed as the user's.

A turn longer than `max_turn_s` is ended there, so hands-free mode never
records without bound.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from voice_agent.audio.echo import EchoGuard
from voice_agent.audio.voice_activity import (
    FRAME,
    FRAME_S,
    SAMPLE_RATE,
    VoiceActivityModel,
    load_model,
    to_mono_float,
)

log = logging.getLogger(__name__)

__all__ = [
    "FRAME",
    "FRAME_S",
    "SAMPLE_RATE",
    "TurnDetector",
    "VADConfig",
    "VADEvent",
    "to_mono_float",
]

VADEventKind = Literal["speech_start", "barge_in", "pause", "resume", "end_of_turn"]


@dataclass(frozen=True)
class VADConfig:
    """Detector settings. Times in seconds; thresholds are speech probabilities."""

    pause_s: float = 0.6
    min_speech_s: float = 0.25
    start_threshold: float = 0.5
    hold_threshold: float = 0.35
    preroll_s: float = 0.3
    tail_s: float = 0.2
    max_turn_s: float = 300.0
    barge_in_min_speech_s: float = 0.25
    barge_in_window_s: float = 1.0
    # A `pause` event after this much silence inside a turn (0: never). Taken as at
    # least `tail_s`, so the audio it carries is what `end_of_turn` would carry; no
    # event when it is not shorter than `pause_s`.
    early_pause_s: float = 0.0
    # False (push to talk): a pause never ends the turn, only `flush` (the microphone
    # stopped) or `max_turn_s`; too-short candidates are still dropped after `pause_s`.
    end_on_pause: bool = True

    def __post_init__(self) -> None:
        for name in ("pause_s", "min_speech_s", "max_turn_s", "barge_in_window_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"VADConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.early_pause_s < 0:
            raise ValueError(f"VADConfig.early_pause_s must be >= 0, got {self.early_pause_s!r}")
        if not 0 < self.hold_threshold <= self.start_threshold < 1:
            raise ValueError(
                "VADConfig needs 0 < hold_threshold <= start_threshold < 1, got "
                f"{self.hold_threshold} and {self.start_threshold}"
            )


@dataclass
class VADEvent:
    """Something the detector decided. Times are seconds of stream audio fed so far."""

    kind: VADEventKind
    at_s: float
    speech_start_s: float = 0.0
    speech_end_s: float = 0.0
    # end_of_turn and pause: the utterance (so far), 16 kHz float32
    audio: np.ndarray | None = field(default=None, repr=False)

    @property
    def speech_s(self) -> float:
        return max(0.0, self.speech_end_s - self.speech_start_s)

    @property
    def silence_s(self) -> float:
        """How long ago (in stream time) the user stopped speaking."""
        return max(0.0, self.at_s - self.speech_end_s)


def _frames(seconds: float) -> int:
    return max(1, round(seconds / FRAME_S))


class TurnDetector:
    """Streaming end-of-turn and barge-in detector over microphone chunks.

    Args:
        config: thresholds; default `pause_s` = `settings.vad_pause_seconds` and
            `early_pause_s` = `settings.vad_early_pause_seconds`.
        pause_s: shortcut to override `config.pause_s`.
        end_on_pause: shortcut to override `config.end_on_pause`.
        model: the voice-activity model; default the process's (`voice_activity.load_model`).

    Feed chunks with `feed(chunk, sample_rate)`; set `assistant_speaking` while the
    reply plays and hand each reply chunk to `play`. Not thread-safe apart from
    `play`: one detector per microphone stream.
    """

    def __init__(
        self,
        config: VADConfig | None = None,
        *,
        pause_s: float | None = None,
        end_on_pause: bool | None = None,
        model: VoiceActivityModel | None = None,
    ) -> None:
        if config is None:
            from voice_agent.core.config import get_settings

            settings = get_settings()
            # A turn plus its pre-roll must stay under the transcription limit, or the
            # longest hands-free turn would be refused as too long.
            max_turn = settings.max_audio_seconds - VADConfig.preroll_s - 0.5
            config = VADConfig(
                pause_s=settings.vad_pause_seconds,
                max_turn_s=max(1.0, min(300.0, max_turn)),
                early_pause_s=settings.vad_early_pause_seconds,
            )
        overrides: dict[str, Any] = {"pause_s": pause_s, "end_on_pause": end_on_pause}
        config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
        self.config = config
        self.model = model or load_model()
        self.assistant_speaking = False
        self.echo = EchoGuard()
        self._resampler: Any = None  # soxr.ResampleStream, made for the first odd rate
        self._in_rate: int | None = None
        self.reset()

    # --- public ---------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """The voice-activity model deciding: "silero-onnx" or "numpy"."""
        return self.model.name

    def reset(self) -> None:
        """Forget everything heard so far (the model's state and the echo guard too)."""
        self._scorer = self.model.stream()
        self.echo.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self._frames = 0
        self._preroll_frames = _frames(self.config.preroll_s)
        self._preroll: deque[np.ndarray] = deque(maxlen=self._preroll_frames)
        early = self.config.early_pause_s
        pause_frames = max(_frames(early), _frames(self.config.tail_s)) if early > 0 else 0
        self._early_frames = pause_frames if pause_frames < _frames(self.config.pause_s) else 0
        self._clear_candidate()

    @property
    def in_speech(self) -> bool:
        """True between `speech_start` and `end_of_turn`."""
        return self._confirmed

    @property
    def stream_s(self) -> float:
        return self._frames * FRAME_S

    def play(self, samples: np.ndarray, sample_rate: int) -> None:
        """The assistant's audio that was just sent to the speaker (for the echo guard).

        Safe to call from the thread that runs the turn while another feeds the microphone.
        """
        self.echo.play(samples, sample_rate)

    def feed(self, chunk: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[VADEvent]:
        """Process one microphone chunk; return the events it completed, in order."""
        samples = self._resample(to_mono_float(chunk), int(sample_rate))
        if self._pending.size:
            samples = np.concatenate((self._pending, samples))
        events: list[VADEvent] = []
        usable = len(samples) - len(samples) % FRAME
        for start in range(0, usable, FRAME):
            events.extend(self._step(samples[start : start + FRAME]))
        self._pending = samples[usable:].copy()
        return events

    def flush(self, short: bool = False) -> list[VADEvent]:
        """End of the stream: close an open turn (e.g. the microphone was stopped).

        `short`: speech not yet long enough to count (`min_speech_s`) is a turn too; a
        push-to-talk "yes" is all the user meant to say.
        """
        if not self._confirmed and not (short and self._speech_frames > 0):
            self._clear_candidate()
            return []
        return [self._end_turn()]

    # --- internals -----------------------------------------------------------------------

    def _resample(self, x: np.ndarray, rate: int) -> np.ndarray:
        if rate <= 0:
            raise ValueError(f"sample rate must be positive, got {rate}")
        if rate == SAMPLE_RATE:
            return x
        if self._resampler is None or self._in_rate != rate:
            import soxr

            # A stream resampler keeps its filter state between chunks (no clicks at joins).
            self._resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
            self._in_rate = rate
        return self._resampler.resample_chunk(x)

    def _clear_candidate(self) -> None:
        self._confirmed = False
        self._buffer: list[np.ndarray] = []
        self._speech_frames = 0
        self._quiet_run = 0
        self._start_frame = 0
        self._last_speech_frame = 0
        self._paused = False  # a `pause` was reported and no speech has come since
        self._user_frames: deque[bool] = deque(maxlen=_frames(self.config.barge_in_window_s))

    def _step(self, frame: np.ndarray) -> list[VADEvent]:
        cfg = self.config
        p = self._scorer.score(frame)
        share = self.echo.user_share(frame)
        index = self._frames
        self._frames += 1
        speaking = self.assistant_speaking
        # While the reply plays, speech counts only where it stands above the reply's echo.
        user = (not speaking) or self.echo.is_user(share)
        starts = p >= cfg.start_threshold and user
        holds = p >= cfg.hold_threshold and (user or self._confirmed)
        active = self._confirmed or self._speech_frames > 0
        if not active:
            self._preroll.append(frame)
            if not starts:
                return []
            self._buffer = list(self._preroll)
            self._start_frame = index
        else:
            self._buffer.append(frame)
        if starts:
            self._speech_frames += 1
        self._user_frames.append(starts)
        if holds:
            self._quiet_run = 0
            self._last_speech_frame = index
        else:
            self._quiet_run += 1
        if not self._confirmed:
            return self._maybe_confirm(speaking)
        if cfg.end_on_pause and self._quiet_run >= _frames(cfg.pause_s):
            return [self._end_turn()]
        if (index - self._start_frame) * FRAME_S >= cfg.max_turn_s:
            log.info("turn reached the %.0f s limit; ending it", cfg.max_turn_s)
            return [self._end_turn()]
        if self._early_frames and self._quiet_run == self._early_frames:
            self._paused = True
            return [self._event("pause")]
        if holds and self._paused:
            self._paused = False
            return [VADEvent("resume", self.stream_s, speech_start_s=self._start_frame * FRAME_S)]
        return []

    def _maybe_confirm(self, speaking: bool) -> list[VADEvent]:
        cfg = self.config
        if self._quiet_run >= _frames(cfg.pause_s):
            recent = self._buffer[-self._preroll_frames :]
            self._clear_candidate()  # too short: a click, a cough, a door
            self._preroll.clear()
            self._preroll.extend(recent)
            return []
        if speaking:
            if sum(self._user_frames) < _frames(cfg.barge_in_min_speech_s):
                return []
        elif self._speech_frames < _frames(cfg.min_speech_s):
            return []
        self._confirmed = True
        start_s = self._start_frame * FRAME_S
        events = [VADEvent("speech_start", self.stream_s, speech_start_s=start_s)]
        if speaking:
            events.append(VADEvent("barge_in", self.stream_s, speech_start_s=start_s))
            log.info("barge-in at %.2f s (%s)", self.stream_s, self.backend)
        return events

    def _event(self, kind: VADEventKind) -> VADEvent:
        """`kind` with the utterance so far: its speech and `tail_s` of the silence after it."""
        tail = _frames(self.config.tail_s)
        keep = len(self._buffer) - max(0, self._quiet_run - tail)
        audio = np.concatenate(self._buffer[:keep]) if keep > 0 else np.zeros(0, np.float32)
        return VADEvent(
            kind,
            self.stream_s,
            speech_start_s=self._start_frame * FRAME_S,
            speech_end_s=(self._last_speech_frame + 1) * FRAME_S,
            audio=audio.astype(np.float32, copy=False),
        )

    def _end_turn(self) -> VADEvent:
        event = self._event("end_of_turn")
        log.debug("end of turn: %.2f s of speech", event.speech_s)
        # The next turn's pre-roll is what was heard last, not what preceded this turn.
        self._preroll.clear()
        self._preroll.extend(self._buffer[-self._preroll_frames :])
        self._clear_candidate()
        return event
