"""Speech to text. `WhisperSTT` is the seed's name for the engine (lazy import keeps this cheap)."""

from voice_agent.stt.base import STTEngine, Transcript

__all__ = ["STTEngine", "Transcript", "WhisperSTT"]


def __getattr__(name: str):
    if name == "WhisperSTT":
        from voice_agent.stt.whisper import WhisperSTT

        return WhisperSTT
    raise AttributeError(name)
