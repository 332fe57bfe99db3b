"""Tool calls in and out of the model: the tools checked, the calls parsed, the stream filtered.

Going in, tools are rendered by the model's own chat template (`tools=` in
`apply_chat_template`, see `llm.prompt.render`); a template that knows no tools
gets `generic_messages` instead: the tools described in the system message and
the model asked to answer a call with a bare JSON object.

Coming out, two forms are understood (`parse_reply`):

- Qwen2.5's (and Hermes'): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
  one block per call, possibly after some text;
- the generic JSON form: a reply that is only a JSON object (or a list of them),
  `{"name": ..., "arguments": {...}}` (`parameters` and OpenAI's
  `{"function": {...}}` wrapping accepted), fenced in ``` or not.

A call that cannot be read is still a `ToolCall`, with `error` saying why, so the
model can be told and try again; a turn never crashes on one. `ToolCallFilter`
does the same incrementally while the reply streams: the words before a call go
out as they come, and nothing of a call (not even a partial `<tool_call`) is ever
shown or spoken.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from voice_agent.llm.base import ChatMessage, ReplyStream, ToolCall, ToolSpec
from voice_agent.llm.errors import InvalidToolsError

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_CHOICES = ("auto", "none", "required")
# OpenAI's rule for function names; chat templates print them into JSON unescaped.
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128
# A reply opening with one of these may be a generic JSON call: held back until it ends.
JSON_STARTS = ("{", "[", "```")
_BLOCK = re.compile(
    re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.S
)
_ATTEMPT = re.compile(r'^\s*\[?\s*\{\s*"(?:name|function|type)"')
_FENCE = re.compile(r"^```[A-Za-z]*\s*(.*?)\s*```$", re.S)

GENERIC_TOOL_PROMPT = (
    "You can call functions to help answer. They are listed here as JSON schemas:\n"
    "{tools}\n\n"
    'To call one, reply with only a JSON object, {{"name": <function-name>, "arguments": '
    "<arguments-object>}}, and nothing else; its result comes back in the next message. "
    "Otherwise, answer normally."
)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def check_tools(
    tools: Sequence[ToolSpec] | None, tool_choice: str = "auto"
) -> list[dict[str, Any]]:
    """Tools in the one shape templates take, `{"type": "function", "function": {...}}`.

    A bare function object (`{"name", "description", "parameters"}`) is wrapped.

    Raises:
        InvalidToolsError: a tool without a valid name, with parameters that are not a
            JSON object schema, a repeated name, or a `tool_choice` that names none of them.
    """
    checked: list[dict[str, Any]] = []
    names: set[str] = set()
    if tools is not None and (isinstance(tools, str | bytes) or not isinstance(tools, Sequence)):
        raise InvalidToolsError("`tools` must be a list of function tools.")
    if tools is not None and len(tools) > MAX_TOOLS:
        raise InvalidToolsError(f"at most {MAX_TOOLS} tools are accepted, got {len(tools)}.")
    for i, tool in enumerate(tools or ()):
        if not isinstance(tool, Mapping):
            raise InvalidToolsError(f"tools[{i}] must be an object, got {type(tool).__name__}.")
        function = tool.get("function") if "function" in tool else tool
        if tool.get("type", "function") != "function" or not isinstance(function, Mapping):
            raise InvalidToolsError(
                f'tools[{i}] must be {{"type": "function", "function": {{"name", "description", '
                '"parameters"}}}; only function tools are supported.'
            )
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise InvalidToolsError(
                f"tools[{i}].function.name must be 1 to 64 letters, digits, _ or -, got {name!r:.80}."
            )
        if name in names:
            raise InvalidToolsError(f"tools[{i}]: the name {name!r} is used twice.")
        names.add(name)
        description = function.get("description", "")
        if not isinstance(description, str):
            raise InvalidToolsError(f"tools[{i}].function.description must be a string.")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, Mapping) or parameters.get("type", "object") != "object":
            raise InvalidToolsError(
                f"tools[{i}].function.parameters must be a JSON schema of type object."
            )
        checked.append(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": description,
                    "parameters": dict(parameters),
                },
            }
        )
    if tool_choice not in TOOL_CHOICES and tool_choice not in names:
        accepted = ", ".join([*TOOL_CHOICES, *sorted(names)])
        raise InvalidToolsError(
            f"tool_choice {tool_choice!r:.80} is not valid; accepted: {accepted}."
        )
    if tool_choice not in ("auto", "none") and not checked:
        raise InvalidToolsError(f"tool_choice {tool_choice!r} needs `tools`.")
    return checked


def supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders `tools` itself (Qwen2.5, Llama 3.1, ...)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one, else any
        template = template.get("tool_use") or template.get("default") or ""
    return isinstance(template, str) and "tools" in template


def forced_prefix(tool_choice: str, *, template_tools: bool) -> str:
    """The start of the assistant's turn that makes the model call a tool (`required` or a name).

    The model then writes only the rest of the call: a chat template cannot say "must
    call" any other way. "" for `auto` and `none`.
    """
    if tool_choice in ("auto", "none"):
        return ""
    head = f"{TOOL_CALL_OPEN}\n" if template_tools else ""
    if tool_choice == "required":
        return head + '{"name": "'
    return head + json.dumps({"name": tool_choice})[:-1] + ', "arguments": '


def generic_messages(messages: list[ChatMessage], tools: list[dict[str, Any]]) -> list[ChatMessage]:
    """`messages` for a template that knows no tools: the tools described in the system
    message, calls written as the JSON the model is asked for, results as user messages."""
    out: list[ChatMessage] = []
    for message in messages:
        role = message["role"]
        if role == "assistant" and message.get("tool_calls"):
            calls = [
                {"name": c["function"]["name"], "arguments": c["function"].get("arguments", {})}
                for c in message.get("tool_calls", [])
            ]
            written = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
            text = (message["content"].strip() + "\n" + written).strip()
            out.append({"role": "assistant", "content": text})
        elif role == "tool":
            name = message.get("name") or "the function"
            out.append({"role": "user", "content": f"Result of {name}: {message['content']}"})
        else:
            out.append({"role": role, "content": message["content"]})
    if tools:
        listing = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
        note = GENERIC_TOOL_PROMPT.format(tools=listing)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + note}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out


@dataclass
class ParsedReply:
    """A reply split into what the model said (`text`) and the calls it made."""

    text: str
    calls: list[ToolCall] = field(default_factory=list)


def read_arguments(value: Any) -> tuple[dict[str, Any], str | None]:
    """A call's arguments as an object, and why they cannot be used (None when they can).

    Accepts the object itself or a JSON string of one (empty means no arguments).
    """
    if value is None:
        return {}, None
    if isinstance(value, str):  # some models write the arguments as a JSON string
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            return {}, f"its arguments are not valid JSON ({exc.msg})"
    if not isinstance(value, dict):
        return {}, f"its arguments must be a JSON object, not {type(value).__name__}"
    return value, None


def _call_from(obj: Any) -> ToolCall | None:
    """A call from a decoded JSON value, or None when it is not call-shaped at all."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):  # OpenAI's {"type": "function", "function": {...}}
        obj = obj["function"]
    if "name" not in obj or not ({"arguments", "parameters"} & obj.keys() or len(obj) == 1):
        return None
    name = obj["name"]
    if not isinstance(name, str) or not name.strip():
        return ToolCall(new_call_id(), "", error="the call names no function")
    arguments, problem = read_arguments(obj.get("arguments", obj.get("parameters")))
    return ToolCall(new_call_id(), name.strip(), arguments, problem)


