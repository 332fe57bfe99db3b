"""Turn detection for hands-free talk: a streaming voice-activity detector.

Microphone chunks (any sample rate, any dtype, mono or stereo) go in; events
come out: `speech_start` when the user has really started talking,
`barge_in` when that happens while the assistant is speaking, and
`end_of_turn` (with the utterance's audio at 16 kHz) when the user has been
quiet for the configured pause.

How a 20 ms frame is judged:

- **Energy against an adaptive noise floor.** The floor is the minimum of the
  (3-frame smoothed) frame energy over the last few seconds ("minimum
  statistics"): speech always has quieter moments between syllables, so the
  floor follows the room's noise, and a fan or hum that starts mid-stream is
  absorbed within `floor_window_s`. A frame is *loud* when it is
  `threshold_db` above the floor and above an absolute minimum level.
- **Periodicity.** Voiced speech repeats at its pitch (60-400 Hz): the
  normalised autocorrelation at some pitch lag is high. White, pink and brown
  noise, clicks and keyboard taps are not periodic, so a run of loud frames
  becomes speech only once it holds `min_voiced_s` of voiced frames and
  `min_speech_s` of loud ones.

A turn ends after `pause_s` without a loud frame. Pauses shorter than that
(between sentences) keep the turn open. A turn longer than `max_turn_s` is
ended there, so hands-free mode never records without bound.

Silero VAD would be a stronger detector, but its PyPI package pulls
onnxruntime/torchaudio; this one is numpy only and costs about 0.1 ms per
frame.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # Hz; everything inside runs at this rate
FRAME = 320  # samples: 20 ms at 16 kHz
FRAME_S = FRAME / SAMPLE_RATE
PITCH_LAGS = (SAMPLE_RATE // 400, SAMPLE_RATE // 60)  # 40..266 samples: 400 Hz down to 60 Hz
DIGITAL_SILENCE_DB = -75.0  # floor clamp: a zero-filled stream must not make hiss "loud"

VADEventKind = Literal["speech_start", "barge_in", "end_of_turn"]


@dataclass(frozen=True)
class VADConfig:
    """Detector settings. Times in seconds, levels in dB (dBFS for absolute levels)."""

    pause_s: float = 0.6
    min_speech_s: float = 0.25
    min_voiced_s: float = 0.08
    threshold_db: float = 9.0
    min_level_db: float = -55.0
    voicing_threshold: float = 0.6
    floor_window_s: float = 3.0
    preroll_s: float = 0.3
    tail_s: float = 0.2
    max_turn_s: float = 300.0
    # While the assistant speaks, its own voice may leak into the microphone:
    # barge-in needs louder and longer speech.
    barge_in_extra_db: float = 6.0
    barge_in_min_speech_s: float = 0.35

    def __post_init__(self) -> None:
        for name in ("pause_s", "min_speech_s", "floor_window_s", "max_turn_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"VADConfig.{name} must be > 0, got {getattr(self, name)!r}")


@dataclass
class VADEvent:
    """Something the detector decided. Times are seconds of stream audio fed so far."""

    kind: VADEventKind
    at_s: float
    speech_start_s: float = 0.0
    speech_end_s: float = 0.0
    audio: np.ndarray | None = field(default=None, repr=False)  # end_of_turn: 16 kHz float32

    @property
    def speech_s(self) -> float:
        return max(0.0, self.speech_end_s - self.speech_start_s)

    @property
    def silence_s(self) -> float:
        """How long ago (in stream time) the user stopped speaking."""
        return max(0.0, self.at_s - self.speech_end_s)


def to_mono_float(samples: np.ndarray) -> np.ndarray:
    """Any dtype, mono or stereo (channels first or last) -> mono float32 in [-1, 1]."""
    x = np.asarray(samples)
    if x.ndim == 2:
        # Channels are the short axis (a chunk always has more samples than channels).
        x = x.mean(axis=0 if x.shape[0] < x.shape[1] else 1)
    elif x.ndim != 1:
        raise ValueError(f"audio chunk must be 1-D or 2-D, got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        scale = float(np.iinfo(x.dtype).max) + 1.0
        return (x.astype(np.float32) / scale).astype(np.float32)
    x = x.astype(np.float32, copy=False)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def frame_energy_db(frame: np.ndarray) -> float:
    return float(10.0 * np.log10(np.mean(np.square(frame, dtype=np.float64)) + 1e-12))


def voicing(window: np.ndarray) -> float:
    """Peak normalised autocorrelation over pitch lags (0 = noise-like, 1 = periodic)."""
    x = window.astype(np.float64) - float(window.mean())
    n = len(x)
    spectrum = np.fft.rfft(x, 2 * n)
    ac = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    lo, hi = PITCH_LAGS[0], min(PITCH_LAGS[1], n - FRAME // 2)
    lags = np.arange(lo, hi)
    energy = np.concatenate(([0.0], np.cumsum(x * x)))
    head = energy[n - lags]  # energy of x[: n - lag]
    tail = energy[n] - energy[lags]  # energy of x[lag:]
    r = ac[lags] / np.sqrt(head * tail + 1e-18)
    return float(r.max()) if len(r) else 0.0


class TurnDetector:
    """Streaming end-of-turn and barge-in detector over microphone chunks.

    Args:
        config: thresholds; `pause_s` defaults to `settings.vad_pause_seconds`.
        pause_s: shortcut to override `config.pause_s`.

    Feed chunks with `feed(chunk, sample_rate)`; tell it when the assistant
    starts and stops speaking with `assistant_speaking`. Not thread-safe: one
    detector per microphone stream.
    """

    def __init__(self, config: VADConfig | None = None, *, pause_s: float | None = None) -> None:
        if config is None:
            from voice_agent.core.config import get_settings

            settings = get_settings()
            # A turn plus its pre-roll must stay under the transcription limit, or the
            # longest hands-free turn would be refused as too long.
            max_turn = settings.max_audio_seconds - VADConfig.preroll_s - 0.5
            config = VADConfig(
                pause_s=settings.vad_pause_seconds, max_turn_s=max(1.0, min(300.0, max_turn))
            )
        if pause_s is not None:
            config = VADConfig(**{**config.__dict__, "pause_s": pause_s})
        self.config = config
        self.assistant_speaking = False
        self._resampler: Any = None  # soxr.ResampleStream, made for the first odd rate
        self._in_rate: int | None = None
        self.reset()

    # --- public ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything heard so far (the noise floor too)."""
        self._pending = np.zeros(0, dtype=np.float32)
        self._prev_frame = np.zeros(FRAME, dtype=np.float32)
        self._frames = 0
        window = max(1, int(self.config.floor_window_s / FRAME_S))
        self._energies: deque[float] = deque(maxlen=window)
        self._smooth: deque[float] = deque(maxlen=3)
        self._preroll_frames = max(1, int(self.config.preroll_s / FRAME_S))
        self._preroll: deque[np.ndarray] = deque(maxlen=self._preroll_frames)
        self._clear_candidate()

    @property
    def noise_floor_db(self) -> float:
        return max(min(self._energies), DIGITAL_SILENCE_DB) if self._energies else -120.0

    @property
    def in_speech(self) -> bool:
        """True between `speech_start` and `end_of_turn`."""
        return self._confirmed

    @property
    def stream_s(self) -> float:
        return self._frames * FRAME_S

    def feed(self, chunk: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[VADEvent]:
        """Process one microphone chunk; return the events it completed, in order."""
        samples = self._resample(to_mono_float(chunk), int(sample_rate))
        if self._pending.size:
            samples = np.concatenate((self._pending, samples))
        events: list[VADEvent] = []
        usable = len(samples) - len(samples) % FRAME
        for start in range(0, usable, FRAME):
            event = self._step(samples[start : start + FRAME])
            if event is not None:
                events.extend(event)
        self._pending = samples[usable:].copy()
        return events

    def flush(self) -> list[VADEvent]:
        """End of the stream: close an open turn (e.g. the microphone was stopped)."""
        if not self._confirmed:
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
        self._loud_frames = 0
        self._voiced_frames = 0
        self._quiet_run = 0
        self._start_frame = 0
        self._last_loud_frame = 0
        self._barge_in_sent = False

    def _classify(self, frame: np.ndarray) -> tuple[bool, bool, float]:
        energy = frame_energy_db(frame)
        self._smooth.append(energy)
        floor = self.noise_floor_db
        extra = self.config.barge_in_extra_db if self.assistant_speaking else 0.0
        gate = max(floor + self.config.threshold_db, self.config.min_level_db) + extra
        loud = energy > gate
        voiced = False
        if loud:
            voiced = voicing(np.concatenate((self._prev_frame, frame))) >= (
                self.config.voicing_threshold
            )
        # The floor learns from the smoothed energy so single quiet frames inside words
        # do not drag it down below the real background.
        self._energies.append(max(float(np.mean(self._smooth)), DIGITAL_SILENCE_DB))
        return loud, voiced, energy

    def _step(self, frame: np.ndarray) -> list[VADEvent] | None:
        loud, voiced, _ = self._classify(frame)
        self._prev_frame = frame
        index = self._frames
        self._frames += 1
        cfg = self.config
        active = self._confirmed or self._loud_frames > 0
        if not active:
            self._preroll.append(frame)
            if not loud:
                return None
            self._buffer = list(self._preroll)
            self._start_frame = index
        else:
            self._buffer.append(frame)
        if loud:
            self._loud_frames += 1
            self._voiced_frames += int(voiced)
            self._quiet_run = 0
            self._last_loud_frame = index
        else:
            self._quiet_run += 1
        events: list[VADEvent] = []
        if not self._confirmed:
            if self._quiet_run * FRAME_S >= cfg.pause_s:
                recent = self._buffer[-self._preroll_frames :]
                self._clear_candidate()  # too short or not voice: clicks, taps, noise bursts
                self._preroll.clear()
                self._preroll.extend(recent)
                return None
            min_speech = cfg.barge_in_min_speech_s if self.assistant_speaking else cfg.min_speech_s
            if (
                self._loud_frames * FRAME_S >= min_speech
                and self._voiced_frames * FRAME_S >= cfg.min_voiced_s
            ):
                self._confirmed = True
                start_s = self._start_frame * FRAME_S
                events.append(VADEvent("speech_start", self.stream_s, speech_start_s=start_s))
                if self.assistant_speaking:
                    self._barge_in_sent = True
                    events.append(VADEvent("barge_in", self.stream_s, speech_start_s=start_s))
                    log.info("barge-in at %.2f s", self.stream_s)
            return events or None
        if self._quiet_run * FRAME_S >= cfg.pause_s:
            return [self._end_turn()]
        if (index - self._start_frame) * FRAME_S >= cfg.max_turn_s:
            log.info("turn reached the %.0f s limit; ending it", cfg.max_turn_s)
            return [self._end_turn()]
        return None

    def _end_turn(self) -> VADEvent:
        cfg = self.config
        tail = int(cfg.tail_s / FRAME_S)
        keep = len(self._buffer) - max(0, self._quiet_run - tail)
        audio = np.concatenate(self._buffer[:keep]) if keep > 0 else np.zeros(0, np.float32)
        event = VADEvent(
            "end_of_turn",
            self.stream_s,
            speech_start_s=self._start_frame * FRAME_S,
            speech_end_s=(self._last_loud_frame + 1) * FRAME_S,
            audio=audio.astype(np.float32, copy=False),
        )
        log.debug("end of turn: %.2f s of speech", event.speech_s)
        # The next turn's pre-roll is what was heard last, not what preceded this turn.
        self._preroll.clear()
        self._preroll.extend(self._buffer[-self._preroll_frames :])
        self._clear_candidate()
        return event
