"""The speech gate: does a clip hold speech, or only silence and noise?

Whisper "hears" phrases such as "Thank you." in silence and noise, so the STT
engine and the agent ask `is_speech` first. The decision uses per-frame
features (`frame_features`): level in the speech band, its distance from the
clip's noise floor, spectral flatness and zero-crossing rate. Numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voice_agent.audio.io import to_mono

# Frame energies in dBFS; 30 ms frames.
FRAME_MS = 30
SPEECH_MIN_DBFS = -55.0  # quieter frames are silence whatever the noise floor
SPEECH_OVER_FLOOR_DB = 12.0  # a speech frame stands this far above the clip's noise floor
SPEECH_MAX_FLATNESS = 0.35  # white noise is ~0.55, voiced speech < 0.2 (100-4000 Hz band)
SPEECH_MAX_ZCR = 0.35  # zero crossings per sample; white noise ~0.5, speech < 0.25
SPEECH_MIN_SECONDS = 0.12  # voiced frames needed in total
SPEECH_MIN_RUN = 3  # consecutive frames (90 ms): shorter bursts are clicks, not syllables


@dataclass(frozen=True)
class FrameFeatures:
    """Per-frame features of a mono signal (one value per `frame_ms` frame)."""

    frame_ms: int
    energy_dbfs: np.ndarray  # RMS level, dB relative to full scale
    band_dbfs: np.ndarray  # level of the speech band (100-4000 Hz) alone
    flatness: np.ndarray  # spectral flatness in 100-4000 Hz: 0 tonal .. 1 white noise
    zcr: np.ndarray  # zero crossings per sample

    @property
    def noise_floor_dbfs(self) -> float:
        """Speech-band level of the quietest tenth of the frames."""
        return float(np.percentile(self.band_dbfs, 10)) if self.band_dbfs.size else -120.0

    def voiced(self) -> np.ndarray:
        """Boolean mask of frames that look like speech (see `is_speech`)."""
        loud = self.band_dbfs > SPEECH_MIN_DBFS
        above_floor = self.band_dbfs > self.noise_floor_dbfs + SPEECH_OVER_FLOOR_DB
        structured = (self.flatness < SPEECH_MAX_FLATNESS) & (self.zcr < SPEECH_MAX_ZCR)
        candidate = loud & above_floor & structured
        # Syllables last longer than a click: keep only runs of SPEECH_MIN_RUN frames or more.
        return _long_runs(candidate, SPEECH_MIN_RUN)


def _long_runs(mask: np.ndarray, min_run: int) -> np.ndarray:
    """`mask` with runs of True shorter than `min_run` cleared."""
    out = np.zeros_like(mask)
    start = None
    for i, value in enumerate([*mask.tolist(), False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            if i - start >= min_run:
                out[start:i] = True
            start = None
    return out


def frame_features(samples: np.ndarray, rate: int, frame_ms: int = FRAME_MS) -> FrameFeatures:
    """Energy, spectral flatness and zero-crossing rate per non-overlapping frame.

    Shared with the turn detector (VAD), which reads the same features frame by frame.
    """
    mono = to_mono(np.asarray(samples, dtype=np.float32))
    size = max(16, int(rate * frame_ms / 1000))
    count = mono.shape[0] // size
    empty = np.zeros(0, dtype=np.float32)
    if count == 0:
        return FrameFeatures(frame_ms, empty, empty, empty, empty)
    frames = mono[: count * size].reshape(count, size).astype(np.float64)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    energy = 20 * np.log10(rms + 1e-10)
    signs = np.signbit(frames)
    zcr = np.mean(signs[:, 1:] != signs[:, :-1], axis=1)
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(size), axis=1)) ** 2
    freqs = np.fft.rfftfreq(size, 1 / rate)
    band = spectrum[:, (freqs >= 100) & (freqs <= min(4000, rate / 2))] + 1e-12
    flatness = np.exp(np.mean(np.log(band), axis=1)) / np.mean(band, axis=1)
    band_share = band.sum(axis=1) / (spectrum.sum(axis=1) + 1e-12 * spectrum.shape[1])
    band_level = energy + 10 * np.log10(np.clip(band_share, 1e-12, 1.0))
    return FrameFeatures(
        frame_ms,
        energy.astype(np.float32),
        band_level.astype(np.float32),
        flatness.astype(np.float32),
        zcr.astype(np.float32),
    )


def speech_seconds(samples: np.ndarray, rate: int) -> float:
    """Seconds of frames that look like speech: loud, above the noise floor, not noise-like."""
    features = frame_features(samples, rate)
    return float(features.voiced().sum() * features.frame_ms / 1000)


def is_speech(samples: np.ndarray, rate: int, min_seconds: float = SPEECH_MIN_SECONDS) -> bool:
    """True when the clip holds at least `min_seconds` of speech-like frames.

    A frame counts when it is louder than -55 dBFS, 12 dB above the clip's noise
    floor (so steady hum, fans and coloured noise fail), and spectrally
    structured: flatness and zero-crossing rate below white noise's. Silence,
    stationary noise and white noise give False; speech in moderate noise True.
    """
    return speech_seconds(samples, rate) >= min_seconds