def _block_call(body: str, closed: bool) -> ToolCall:
    """The call inside one `<tool_call>` block (always a call: a bad one carries its error)."""
    text = body.strip()
    try:
        obj, end = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        cut = "" if closed else " (it was cut off before it ended)"
        return ToolCall(
            new_call_id(),
            _guess_name(text),
            error=f"the call is not valid JSON: {exc.msg}{cut}",
            raw=text,
        )
    call = _call_from(obj)
    if call is None:
        return ToolCall(
            new_call_id(),
            _guess_name(text),
            error='the call must be {"name": <function-name>, "arguments": {...}}',
            raw=text,
        )
    if call.error:
        call.raw = text
    return call


def _guess_name(text: str) -> str:
    match = re.search(r'"name"\s*:\s*"([^"]{1,64})"', text)
    return match.group(1) if match else ""


def _generic_calls(text: str) -> list[ToolCall]:
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        if _ATTEMPT.match(body):  # meant as a call, but broken (or cut off)
            error = f"the call is not valid JSON: {exc.msg}"
            return [ToolCall(new_call_id(), _guess_name(body), error=error, raw=body)]
        return []
    items = value if isinstance(value, list) else [value]
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        items = value["tool_calls"]
    calls = [_call_from(item) for item in items]
    if not calls or any(c is None for c in calls):
        return []
    return [c for c in calls if c is not None]


