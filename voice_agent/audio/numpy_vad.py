"""The numpy voice-activity detector: the fallback when Silero VAD cannot load.

It scores each 32 ms frame of 16 kHz audio like the model does (a speech
probability), from features measured on that frame and the stream before it:

- **Level against an adaptive noise floor.** The floor is the minimum of the
  smoothed speech-band level (100-4000 Hz) over the last 3 s ("minimum
  statistics"): speech always has quieter moments between syllables, so the
  floor follows the room, and a fan or hum that starts mid-stream is absorbed
  within the window. A frame is *loud* when it is `OVER_FLOOR_DB` above the
  floor and above `MIN_LEVEL_DBFS`.
- **Spectral shape.** Spectral flatness in the speech band (white noise ~0.55,
  voiced speech < 0.2) and zero crossings per sample (white noise ~0.5, speech
  < 0.25): a loud frame is *structured* when both are below `MAX_FLATNESS` and
  `MAX_ZCR`.
- **Periodicity.** Voiced speech repeats at its pitch (60-400 Hz): the
  normalised autocorrelation of the pre-emphasised frame at some pitch lag is
  high (`MIN_VOICING`). Pre-emphasis flattens brown noise, whose raw
  autocorrelation is high at every short lag.

Score: loud, structured and voiced -> `VOICED_P` (starts and holds speech);
loud and structured only (consonants, breathy ends) -> `UNVOICED_P` (holds
speech that has started, never starts it); anything else -> `NOISE_P`. About
0.2 ms a frame.
"""

from __future__ import annotations

from collections import deque

import numpy as np

SAMPLE_RATE = 16_000
FRAME = 512  # samples: 32 ms, the same frame as Silero VAD's
PITCH_LAGS = (SAMPLE_RATE // 400, SAMPLE_RATE // 60)  # 40..266 samples: 400 Hz down to 60 Hz
BAND_HZ = (100.0, 4000.0)

MIN_LEVEL_DBFS = -55.0  # quieter frames are silence whatever the floor
OVER_FLOOR_DB = 9.0
FLOOR_WINDOW_S = 3.0
DIGITAL_SILENCE_DB = -75.0  # floor clamp: a zero-filled stream must not make hiss "loud"
MAX_FLATNESS = 0.35
MAX_ZCR = 0.35
MIN_VOICING = 0.45
PRE_EMPHASIS = 0.97

VOICED_P = 0.9
UNVOICED_P = 0.45  # between the detector's two thresholds (0.35 hold, 0.5 start)
NOISE_P = 0.05

_WINDOW = np.hanning(FRAME)
_FREQS = np.fft.rfftfreq(FRAME, 1 / SAMPLE_RATE)
_BAND = (_FREQS >= BAND_HZ[0]) & (_FREQS <= BAND_HZ[1])


def voicing(window: np.ndarray) -> float:
    """Peak normalised autocorrelation over pitch lags (0 = noise-like, 1 = periodic)."""
    x = window.astype(np.float64)
    x = np.concatenate(([x[0]], x[1:] - PRE_EMPHASIS * x[:-1]))
    x -= x.mean()
    n = len(x)
    spectrum = np.fft.rfft(x, 2 * n)
    ac = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    lo, hi = PITCH_LAGS[0], min(PITCH_LAGS[1], n - FRAME // 4)
    lags = np.arange(lo, hi)
    energy = np.concatenate(([0.0], np.cumsum(x * x)))
    head = energy[n - lags]  # energy of x[: n - lag]
    tail = energy[n] - energy[lags]  # energy of x[lag:]
    r = ac[lags] / np.sqrt(head * tail + 1e-18)
    return float(r.max()) if len(r) else 0.0


def frame_shape(frame: np.ndarray) -> tuple[float, float, float]:
    """(speech-band level in dBFS, spectral flatness in the band, zero crossings per sample)."""
    x = frame.astype(np.float64)
    power = np.abs(np.fft.rfft(x * _WINDOW)) ** 2
    band = power[_BAND] + 1e-12
    flatness = float(np.exp(np.mean(np.log(band))) / np.mean(band))
    rms_db = 10.0 * np.log10(np.mean(x * x) + 1e-12)
    share = float(band.sum() / (power.sum() + 1e-12 * power.size))
    band_db = rms_db + 10.0 * np.log10(min(max(share, 1e-12), 1.0))
    signs = np.signbit(x)
    zcr = float(np.mean(signs[1:] != signs[:-1]))
    return float(band_db), flatness, zcr


class NumpyStream:
    """One audio stream's state: the noise floor's history and the previous frame."""

    def __init__(self) -> None:
        self._levels: deque[float] = deque(maxlen=max(1, int(FLOOR_WINDOW_S * SAMPLE_RATE / FRAME)))
        self._smooth: deque[float] = deque(maxlen=3)
        self._prev = np.zeros(FRAME, dtype=np.float32)

    @property
    def noise_floor_db(self) -> float:
        return max(min(self._levels), DIGITAL_SILENCE_DB) if self._levels else DIGITAL_SILENCE_DB

    def score(self, frame: np.ndarray) -> float:
        """Speech probability of one `FRAME`-sample frame (16 kHz float32)."""
        band_db, flatness, zcr = frame_shape(frame)
        self._smooth.append(band_db)
        # The floor learns from the smoothed level, so single quiet frames inside words
        # do not drag it below the real background.
        self._levels.append(max(float(np.mean(self._smooth)), DIGITAL_SILENCE_DB))
        loud = band_db > max(self.noise_floor_db + OVER_FLOOR_DB, MIN_LEVEL_DBFS)
        structured = flatness < MAX_FLATNESS and zcr < MAX_ZCR
        p = NOISE_P
        if loud and structured:
            periodic = voicing(np.concatenate((self._prev[FRAME // 2 :], frame))) >= MIN_VOICING
            p = VOICED_P if periodic else UNVOICED_P
        self._prev = frame
        return p


class NumpyVAD:
    """The numpy detector behind the same interface as `SileroVAD`."""

    name = "numpy"

    def stream(self) -> NumpyStream:
        return NumpyStream()
