"""`Dia2Result`: what one utterance returns (`Dia2Runtime.generate`, `Dia2Stream.result`).

Its own module, below the runtime, so that errors and streaming can name it
without importing the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

StopReason = Literal["eos", "max_context", "cancelled"]


@dataclass(frozen=True)
class Dia2Result:
    """One utterance.

    Attributes:
        audio: float32 mono waveform at `sample_rate`, in [-1, 1].
        audio_tokens: Mimi codes [Q, F] int64 (undelayed, prefix cropped).
        timestamps: (word, start seconds) for each spoken word.
        steps_run: generation steps (warm-up excluded).
        end_step: step at which the script ran out (None if it never did).
        stopped_by: "eos", "max_context" or "cancelled".
        words_spoken / words_total: words consumed by the model / in the script.
    """

    audio: np.ndarray
    sample_rate: int
    audio_tokens: np.ndarray
    timestamps: list[tuple[str, float]]
    steps_run: int
    end_step: int | None
    stopped_by: StopReason
    words_spoken: int = 0
    words_total: int = 0
    crop_frames: int = 0

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate
