"""A turn started ahead, at the user's short pause (`pipeline.ahead.TurnAhead`): kept, it
is the turn; discarded, the agent keeps nothing of it; its tool calls wait for the user to
be done. On fakes (tests/fakes.py) with the real agent, parser and toolbox."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from tests.fakes import FakeLLM, MeasuringSTT, fake_models
from voice_agent.audio.io import load_audio
from voice_agent.core.cancel import DISCARDED
from voice_agent.core.config import ASSETS_DIR
from voice_agent.pipeline.agent import Agent
from voice_agent.pipeline.ahead import TurnAhead
from voice_agent.tools import Toolbox
from voice_agent.tools.schema import tool_from_function


def speech() -> np.ndarray:
    """A spoken clip, 16 kHz float32 (it passes the speech gate)."""
    return load_audio(ASSETS_DIR / "hello.wav")


def wait_until(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_confirmed_turn_ahead_is_the_turn():
    llm = FakeLLM("Sunny all day.")
    agent = Agent(fake_models(llm=llm, stt=MeasuringSTT()))
    session = agent.new_session()
    samples = speech()
    ahead = TurnAhead(agent, session, samples)
    wait_until(lambda: ahead._events.qsize() >= 3)  # transcript, reply: done ahead
    time.sleep(0.1)
    assert session.history == [], "a turn nobody took joined the history"
    events = list(ahead.events())
    assert events[0].kind == "transcript" and events[0].text == f"heard {len(samples)} samples"
    assert events[-1].kind == "done" and events[-1].text == "Sunny all day."
    assert events[-1].timings.ahead and not events[-1].interrupted
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    assert session.turns == 1 and agent.recent_timings()["count"] == 1
    assert ahead.made_from((16_000, samples)) and not ahead.made_from((16_000, samples[:-1]))
    with pytest.raises(RuntimeError):  # read once
        next(ahead.events())


def test_a_discarded_turn_ahead_leaves_nothing_behind():
    """The user went on speaking: no history, no turn count, no timings; the next turn
    starts cleanly."""
    llm = FakeLLM("One two three four five six seven eight.", step_s=0.05)
    agent = Agent(fake_models(llm=llm, stt=MeasuringSTT()))
    session = agent.new_session()
    ahead = TurnAhead(agent, session, speech())
    wait_until(lambda: llm.emitted)  # it has said words already
    ahead.discard()
    wait_until(lambda: ahead.done)
    assert ahead.discarded and ahead.token.reason == DISCARDED
    with pytest.raises(RuntimeError):  # a discarded guess is nobody's turn
        next(ahead.events())
    assert session.history == [] and session.interrupted == []
    assert session.turns == 0 and agent.recent_timings()["count"] == 0

    events = list(agent.run_turn(session, text="Hello?"))
    assert events[-1].kind == "done" and events[-1].timings.turn == 1
    assert [m["content"] for m in session.history][0] == "Hello?"
    assert agent.recent_timings()["count"] == 1


def tool_agent(ran: list[str]) -> tuple[Agent, FakeLLM]:
    def set_timer(minutes: int) -> str:
        """Set a timer.

        Args:
            minutes: how long.
        """
        ran.append(f"timer {minutes}")
        return "set"

    call = json.dumps({"name": "set_timer", "arguments": {"minutes": 5}})
    llm = FakeLLM(script=[f"<tool_call>\n{call}\n</tool_call>", "Your timer is set."])
    box = Toolbox([tool_from_function(set_timer)])
    return Agent(fake_models(llm=llm, stt=MeasuringSTT()), tools=box), llm


def test_a_tentative_turn_acts_only_once_confirmed():
    """A timer set from half a sentence would be wrong: the call waits for the user to be
    done, then runs, and the answer follows."""
    ran: list[str] = []
    agent, llm = tool_agent(ran)
    session = agent.new_session()
    confirmed = threading.Event()
    events: list = []
    worker = threading.Thread(
        target=lambda: events.extend(
            agent.run_turn(session, text="Set a timer for 5 minutes.", confirmed=confirmed)
        )
    )
    worker.start()
    wait_until(lambda: llm.calls)
    time.sleep(0.3)
    assert ran == [] and len(llm.calls) == 1, "the tool ran before the user was done"
    confirmed.set()
    worker.join(5)
    assert ran == ["timer 5"]
    assert events[-1].kind == "done" and events[-1].text == "Your timer is set."
    assert [m["role"] for m in session.history] == ["user", "assistant", "tool", "assistant"]


def test_a_discarded_turn_never_runs_its_tools():
    ran: list[str] = []
    agent, llm = tool_agent(ran)
    session = agent.new_session()
    ahead = TurnAhead(agent, session, speech())
    wait_until(lambda: llm.calls)
    time.sleep(0.2)
    ahead.discard()
    wait_until(lambda: ahead.done)
    assert ran == [] and session.history == [] and session.turns == 0


def test_turn_numbers_stay_unique_when_a_stuck_discarded_turn_is_taken_over():
    """A discarded turn stuck in a call that cannot stop (a transcription here) is taken
    over by the next turn; it never had a number, so none repeats."""
    hold = threading.Event()
    stt = MeasuringSTT(hold=hold)
    agent = Agent(fake_models(llm=FakeLLM("Fine."), stt=stt), busy_wait_s=0.2)
    session = agent.new_session()
    ahead = TurnAhead(agent, session, speech())
    assert stt.started.wait(5)
    ahead.discard()  # the user went on speaking
    first = list(agent.run_turn(session, text="one"))
    hold.set()
    wait_until(lambda: ahead.done)
    second = list(agent.run_turn(session, text="two"))
    assert [first[-1].timings.turn, second[-1].timings.turn] == [1, 2]
    assert [m["content"] for m in session.history if m["role"] == "user"] == ["one", "two"]


def test_a_tentative_turn_stopped_before_it_was_taken_leaves_nothing():
    """Any cancel before confirmation (Stop, a typed message taking over), not only
    "discarded", leaves nothing behind."""
    llm = FakeLLM("One two three four five six seven eight.", step_s=0.05)
    agent = Agent(fake_models(llm=llm, stt=MeasuringSTT()))
    session = agent.new_session()
    ahead = TurnAhead(agent, session, speech())
    wait_until(lambda: llm.emitted)
    assert agent.cancel(session, "stopped")
    wait_until(lambda: ahead.done)
    assert session.history == [] and session.turns == 0
    assert agent.recent_timings()["count"] == 0
    with pytest.raises(RuntimeError):
        next(ahead.events())


def test_an_unclaimed_turn_ahead_lets_the_session_go(monkeypatch):
    """A turn nobody takes (its caller lost it) discards itself, so the conversation is not
    held by a turn waiting forever to be confirmed."""
    from voice_agent.pipeline import ahead as ahead_module

    monkeypatch.setattr(ahead_module, "UNCLAIMED_S", 0.3)
    agent = Agent(fake_models(llm=FakeLLM("Done."), stt=MeasuringSTT()))
    session = agent.new_session()
    ahead = TurnAhead(agent, session, speech())
    wait_until(lambda: ahead.done)
    assert ahead.discarded and session.history == []
    events = list(agent.run_turn(session, text="Still there?"))
    assert events[-1].kind == "done"
