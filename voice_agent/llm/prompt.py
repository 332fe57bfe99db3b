"""Checking a chat request and fitting it into the model's context.

`normalize_messages` and `check_generation_settings` reject bad input with a specific
`InputError` before any model work. `fit_to_context` renders the chat template and drops
the oldest turns (never a system message, never the latest user turn) until the prompt
plus `max_new_tokens` fits, counting with the model's own tokenizer. A turn is a user
message and everything after it up to the next one, so a tool call and its result are
dropped together with the question that led to them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

from voice_agent.llm.base import ChatMessage, GenerationSettings, Role
from voice_agent.llm.errors import (
    EmptyConversationError,
    EmptyMessageError,
    InvalidContentError,
    InvalidGenerationSettingsError,
    InvalidMessageError,
    MaxNewTokensError,
    MessageTooLongError,
    PromptTooLongError,
    TemperatureError,
    UnknownRoleError,
)
from voice_agent.llm.tool_calls import generic_messages, supports_tools

ROLES: tuple[str, ...] = get_args(Role)
# A voice reply is a few sentences; anything near this is a mistake, not a request.
MAX_NEW_TOKENS_LIMIT = 8192
MAX_TEMPERATURE = 2.0  # the OpenAI API's range; above it sampling is noise
MAX_STOP_STRINGS = 16

# ChatML, used only when a checkpoint ships no chat template of its own.
FALLBACK_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def normalize_messages(
    messages: Sequence[Mapping[str, Any]] | str,
    system_prompt: str | None,
    max_chars: int,
) -> list[ChatMessage]:
    """Check `messages` and put the system prompt first.

    A plain string is one user message. The `system_prompt` argument replaces any leading
    system messages; when it is None they are kept; "" means no system message at all.

    Raises:
        EmptyConversationError, EmptyMessageError, InvalidMessageError, UnknownRoleError,
        InvalidContentError, MessageTooLongError: the specific mistake, with its position.
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or isinstance(messages, bytes | bytearray):
        raise InvalidMessageError(
            f"messages must be a list of {{'role', 'content'}} objects, not {type(messages).__name__}."
        )
    checked: list[ChatMessage] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise InvalidMessageError(
                f"message {i} must be an object with 'role' and 'content', got {message!r:.80}."
            )
        role, content = message["role"], message["content"]
        if content is None and role == "assistant" and message.get("tool_calls"):
            content = ""  # a turn that only calls tools says nothing
        if role not in ROLES:
            raise UnknownRoleError(
                f"message {i} has role {role!r}; accepted roles: {', '.join(ROLES)}."
            )
        if not isinstance(content, str):
            raise InvalidContentError(
                f"message {i} ({role}) has content of type {type(content).__name__}; it must be a string."
            )
        if len(content) > max_chars:
            raise MessageTooLongError(
                f"message {i} ({role}) has {len(content)} characters; the limit is {max_chars} "
                "(MAX_TEXT_CHARS)."
            )
        checked.append(_checked_message(i, role, content, message))
    if system_prompt is not None:
        while checked and checked[0]["role"] == "system":
            checked.pop(0)
        if system_prompt:
            checked.insert(0, {"role": "system", "content": system_prompt})
    if not any(m["role"] != "system" for m in checked):
        raise EmptyConversationError(
            "There is no message to answer: send at least one user message."
        )
    last = checked[-1]
    if last["role"] == "user" and not last["content"].strip():
        raise EmptyMessageError("The message is empty; say or type something first.")
    return checked


def _checked_message(i: int, role: Any, content: str, message: Mapping[str, Any]) -> ChatMessage:
    """The message with the tool fields its role may carry, checked."""
    out: ChatMessage = {"role": role, "content": content}
    calls = message.get("tool_calls")
    if calls and role == "assistant":
        if not isinstance(calls, Sequence) or isinstance(calls, str):
            raise InvalidMessageError(f"message {i} has tool_calls that are not a list.")
        out["tool_calls"] = [_checked_call(i, j, call) for j, call in enumerate(calls)]
    if role == "tool":
        call_id, name = message.get("tool_call_id"), message.get("name")
        if isinstance(call_id, str) and call_id:
            out["tool_call_id"] = call_id
        if isinstance(name, str) and name:
            out["name"] = name
    return out


