"""What a tool is, what it is given when it runs, and the record of one call.

A `Tool` is a name, a description and a JSON schema for its arguments (what the
model sees), a `run(arguments, context)` function, where it came from (`source`)
and whether it acts on the world (`acts`): anything beyond reading the clock or
computing. A tool that acts runs only when the user's settings allow it.

A `ToolRecord` is one call from start to end: what the model asked, what it was
told back, how long it took. The chat shows it; the history keeps its message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, Literal

from voice_agent.core.cancel import CancelToken
from voice_agent.core.errors import VoiceAgentError
from voice_agent.llm.base import ChatMessage

if TYPE_CHECKING:
    from voice_agent.tools.timer_board import TimerBoard

ToolStatus = Literal["running", "done", "failed", "refused", "cancelled"]
# What a model is told of a result at most; a tool's output is untrusted and costs context.
MAX_RESULT_CHARS = 4000


class ToolError(VoiceAgentError):
    """A tool's own refusal ("no such time zone"): the model is told the message as is."""


@dataclass(frozen=True)
class ToolContext:
    """What a running tool may know of the turn it serves.

    Attributes:
        session_id: the conversation (timers belong to it).
        cancel: set when the turn is cancelled or the tool ran out of time; a tool
            that runs long should check it.
        allow_actions: the user allows tools that act (checked before `run`).
        timers: where timers are kept and rung; None where nothing can ring them.
        time_zone: the user's time zone (TIME_ZONE, else the machine's).
    """

    session_id: str = ""
    cancel: CancelToken = field(default_factory=CancelToken)
    allow_actions: bool = False
    timers: TimerBoard | None = None
    time_zone: tzinfo | None = None


@dataclass
class Tool:
    """A function the model may call.

    Attributes:
        name: what the model calls it (letters, digits, _ and -).
        description: what it does, for the model (and the Diagnostics tab).
        parameters: a JSON schema of type object for its arguments.
        run: `run(arguments, context)`; returns the result (text or JSON-able), raises
            `ToolError` for a refusal the model should hear.
        source: where it came from: "built-in", "user (module)", "mcp: NAME".
        acts: it does more than read the clock or compute (needs the user's consent).
    """

    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[dict[str, Any], ToolContext], Any] = field(repr=False)
    source: str = "built-in"
    acts: bool = False

    def spec(self) -> dict[str, Any]:
        """The tool as the chat template and OpenAI's API take it."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def describe(self) -> dict[str, Any]:
        """For the Diagnostics tab and /health."""
        return {
            "name": self.name,
            "source": self.source,
            "acts": self.acts,
            "description": self.description,
            "parameters": sorted(self.parameters.get("properties", {})),
        }


@dataclass
class ToolRecord:
    """One tool call, from the model's request to what the model was told.

    `result` is the text the model gets back: the tool's output, or for a failed,
    refused or cancelled call an `{"error": ...}` object saying why.
    """

    call_id: str
    name: str
    arguments: dict[str, Any]
    source: str = ""
    status: ToolStatus = "running"
    result: str = ""
    error: str | None = None
    seconds: float = 0.0
    started_at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.status == "done"

    def finish(self, output: Any) -> None:
        self.status, self.result = "done", result_text(output)

    def fail(self, error: str, status: ToolStatus = "failed") -> None:
        self.status, self.error = status, error
        self.result = json.dumps({"error": error}, ensure_ascii=False)

    def message(self) -> ChatMessage:
        """The `tool` message that answers the call in the conversation."""
        return {
            "role": "tool",
            "content": self.result,
            "tool_call_id": self.call_id,
            "name": self.name,
        }

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 4)
        return out


def result_text(output: Any) -> str:
    """A tool's output as the text the model reads: strings as they are, the rest as JSON."""
    if isinstance(output, str):
        text = output
    else:
        text = json.dumps(output, ensure_ascii=False, default=str)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f" … [cut: {len(text) - MAX_RESULT_CHARS} more characters]"
    return text
