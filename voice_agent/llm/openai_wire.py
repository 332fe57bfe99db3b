"""OpenAI's chat format on the wire: our messages and tools out, the server's tool calls in.

Used by `OpenAICompatLLM` (`LLM_BACKEND=openai`). Our history keeps a call's
arguments as an object and a tool result's function `name` (the chat templates
print both); OpenAI's API wants the arguments as a JSON string and knows no
`name` on a `tool` message, so `wire_messages` converts them.

Coming back, a server streams a call in pieces: the first delta of a call
carries its `index`, `id` and `function.name`, the next ones fragments of
`function.arguments` to be joined (`ToolCallParts`). A whole (non-streamed)
`message.tool_calls` is the same entries at once. The joined calls become the
same `ToolCall`s the embedded engine parses from the model's text: arguments
that are not a JSON object give a call with `error` set (the model is told),
never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from voice_agent.llm.base import ChatMessage, ToolCall
from voice_agent.llm.tool_calls import TOOL_CHOICES, new_call_id, read_arguments

# A call must name a function on the wire; one the model wrote without a name (its result
# already says it could not be read) is sent back under this one.
UNNAMED = "unnamed_call"


def wire_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """`messages` as OpenAI's chat API takes them.

    An assistant message's `tool_calls` get their arguments as a JSON string; a
    `tool` message keeps `tool_call_id` and drops `name` (not part of OpenAI's
    schema). Other messages are role and content.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        entry: dict[str, Any] = {"role": message["role"], "content": message["content"]}
        calls = message.get("tool_calls")
        if message["role"] == "assistant" and calls:
            entry["tool_calls"] = [_wire_call(call) for call in calls]
        if message["role"] == "tool" and message.get("tool_call_id"):
            entry["tool_call_id"] = message.get("tool_call_id")
        out.append(entry)
    return out


def _wire_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments or {}, ensure_ascii=False)
    return {
        "id": str(call.get("id") or new_call_id()),
        "type": "function",
        "function": {"name": function.get("name") or UNNAMED, "arguments": arguments},
    }


def wire_tool_choice(tool_choice: str) -> str | dict[str, Any]:
    """`tool_choice` in OpenAI's shape: "auto", "none", "required" or a named function."""
    if tool_choice in TOOL_CHOICES:
        return tool_choice
    return {"type": "function", "function": {"name": tool_choice}}


@dataclass
class _Part:
    id: str = ""
    name: str = ""
    arguments: str = ""


class ToolCallParts:
    """The `tool_calls` of a reply, joined from streamed deltas (or taken whole).

    Each entry is placed by its `index` (its position in the list when a server
    sends none): `id` is kept from the first entry that has one, `function.name`
    and `function.arguments` fragments are appended in arrival order.
    """

    def __init__(self) -> None:
        self._parts: dict[int, _Part] = {}

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, entries: Any) -> None:
        """Add one delta's `tool_calls` (or a whole message's); ignores what is not call-shaped."""
        if not isinstance(entries, list):
            return
        for position, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            index = entry.get("index")
            part = self._parts.setdefault(index if isinstance(index, int) else position, _Part())
            if isinstance(entry.get("id"), str) and not part.id:
                part.id = entry["id"]
            function = entry.get("function")
            if not isinstance(function, dict):
                continue
            if isinstance(function.get("name"), str):
                part.name += function["name"]
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                part.arguments += arguments
            elif isinstance(arguments, dict):  # a few servers send the object itself
                part.arguments += json.dumps(arguments, ensure_ascii=False)

    def calls(self) -> list[ToolCall]:
        """The joined calls in index order; a malformed one carries its `error` and `raw`."""
        return [_call(part) for _, part in sorted(self._parts.items())]


def _call(part: _Part) -> ToolCall:
    name = part.name.strip()
    arguments, problem = read_arguments(part.arguments)
    if not name:
        problem = "the call names no function"
    call = ToolCall(part.id or new_call_id(), name, arguments, problem)
    if problem:
        call.raw = part.arguments
    return call