def _checked_call(i: int, j: int, call: Any) -> dict[str, Any]:
    """One `tool_calls` entry in OpenAI's shape, its arguments an object (templates print them)."""
    function = call.get("function", call) if isinstance(call, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(name, str) or not name:
        raise InvalidMessageError(
            f"message {i}, tool call {j} must be {{'function': {{'name', 'arguments'}}}}."
        )
    assert isinstance(function, Mapping) and isinstance(call, Mapping)
    arguments = function.get("arguments") or {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise InvalidMessageError(
                f"message {i}, tool call {j}: the arguments are not valid JSON."
            ) from None
    if not isinstance(arguments, Mapping):
        raise InvalidMessageError(f"message {i}, tool call {j}: the arguments must be an object.")
    return {
        "id": str(call.get("id") or f"call_{i}_{j}"),
        "type": "function",
        "function": {"name": name, "arguments": dict(arguments)},
    }


def check_generation_settings(settings: GenerationSettings, context_length: int) -> None:
    """Reject settings the model cannot honour.

    Raises:
        MaxNewTokensError, TemperatureError, InvalidGenerationSettingsError.
    """
    limit = min(MAX_NEW_TOKENS_LIMIT, context_length - 1)
    n = settings.max_new_tokens
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise MaxNewTokensError(
            f"max_new_tokens={n!r} is not valid; use a whole number from 1 to {limit} "
            f"(the model's context is {context_length} tokens)."
        )
    t = settings.temperature
    if (
        isinstance(t, bool)
        or not isinstance(t, int | float)
        or not math.isfinite(t)
        or not 0 <= t <= MAX_TEMPERATURE
    ):
        raise TemperatureError(
            f"temperature={t!r} is not valid; use a number from 0 (greedy) to {MAX_TEMPERATURE:g}."
        )
    p = settings.top_p
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
        raise InvalidGenerationSettingsError(
            f"top_p={p!r} is not valid; use a number above 0 and at most 1."
        )
    stop = settings.stop
    if isinstance(stop, str) or not isinstance(stop, Sequence) or len(stop) > MAX_STOP_STRINGS:
        raise InvalidGenerationSettingsError(
            f"stop must be a list of at most {MAX_STOP_STRINGS} strings, got {stop!r:.80}."
        )
    if any(not isinstance(s, str) or not s for s in stop):
        raise InvalidGenerationSettingsError("every stop string must be a non-empty string.")
    seed = settings.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise InvalidGenerationSettingsError(f"seed={seed!r} must be a whole number ≥ 0.")


@dataclass(frozen=True)
class FittedPrompt:
    """The prompt that fits: its token ids, the messages kept and how many were dropped."""

    input_ids: list[int]
    messages: list[ChatMessage]
    dropped: int


def render(
    tokenizer: Any,
    messages: list[ChatMessage],
    tools: list[dict[str, Any]] | None = None,
    prefix: str = "",
) -> list[int]:
    """Token ids of `messages` through the chat template, ready for the assistant's turn.

    `tools` go through the template's own `tools` (or, for a template without them, into
    the system message: `tool_calls.generic_messages`); `prefix` starts the assistant's
    turn (a forced tool call).
    """
    has_tool_messages = any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
    if (tools or has_tool_messages) and not supports_tools(tokenizer):
        messages, tools = generic_messages(messages, tools or []), None
    text = tokenizer.apply_chat_template(
        messages, tools=tools or None, tokenize=False, add_generation_prompt=True
    )
    # The template writes any BOS itself; adding special tokens again would double it.
    return list(tokenizer(text + prefix, add_special_tokens=False)["input_ids"])


def _turn_starts(messages: list[ChatMessage]) -> list[int]:
    """Indexes where a droppable turn begins: each user message after the leading system ones."""
    first = next(i for i, m in enumerate(messages) if m["role"] != "system")
    starts = [i for i, m in enumerate(messages) if i >= first and m["role"] == "user"]
    return [first] + [i for i in starts if i > first]


def _drop_turns(messages: list[ChatMessage], starts: list[int], k: int) -> list[ChatMessage]:
    """`messages` without the first `k` turns; system messages inside them are kept."""
    if k == 0:
        return messages
    cut_from, cut_to = starts[0], starts[k]
    kept_system = [m for m in messages[cut_from:cut_to] if m["role"] == "system"]
    return messages[:cut_from] + kept_system + messages[cut_to:]


def fit_to_context(
    tokenizer: Any,
    messages: list[ChatMessage],
    max_new_tokens: int,
    context_length: int,
    tools: list[dict[str, Any]] | None = None,
    prefix: str = "",
) -> FittedPrompt:
    """Drop the oldest turns until prompt + `max_new_tokens` fits in `context_length`.

    The number of turns to drop is found by bisection, so a long history costs a few
    renders, not one per turn.

    Raises:
        PromptTooLongError: even the latest turn alone (with the system prompt) does not fit.
    """
    budget = context_length - max_new_tokens

    def ids_of(kept: list[ChatMessage]) -> list[int]:
        return render(tokenizer, kept, tools, prefix)

    ids = ids_of(messages)
    if len(ids) <= budget:
        return FittedPrompt(ids, messages, 0)
    starts = _turn_starts(messages)
    low, high = 1, len(starts) - 1  # dropping `high` turns leaves only the latest one
    best: tuple[list[int], list[ChatMessage], int] | None = None
    while low <= high:
        k = (low + high) // 2
        kept = _drop_turns(messages, starts, k)
        kept_ids = ids_of(kept)
        if len(kept_ids) <= budget:
            best, high = (kept_ids, kept, k), k - 1
        else:
            low = k + 1
    if best is None:
        alone = len(ids_of(_drop_turns(messages, starts, len(starts) - 1)))
        raise PromptTooLongError(
            f"The message needs {alone} tokens and the reply up to {max_new_tokens} more, "
            f"but the model's context holds {context_length} tokens, even after dropping the "
            "earlier conversation. Send a shorter message or lower max_new_tokens."
        )
    kept_ids, kept, k = best
    return FittedPrompt(kept_ids, kept, len(messages) - len(kept))