def parse_reply(text: str) -> ParsedReply:
    """Split a whole reply into its text and its tool calls (either form)."""
    start = text.find(TOOL_CALL_OPEN)
    if start >= 0:
        calls = [
            _block_call(m.group(1), m.group(0).endswith(TOOL_CALL_CLOSE))
            for m in _BLOCK.finditer(text, start)
        ]
        return ParsedReply(text[:start], calls)
    if text.lstrip().startswith(JSON_STARTS):
        calls = _generic_calls(text)
        if calls:
            return ParsedReply("", calls)
    return ParsedReply(text)


class ToolCallFilter:
    """The visible part of a reply streamed piece by piece; the calls once it has ended.

    Text is held back while it could still turn out to be a call: a tail that may
    be the start of `<tool_call>`, and a whole reply that opens like JSON (decided at
    the end). Once a call starts nothing more is shown.

    Args:
        prefix: text the model's turn was started with (a forced call), never shown.
    """

    def __init__(self, prefix: str = "") -> None:
        self.raw = prefix
        self.shown = ""
        self._hold_all = False  # the reply opens like JSON
        self._decided = False
        self._in_call = False
        if prefix:
            self._decide()

    def feed(self, piece: str) -> str:
        """Add a piece; returns the text that may be shown now ("" when held back)."""
        self.raw += piece
        if not self._decided:
            self._decide()
            if not self._decided:
                return ""
        if self._hold_all or self._in_call:
            return ""
        cut = self.raw.find(TOOL_CALL_OPEN, max(0, len(self.shown) - len(TOOL_CALL_OPEN)))
        if cut >= 0:
            self._in_call = True
            return self._show(cut)
        return self._show(len(self.raw) - _open_prefix_length(self.raw))

    def finish(self) -> tuple[str, ParsedReply]:
        """The reply has ended: the text still to show, and the parsed reply."""
        parsed = parse_reply(self.raw)
        if parsed.calls:
            # What was shown stays shown; the rest of the visible text is what precedes
            # the first call.
            return self._show(max(len(self.shown), len(parsed.text))), ParsedReply(
                self.shown, parsed.calls
            )
        tail = self._show(len(self.raw))
        return tail, ParsedReply(self.shown)

    def _decide(self) -> None:
        head = self.raw.lstrip()
        if not head:
            return
        if head.startswith(TOOL_CALL_OPEN[: len(head)]) and len(head) < len(TOOL_CALL_OPEN):
            return  # "<tool" so far: wait for the next piece
        self._decided = True
        self._hold_all = head.startswith(JSON_STARTS) or (len(head) < 3 and "```".startswith(head))
        self._in_call = head.startswith(TOOL_CALL_OPEN)

    def _show(self, upto: int) -> str:
        if upto <= len(self.shown):
            return ""
        piece = self.raw[len(self.shown) : upto]
        self.shown += piece
        return piece


def _open_prefix_length(text: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `<tool_call>`."""
    for n in range(min(len(text), len(TOOL_CALL_OPEN) - 1), 0, -1):
        if text.endswith(TOOL_CALL_OPEN[:n]):
            return n
    return 0


def with_tool_calls(stream: ReplyStream, prefix: str = "") -> ReplyStream:
    """Filter `stream` in place: its pieces show only what the model says, and once they
    are exhausted `stream.reply` holds the calls (finish_reason "tool_calls").

    A reply cancelled mid-call keeps no call (the call was never finished). One cut at
    `max_new_tokens` inside a call keeps it, marked malformed.
    """
    inner = stream.pieces

    def pieces() -> Iterator[str]:
        tool_filter = ToolCallFilter(prefix)
        try:
            for piece in inner:
                shown = tool_filter.feed(piece)
                if shown:
                    yield shown
            tail, parsed = tool_filter.finish()
            if tail:
                yield tail
        finally:
            close = getattr(inner, "close", None)
            if callable(close):
                close()
        reply = stream.reply
        if reply is None:
            return
        reply.text = parsed.text
        if parsed.calls and reply.finish_reason != "cancelled":
            reply.tool_calls = parsed.calls
            reply.finish_reason = "tool_calls"

    stream.pieces = pieces()
    return stream
