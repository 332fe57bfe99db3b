"""The timer tools: set, list and cancel a conversation's timers (rung by its tab).

Setting and cancelling a timer are tools that act (the user must allow them);
listing them only reads. A conversation with no tab to ring in (the REST API, an
MCP client) has no board, and the tools say so.
"""

from __future__ import annotations

from typing import Any

from voice_agent.tools.base import ToolContext, ToolError
from voice_agent.tools.timer_board import TimerBoard


def _board(context: ToolContext) -> TimerBoard:
    if context.timers is None:
        raise ToolError(
            "timers ring only in the app's Conversation tab; this conversation has nowhere "
            "to ring one."
        )
    return context.timers


def set_timer(
    context: ToolContext, hours: float = 0, minutes: float = 0, seconds: float = 0, label: str = ""
) -> dict[str, Any]:
    """Set a timer; when it is done the assistant says so aloud.

    Args:
        hours: hours to count down.
        minutes: minutes to count down (e.g. 10 for "ten minutes").
        seconds: seconds to count down.
        label: what it is for, e.g. "pasta"; optional.
    """
    total = hours * 3600 + minutes * 60 + seconds
    try:
        timer = _board(context).set(context.session_id, total, label)
    except ValueError as exc:
        raise ToolError(str(exc)) from None
    return {"set": timer.as_dict()}


def list_timers(context: ToolContext) -> dict[str, Any]:
    """The timers running in this conversation, with the time each has left."""
    return {"timers": [t.as_dict() for t in _board(context).pending(context.session_id)]}


def cancel_timer(context: ToolContext, which: str = "") -> dict[str, Any]:
    """Cancel a timer.

    Args:
        which: its label or id; empty cancels every timer of this conversation.
    """
    gone = _board(context).cancel(context.session_id, which)
    if not gone:
        raise ToolError(f"no timer {which!r} is running." if which else "no timer is running.")
    return {"cancelled": [t.as_dict() for t in gone]}
