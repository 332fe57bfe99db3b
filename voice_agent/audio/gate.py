"""The speech gate: does a clip hold speech, or only silence and noise?

Whisper "hears" phrases such as "Thank you." or "you" in silence and noise, so
the turn (`pipeline.hear`) and the STT engine ask `is_speech` first. The clip
goes through the process's voice-activity model (`voice_activity`: Silero VAD,
or the numpy detector when it cannot load) frame by frame from a fresh stream;
frames at or above `SPEECH_THRESHOLD` that come in runs of at least
`SPEECH_MIN_RUN` frames count as speech, and the clip passes with at least
`SPEECH_MIN_SECONDS` of them.
"""

from __future__ import annotations

import numpy as np

from voice_agent.audio.voice_activity import (
    FRAME_S,
    SAMPLE_RATE,
    VoiceActivityModel,
    probabilities,
    to_mono_float,
)

SPEECH_THRESHOLD = 0.5  # Silero's own default threshold
SPEECH_MIN_RUN = 3  # consecutive frames (96 ms): shorter bursts are clicks, not syllables
SPEECH_MIN_SECONDS = 0.2  # speech frames needed in total


def long_runs(mask: np.ndarray, min_run: int) -> np.ndarray:
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


def speech_seconds(
    samples: np.ndarray, rate: int = SAMPLE_RATE, model: VoiceActivityModel | None = None
) -> float:
    """Seconds of the clip that the voice-activity model calls speech (in runs of 96 ms+)."""
    x = to_mono_float(samples)
    if rate != SAMPLE_RATE:
        from voice_agent.audio.io import resample

        x = resample(x, rate, SAMPLE_RATE)
    speech = long_runs(probabilities(x, model) >= SPEECH_THRESHOLD, SPEECH_MIN_RUN)
    return float(speech.sum() * FRAME_S)


def is_speech(
    samples: np.ndarray,
    rate: int = SAMPLE_RATE,
    min_seconds: float = SPEECH_MIN_SECONDS,
    model: VoiceActivityModel | None = None,
) -> bool:
    """True when the clip holds at least `min_seconds` of speech.

    Args:
        samples: the clip, any dtype, mono or stereo.
        rate: its sample rate (resampled to 16 kHz when it differs).
        model: the voice-activity model; default the process's (`voice_activity.load_model`).
    """
    return speech_seconds(samples, rate, model) >= min_seconds
