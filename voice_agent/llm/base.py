"""Types shared by the LLM engine and its callers (agent, REST server, UI)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NotRequired, Protocol, TypedDict

from voice_agent.core.loading import LoadReport

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "cancelled", "tool_calls"]
# A tool as the chat template and OpenAI's API take it:
# {"type": "function", "function": {"name", "description", "parameters": JSON schema}}.
ToolSpec = Mapping[str, Any]


class ChatMessage(TypedDict):
    """One message. An assistant message may carry the `tool_calls` it made (OpenAI's shape,
    arguments as an object); a `tool` message answers one, naming it in `name` and
    `tool_call_id`."""

    role: Role
    content: str
    tool_calls: NotRequired[list[dict[str, Any]]]
    tool_call_id: NotRequired[str]
    name: NotRequired[str]


@dataclass
class ToolCall:
    """A call the model asked for. `error` says why it cannot run as written (malformed)."""

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    raw: str = ""  # the call as the model wrote it, when it could not be read (for API clients)

    def as_message(self) -> dict[str, Any]:
        """The call as an assistant message's `tool_calls` entry (OpenAI's shape)."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


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
    tool_calls: list[ToolCall] = field(default_factory=list)  # finish_reason "tool_calls"


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
        tools: `stream_reply(tools=...)` renders the tools into the prompt and parses the
            model's tool calls into `Reply.tool_calls`.
        concurrency: replies it serves at once; more than 1 for a serving engine that
            batches (the LLM gate lets this many through together).
    """

    streaming: bool = True
    cancel: bool = True
    tools: bool = False
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
        *,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: str = "auto",
    ) -> Reply: ...

    def stream_reply(
        self,
        messages: list[ChatMessage] | str,
        settings: GenerationSettings | None = None,
        cancel: object | None = None,
        system_prompt: str | None = None,
        *,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: str = "auto",
    ) -> ReplyStream: ...
