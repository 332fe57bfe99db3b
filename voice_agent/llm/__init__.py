"""Instruct LLM engine. `OpenSourceLLM` is the seed's name for it (lazy import keeps this cheap)."""

from voice_agent.llm.base import ChatMessage, GenerationSettings, LLMEngine, Reply, ReplyStream

__all__ = [
    "ChatMessage",
    "GenerationSettings",
    "LLMEngine",
    "Reply",
    "ReplyStream",
    "OpenSourceLLM",
]


def __getattr__(name: str):
    if name == "OpenSourceLLM":
        from voice_agent.llm.engine import OpenSourceLLM

        return OpenSourceLLM
    raise AttributeError(name)
