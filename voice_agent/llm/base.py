"""Types shared by the LLM engine and its callers (agent, REST server, UI)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict

from ..loading import LoadReport

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "cancelled"]


class ChatMessage(TypedDict):
    role: Role
    content: str


@dataclass(frozen=True)
class GenerationSettings:
    """Per-call sampling settings. temperature 0 means greedy decoding."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Reply:
    """A finished (or cancelled) reply."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    first_token_seconds: float | None = None
    trimmed_messages: int = 0  # oldest history messages dropped to fit the context


@dataclass
class ReplyStream:
    """Iterator of text pieces; `reply` is set once the iterator is exhausted."""

    pieces: Iterator[str]
    reply: Reply | None = field(default=None)

    def __iter__(self) -> Iterator[str]:
        return self.pieces

    def collect(self) -> Reply:
        """Exhaust the pieces and return the finished reply (how `generate_reply` is built)."""
        for _ in self.pieces:
            pass
        assert self.reply is not None
        return self.reply


class LLMEngine(Protocol):
    """What the agent and the server need from an LLM."""

    model_id: str
    report: LoadReport
    context_length: int

    def generate_reply(
        self,
        messages: list[ChatMessage] | str,
        settings: GenerationSettings | None = None,
        cancel: object | None = None,
        system_prompt: str | None = None,
    ) -> Reply: ...

    def stream_reply(
        self,
        messages: list[ChatMessage] | str,
        settings: GenerationSettings | None = None,
        cancel: object | None = None,
        system_prompt: str | None = None,
    ) -> ReplyStream: ...
