"""The echo guard: is the speech in the microphone the user, or the assistant's own voice?

With loudspeakers, the reply comes back into the microphone. The browser's echo
cancellation removes most of it; this guard covers what it leaves (and browsers
or devices without it). It knows what was played: the turn hands it every reply
chunk (`play`), and it keeps the chunk's level per 32 ms frame on the
microphone's timeline. The echo in the microphone is that level envelope,
delayed (network, browser buffer, the air) and scaled (the room): the guard
finds the delay that best correlates the microphone's recent level envelope
with the played one (Pearson correlation of dB levels over the last
`WINDOW_S`, delays 0..`MAX_DELAY_S`), and the scale from the quieter half of
the level differences at that delay (frames where the user talks over the
reply only raise the difference, so they do not inflate it).

The echo expected in a microphone frame is worked out per frequency band
(`BANDS` bands, 100-8000 Hz): the played band level at the found delay (the
loudest of the last `REVERB_FRAMES` frames, for the room's reverberation) plus
that band's scale. A frame is the user's when at least `USER_SHARE` of its
energy lies in bands `MARGIN_DB` above that echo: two voices rarely fill the
same bands at the same moment, so a user as loud as the echo still stands out,
while the echo alone never does. Until a delay is found, each band expects the
loudest played level of the whole delay range at `DEFAULT_GAIN_DB` (as loud as
it was played): barge-in is then possible only over quiet moments of the reply.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from voice_agent.audio.numpy_vad import FRAME, SAMPLE_RATE

FRAME_S = FRAME / SAMPLE_RATE
MAX_DELAY_S = 1.5
WINDOW_S = 3.0
MIN_OVERLAP_FRAMES = 24  # played frames needed in the window before trusting a delay
MIN_CORRELATION = 0.5
REVERB_FRAMES = 3  # 96 ms of reverberation tail
DEFAULT_GAIN_DB = 0.0
MARGIN_DB = 6.0
USER_SHARE = 0.5
BANDS = 16
SILENT_DB = -90.0
ACTIVE_DB = -50.0  # played frames quieter than this are pauses in the reply


_EDGES = np.geomspace(100.0, 8000.0, BANDS + 1)
_BAND_OF_BIN = np.digitize(np.fft.rfftfreq(FRAME, 1 / SAMPLE_RATE), _EDGES) - 1
_WINDOW = np.hanning(FRAME).astype(np.float32)


def band_levels(frames: np.ndarray) -> np.ndarray:
    """Level in dB of each of `BANDS` bands, per 16 kHz frame (rows of `FRAME` samples)."""
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2
    out = np.full((*power.shape[:-1], BANDS), 1e-12)
    for band in range(BANDS):
        out[..., band] += power[..., _BAND_OF_BIN == band].sum(axis=-1)
    return (10.0 * np.log10(out)).astype(np.float32)


_SILENT = np.full(BANDS, SILENT_DB, dtype=np.float32)


def _total_db(bands: np.ndarray) -> float:
    return float(10.0 * np.log10(np.sum(10.0 ** (bands / 10.0)) + 1e-12))


def frame_levels(samples: np.ndarray, rate: int) -> np.ndarray:
    """RMS level in dBFS of each 32 ms frame (at any sample rate)."""
    size = max(1, round(rate * FRAME_S))
    count = len(samples) // size
    frames = np.asarray(samples[: count * size], dtype=np.float64).reshape(count, size)
    return (10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)).astype(np.float32)


class EchoGuard:
    """The played reply on the microphone's frame timeline, and the echo it predicts.

    `play` may be called from another thread than `observe` (the turn's thread and the
    microphone's); a lock keeps the timeline whole.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames = 0  # microphone frames observed
        self._mic: deque[float] = deque(maxlen=int(WINDOW_S / FRAME_S))  # total levels
        self._mic_bands: deque[np.ndarray] = deque(maxlen=int(WINDOW_S / FRAME_S))
        self._played: dict[int, np.ndarray] = {}  # frame index -> band levels (dB)
        self._played_until = 0  # frame index after the last played frame
        self._clock: tuple[int, float] | None = None  # (mic frames, monotonic time) at last feed
        self.delay_frames: int | None = None
        self.gain_db = np.full(BANDS, DEFAULT_GAIN_DB, dtype=np.float32)
        self.unaligned_gain_db = DEFAULT_GAIN_DB  # used until a delay is found
        self.correlation = 0.0

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    @property
    def playing(self) -> bool:
        """Something was played within the delay range of the newest microphone frame."""
        with self._lock:
            return self._played_until + int(MAX_DELAY_S / FRAME_S) >= self._frames

    def play(self, samples: np.ndarray, rate: int, *, at_frame: int | None = None) -> None:
        """The reply chunk that was just sent to the speaker.

        Args:
            at_frame: microphone frame it starts playing at; default: now (estimated from
                the microphone's last chunk and the wall clock), or right after the
                previous chunk when that is still playing.
        """
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if int(rate) != SAMPLE_RATE:
            import soxr

            x = soxr.resample(x, int(rate), SAMPLE_RATE)
        count = len(x) // FRAME
        levels = band_levels(x[: count * FRAME].reshape(count, FRAME))
        with self._lock:
            if at_frame is None:
                at_frame = self._now_frame()
            start = max(at_frame, self._played_until)
            for i in range(count):
                self._played[start + i] = levels[i]
            self._played_until = start + count
            horizon = self._frames - int((MAX_DELAY_S + WINDOW_S) / FRAME_S) - REVERB_FRAMES
            for key in [k for k in self._played if k < horizon]:
                del self._played[key]

    def _now_frame(self) -> int:
        if self._clock is None:
            return self._frames
        frames, at = self._clock
        return frames + int((time.monotonic() - at) / FRAME_S)

    def user_share(self, frame: np.ndarray) -> float:
        """Record the next microphone frame; return the share of its energy that stands
        `MARGIN_DB` above the echo expected in its band (1.0 with nothing played)."""
        mic = band_levels(frame[None, :])[0]
        with self._lock:
            index = self._frames
            self._frames += 1
            self._mic.append(_total_db(mic))
            self._mic_bands.append(mic)
            self._clock = (self._frames, time.monotonic())
            if not self._played:
                return 1.0
            if index % 4 == 0:
                self._estimate(index)
            expected = self._expected(index)
        power = 10.0 ** (mic / 10.0)
        above = mic >= expected + MARGIN_DB
        return float(power[above].sum() / max(power.sum(), 1e-12))

    def is_user(self, share: float) -> bool:
        return share >= USER_SHARE

    def _played_at(self, index: int) -> np.ndarray:
        return self._played.get(index, _SILENT)

    def _expected(self, index: int) -> np.ndarray:
        if self.delay_frames is None:
            span = range(index - int(MAX_DELAY_S / FRAME_S) - REVERB_FRAMES, index + 1)
            return np.max([self._played_at(i) for i in span], axis=0) + self.unaligned_gain_db
        at = index - self.delay_frames
        recent = [self._played_at(i) for i in range(at - REVERB_FRAMES + 1, at + 1)]
        return np.max(recent, axis=0) + self.gain_db

    def _estimate(self, index: int) -> None:
        """Find the delay and per-band scale of the echo from the last WINDOW_S of levels."""
        window = self._mic.maxlen or 1
        if len(self._mic) < window:
            return
        max_delay = int(MAX_DELAY_S / FRAME_S)
        first = index + 1 - window - max_delay - REVERB_FRAMES
        bands = np.array([self._played_at(i) for i in range(first, index + 1)])
        played = np.array([_total_db(b) for b in bands], dtype=np.float64)
        if (played > ACTIVE_DB).sum() < MIN_OVERLAP_FRAMES:
            return
        mic = np.asarray(self._mic, dtype=np.float64)
        best: tuple[float, int] | None = None
        for delay in range(max_delay + 1):
            lo = len(played) - window - delay
            shifted = played[lo : lo + window]
            active = shifted > ACTIVE_DB
            if active.sum() < MIN_OVERLAP_FRAMES:
                continue
            a, b = mic[active], shifted[active]
            if a.std() < 1e-6 or b.std() < 1e-6:
                continue
            r = float(np.corrcoef(a, b)[0, 1])
            if best is None or r > best[0]:
                best = (r, delay)
        if best is None:
            return
        self.correlation = best[0]
        if best[0] >= MIN_CORRELATION:
            self.delay_frames = best[1]
            lo = len(played) - window - best[1]
            active = played[lo : lo + window] > ACTIVE_DB
            mic_bands = np.array(self._mic_bands)
            diff = mic_bands[active] - bands[lo : lo + window][active]
            self.gain_db = np.percentile(diff, 30, axis=0).astype(np.float32)
        elif self.delay_frames is None:
            # No echo found in the envelope (cancelled, or too faint): the microphone's level
            # under the loudest recent playback bounds the echo from above.
            span = max_delay + REVERB_FRAMES + 1
            envelope = np.lib.stride_tricks.sliding_window_view(played, span).max(axis=1)
            envelope = envelope[-window:]
            active = envelope > ACTIVE_DB
            if active.sum() >= MIN_OVERLAP_FRAMES:
                gain = float(np.median(mic[active] - envelope[active]))
                self.unaligned_gain_db = min(DEFAULT_GAIN_DB, gain)
