"""TTS backends by name, imported only when asked for (each pulls in torch/transformers).

backend_class("vits").load("facebook/mms-tts-eng", device="cpu")
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from voice_agent.core.errors import ModelUnavailableError
from voice_agent.tts.backends.base import (
    NothingToSpeakError,
    SpeechBackend,
    UnknownVoiceError,
    WordStreamingBackend,
)


@dataclass(frozen=True)
class BackendEntry:
    module: str
    cls: str
    summary: str
    install_hint: str


REGISTRY: dict[str, BackendEntry] = {
    "dia2": BackendEntry(
        "voice_agent.tts.backends.dia2",
        "Dia2Backend",
        "Dia2 (nari-labs, Apache-2.0) on our own streaming runtime; CUDA for real time",
        "pip install torch transformers safetensors soundfile soxr",
    ),
    "dia": BackendEntry(
        "voice_agent.tts.backends.dia",
        "DiaBackend",
        "Dia 1.6B (nari-labs, Apache-2.0) through transformers; sentence by sentence",
        "pip install torch 'transformers>=4.54'",
    ),
    "piper": BackendEntry(
        "voice_agent.tts.backends.piper",
        "PiperBackend",
        "Piper voices (ONNX VITS) through onnxruntime, read with gruut; the fast CPU default",
        "pip install onnxruntime 'gruut==2.4.0' 'gruut-lang-en==2.0.1'",
    ),
    "vits": BackendEntry(
        "voice_agent.tts.backends.vits",
        "VitsBackend",
        "VITS / MMS-TTS through transformers; light, real time on a CPU",
        "pip install torch transformers",
    ),
}
NAMES = tuple(REGISTRY)


class BackendUnavailableError(ModelUnavailableError):
    """A backend's module or one of its dependencies cannot be imported."""


def backend_class(name: str) -> type:
    """The backend class registered as `name`, imported now.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
        BackendUnavailableError: a dependency is missing (the message says what to install).
    """
    entry = REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"Unknown TTS backend {name!r}; choose one of: {', '.join(NAMES)}.")
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"The {name} TTS backend cannot be imported ({exc}). Install: {entry.install_hint}"
        ) from exc
    return getattr(module, entry.cls)


__all__ = [
    "NAMES",
    "REGISTRY",
    "BackendUnavailableError",
    "NothingToSpeakError",
    "SpeechBackend",
    "UnknownVoiceError",
    "WordStreamingBackend",
    "backend_class",
]
