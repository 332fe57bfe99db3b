"""Text to speech. `Dia2TTS` is the seed's name for the engine (lazy import keeps this cheap)."""

from .base import AudioChunk, TTSEngine, Voice

__all__ = ["AudioChunk", "TTSEngine", "Voice", "Dia2TTS"]


def __getattr__(name: str):
    if name == "Dia2TTS":
        from .engine import Dia2TTS

        return Dia2TTS
    raise AttributeError(name)
