"""Act: the tool calls of a reply, run while the turn waits, with a filler if they take long.

The think stage hands the calls the model made to `act`, which starts them all
(`Toolbox.start`: each on its own worker, each ending in a `ToolRecord` whatever
happens) and relays each one twice: when it starts and when it ends, so the chat
can show it running (a call refused before it ran is relayed once). If they are still running after `filler_after_s`, the
filler ("One moment.") goes to the voice once, so the person is not left in
silence. A cancel (barge-in, Stop) stops every call still running: the records
say "stopped", and the turn ends within a poll. A tentative turn's calls start only
once the turn is confirmed (`Acting.confirmed`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

from voice_agent.core.cancel import is_cancelled, wait_unless_cancelled
from voice_agent.llm.base import ChatMessage, ToolCall
from voice_agent.pipeline.relay import FillerOut, Relay, ToolOut
from voice_agent.pipeline.speak import TextFeed
from voice_agent.pipeline.turn import TurnClock, TurnTimings
from voice_agent.tools.base import ToolContext, ToolRecord
from voice_agent.tools.toolbox import Toolbox

FILLER = "One moment."
# A tool running longer than this gets the filler: about when silence starts to feel broken.
FILLER_AFTER_S = 1.0
# Rounds of tool calls in one turn; the answer after the last round is written without tools.
MAX_TOOL_ROUNDS = 3
_POLL_S = 0.02


@dataclass
class Acting:
    """What a turn needs to run tools.

    Attributes:
        toolbox: the tools on offer.
        context: who the calls serve (session, consent, timers, time zone).
        speak_filler: the turn has a voice to say the filler with.
        filler, filler_after_s: what is said, and after how long, while tools run.
        confirmed: a tentative turn's (`Agent.run_turn(confirmed=...)`): no call starts
            before it is set, since the user may still be speaking (a timer set from half
            a sentence would be wrong).
    """

    toolbox: Toolbox
    context: ToolContext
    speak_filler: bool = True
    filler: str = FILLER
    filler_after_s: float = FILLER_AFTER_S
    confirmed: threading.Event | None = None


def act(
    calls: list[ToolCall],
    acting: Acting,
    relay: Relay,
    feed: TextFeed,
    *,
    cancel: object,
    timings: TurnTimings,
    clock: TurnClock,
) -> list[ToolRecord]:
    """Run `calls` (at once) to their end, a time-out or a cancel; returns their records
    (none when a tentative turn is cancelled before it is confirmed)."""
    if acting.confirmed is not None and not wait_unless_cancelled(
        acting.confirmed, cancel, _POLL_S
    ):
        return []
    t0 = time.perf_counter()
    runs = [acting.toolbox.start(call, acting.context) for call in calls]
    for run in runs:
        if run.started:  # a call refused up front has only its end to show
            relay.put(ToolOut(replace(run.record, status="running", result="", error=None)))
    said_filler = False
    pending = list(runs)
    while pending:
        if is_cancelled(cancel):
            for run in pending:
                run.stop()
        pending = [run for run in pending if not run.wait(_POLL_S)]
        if (
            pending
            and not said_filler
            and not is_cancelled(cancel)
            and time.perf_counter() - t0 >= acting.filler_after_s
        ):
            said_filler = True
            timings.filler_at = clock.elapsed()
            relay.put(FillerOut(acting.filler))
            if acting.speak_filler:
                feed.put(acting.filler + " ")  # the space ends the sentence for the splitter
    for run in runs:
        relay.put(ToolOut(replace(run.record)))
    timings.tool_calls += len(runs)
    timings.tool_s = (timings.tool_s or 0.0) + time.perf_counter() - t0
    return [run.record for run in runs]


def call_message(text: str, calls: list[ToolCall]) -> ChatMessage:
    """The assistant message that made `calls` (with what it said before them)."""
    return {"role": "assistant", "content": text, "tool_calls": [c.as_message() for c in calls]}
