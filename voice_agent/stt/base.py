"""Types shared by the STT engine and its callers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from voice_agent.core.errors import InputError
from voice_agent.core.loading import LoadReport

# What every audio entry point accepts: a path, encoded bytes, a bare array
# (assumed 16 kHz) or Gradio's (sample_rate, array) pair.
AudioInput = str | Path | bytes | np.ndarray | tuple[int, np.ndarray]


class Speech(NamedTuple):
    """A recording already decoded to mono float32 at 16 kHz that passed the speech gate.

    An STT engine given one neither decodes nor gates it again (the turn does both
    once). It is a `(sample_rate, samples)` pair like Gradio's, so an engine that
    knows nothing of it still reads it as one.
    """

    sample_rate: int
    samples: np.ndarray


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


class WordTimestampsUnsupportedError(InputError):
    """Word timings were asked of an engine without `capabilities.timestamps` (HTTP 400)."""

    code = "word_timestamps_unsupported"


@dataclass(frozen=True)
class STTCapabilities:
    """What an STT engine can do, declared by the engine when it is built (never probed).

    Attributes:
        languages: the language codes it can be asked for ("en" alone for an
            English-only model); empty when not known (a remote engine of an older server).
        timestamps: it gives word timings (`transcribe_words`); an engine without them
            has no `transcribe_words`, or one that raises `WordTimestampsUnsupportedError`.
    """

    languages: tuple[str, ...] = ("en",)
    timestamps: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class STTEngine(Protocol):
    """What the agent and the server need from a speech recogniser."""

    model_id: str
    report: LoadReport
    sample_rate: int
    capabilities: STTCapabilities

    def transcribe(self, audio: AudioInput, language: str | None = None) -> Transcript: ...


class WordTimingSTT(STTEngine, Protocol):
    """An STT engine with `capabilities.timestamps`."""

    def transcribe_words(self, audio: AudioInput, language: str | None = None) -> Transcript: ...
