"""Text to speech. `LocalTTS` is the engine (`Dia2TTS`, the seed's name, stays as an alias);
a lazy import keeps this cheap."""

from typing import Any

from voice_agent.tts.base import AudioChunk, TTSCapabilities, TTSEngine, Voice

__all__ = ["AudioChunk", "Dia2TTS", "LocalTTS", "TTSCapabilities", "TTSEngine", "Voice"]


def __getattr__(name: str) -> Any:
    if name in ("LocalTTS", "Dia2TTS"):
        from voice_agent.tts import engine

        return getattr(engine, name)
    raise AttributeError(name)
