"""Types shared by the LLM engine and its callers (agent, REST server, UI)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, TypedDict

from voice_agent.core.loading import LoadReport

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


@dataclass(frozen=True)
class LLMCapabilities:
    """What an LLM engine can do, declared by the engine when it is built (never probed).

    Attributes:
        streaming: `stream_reply` yields pieces as they are generated (False: all at the end).
        cancel: a cancelled token stops generation within a step.
        concurrency: replies it serves at once; more than 1 for a serving engine that
            batches (the LLM gate lets this many through together).
    """

    streaming: bool = True
    cancel: bool = True
    concurrency: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LLMEngine(Protocol):
    """What the agent and the server need from an LLM."""

    model_id: str
    report: LoadReport
    context_length: int
    capabilities: LLMCapabilities

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
