"""Types shared by the TTS engine, its backends and callers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..loading import LoadReport


@dataclass(frozen=True)
class Voice:
    id: str
    name: str
    description: str = ""


@dataclass
class AudioChunk:
    """A piece of speech: float32 mono samples in [-1, 1] at `sample_rate`."""

    sample_rate: int
    samples: np.ndarray
    text: str = ""  # the text this chunk speaks, when known
    final: bool = False


class TTSEngine(Protocol):
    backend: str  # "dia2" | "dia" | "vits"
    model_id: str
    sample_rate: int
    report: LoadReport

    def synthesize(self, text: str, voice: str | None = None) -> tuple[int, np.ndarray]: ...

    def stream(
        self, text: str | Iterable[str], voice: str | None = None, cancel: object | None = None
    ) -> Iterator[AudioChunk]: ...

    def voices(self) -> list[Voice]: ...
