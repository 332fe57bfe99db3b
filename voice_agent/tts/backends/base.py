"""The small interface every TTS backend implements, and what they share."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from voice_agent.core.config import Settings, get_settings
from voice_agent.core.errors import InputError
from voice_agent.core.hub import ensure_model_exists
from voice_agent.tts.base import Voice
from voice_agent.tts.base import WordTimer as WordTimer  # the backends import it from here


class NothingToSpeakError(InputError):
    """The text has nothing a voice can read (empty, only emoji, only code, other script)."""

    code = "nothing_to_speak"


class UnknownVoiceError(InputError):
    """A voice name the backend does not offer; the message lists those it does."""

    code = "unknown_voice"


@runtime_checkable
class SpeechBackend(Protocol):
    """One TTS model family behind one interface.

    Attributes:
        name: registry name ("dia2", "dia", "vits").
        model_id: the model reference it was loaded from.
        sample_rate: rate of the audio `synthesize` returns.
        device / dtype: where and how it runs (for the load report).
        max_chars: the longest text one `synthesize` call takes (longer text is split).
        english_only: the model reads English only (others are warned about).
        streams_text: it takes phrases while speaking (`WordStreamingBackend.stream_phrases`).
        uses_word_timer: its voice prefixes take word timings (`WordStreamingBackend.set_word_timer`).
        offers_voices: it has voices beyond "default" (`voices()` lists them).
    """

    name: ClassVar[str]
    streams_text: ClassVar[bool]
    uses_word_timer: ClassVar[bool]
    offers_voices: ClassVar[bool]
    model_id: str
    sample_rate: int
    device: str
    dtype: str
    max_chars: int
    english_only: bool

    def synthesize(self, text: str, voice: str | None = None) -> np.ndarray:
        """Speak one piece of plain text (at most `max_chars`); float32 mono samples."""
        ...

    def voices(self) -> list[Voice]: ...


@runtime_checkable
class WordStreamingBackend(SpeechBackend, Protocol):
    """A backend that takes its text while speaking and voices from prefixes (Dia2)."""

    def set_word_timer(self, timer: WordTimer | None) -> None:
        """Where voice prefixes get their word timings (e.g. Whisper)."""
        ...

    def stream_phrases(
        self, phrases: Iterable[str], voice: str | None = None, cancel: object | None = None
    ) -> Iterator[np.ndarray]:
        """Audio chunks for speakable phrases that arrive while the audio plays."""
        ...


def torch_dtype(name: str):
    """torch dtype from its name ("float32", "bfloat16", "float16")."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def from_pretrained_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `from_pretrained` on an already resolved local directory."""
    return {"local_files_only": True} if settings.offline else {}


def resolve_checkpoint(
    model_ref: str | None,
    default_model: str,
    settings: Settings | None,
    required_files: tuple[str, ...] = ("config.json",),
) -> tuple[Settings, str, Path]:
    """The settings in force, the model reference and its local folder (offline-aware).

    Raises:
        ModelNotFoundError: the reference cannot be resolved (see `hub.ensure_model_exists`).
    """
    settings = settings or get_settings()
    ref = model_ref or default_model
    return settings, ref, ensure_model_exists(ref, settings, required_files=required_files).path


def check_single_voice(model: str, voice: str | None) -> None:
    """Refuse any voice but "default" for a model with one voice.

    Raises:
        UnknownVoiceError: `voice` names another voice.
    """
    if voice not in (None, "", "default"):
        raise UnknownVoiceError(f"{model} has one voice, 'default'; {voice!r} is not available.")
