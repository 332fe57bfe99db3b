"""Types shared by the STT engine and its callers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..loading import LoadReport

# What every audio entry point accepts: a path, encoded bytes, a bare array
# (assumed 16 kHz) or Gradio's (sample_rate, array) pair.
AudioInput = str | Path | bytes | np.ndarray | tuple[int, np.ndarray]


@dataclass
class Transcript:
    text: str
    language: str | None
    duration_s: float  # audio length
    seconds: float  # compute time
    speech_detected: bool = True
    words: list[tuple[str, float, float]] = field(
        default_factory=list
    )  # (word, start_s, end_s) when asked


class STTEngine(Protocol):
    model_id: str
    report: LoadReport
    sample_rate: int

    def transcribe(self, audio: AudioInput, language: str | None = None) -> Transcript: ...
