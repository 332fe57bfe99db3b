"""Tool calls in a voice turn: the model's (scripted) call runs, its result goes back, the model
answers, and only the answer is spoken; the filler while a tool runs long; errors the model is
told; cancel stops a running tool; what the history keeps. On fakes (tests/fakes.py), with
the real parser and the real toolbox.
"""

from __future__ import annotations

import json
import threading
import time

from tests.fakes import FakeLLM, FakeTTS, fake_models
from voice_agent.core.cancel import CancelToken
from voice_agent.pipeline.agent import FILLER, Agent, TurnEvent
from voice_agent.tools import Toolbox, ToolContext
from voice_agent.tools.schema import tool_from_function
from voice_agent.tools.toolbox import builtin_tools


def qwen_call(name: str, **arguments) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def run(agent: Agent, session, **kwargs) -> list[TurnEvent]:
    return list(agent.run_turn(session, **kwargs))


def tool_events(events: list[TurnEvent]) -> list[tuple[str, str]]:
    return [(e.tool.name, e.tool.status) for e in events if e.kind == "tool" and e.tool]


def test_a_tool_call_runs_and_only_the_answer_is_spoken():
    """Guards the whole loop: the model's call is parsed, run, its result fed back, and the
    voice speaks the model's answer, never the call's JSON."""
    llm = FakeLLM(script=[qwen_call("calculate", expression="24 * 37"), "It is 888."])
    tts = FakeTTS()
    agent = Agent(fake_models(llm=llm, tts=tts), tools=Toolbox(builtin_tools()))
    session = agent.new_session()
    events = run(agent, session, text="What is 24 times 37?")

    assert events[-1].kind == "done" and events[-1].text == "It is 888."
    assert tool_events(events) == [("calculate", "running"), ("calculate", "done")]
    done = [e.tool for e in events if e.kind == "tool"][-1]
    assert done.arguments == {"expression": "24 * 37"} and json.loads(done.result)["result"] == 888
    assert "".join(e.text for e in events if e.kind == "text") == "It is 888."
    assert tts.spoken == ["It is 888."]
    # The model saw the tools, then its call and the result.
    first, second = llm.calls
    assert {t["function"]["name"] for t in first["tools"]} >= {"calculate", "current_time"}
    call_message, result_message = second["messages"][-2:]
    assert call_message["role"] == "assistant" and call_message["tool_calls"][0]["function"] == {
        "name": "calculate",
        "arguments": {"expression": "24 * 37"},
    }
    assert result_message["role"] == "tool" and '"result": 888' in result_message["content"]
    t = events[-1].timings
    assert t.tool_calls == 1 and t.tool_s is not None and t.answer_token is not None
    assert t.answer_audio is not None and t.filler_at is None
    # The history keeps the call and its result between the question and the answer.
    assert [m["role"] for m in session.history] == ["user", "assistant", "tool", "assistant"]
    assert session.history[-1]["content"] == "It is 888."
    assert session.interrupted == [False, False, False, False]
    assert "calls calculate" in session.transcript()


def test_a_slow_tool_gets_the_filler_spoken():
    """Guards the filler: a tool running past `filler_after_s` makes the voice say "One moment."
    before the answer, and the answer's first audio is told apart from the filler's."""

    def lookup(city: str) -> str:
        """Slow lookup."""
        time.sleep(0.6)
        return f"sunny in {city}"

    llm = FakeLLM(script=[qwen_call("lookup", city="Paris"), "It is sunny in Paris."])
    tts = FakeTTS()
    box = Toolbox([tool_from_function(lookup)])
    agent = Agent(fake_models(llm=llm, tts=tts), tools=box, filler_after_s=0.2)
    events = run(agent, agent.new_session(), text="Weather in Paris?")
    notices = [e for e in events if e.kind == "notice"]
    assert [(n.code, n.text) for n in notices] == [("filler", FILLER)]
    assert tts.spoken == [FILLER, "It is sunny in Paris."]
    assert events[-1].text == "It is sunny in Paris."  # the filler is not part of the reply
    t = events[-1].timings
    assert t.filler_at is not None and t.first_audio < t.answer_audio
    assert t.tool_s >= 0.6


def test_a_fast_tool_gets_no_filler():
    llm = FakeLLM(script=[qwen_call("current_time"), "It is noon."])
    tts = FakeTTS()
    agent = Agent(fake_models(llm=llm, tts=tts), tools=Toolbox(builtin_tools()))
    events = run(agent, agent.new_session(), text="What time is it?")
    assert not [e for e in events if e.kind == "notice"] and tts.spoken == ["It is noon."]


def test_errors_are_told_to_the_model_and_the_turn_goes_on():
    """Guards "never a crashed turn": a malformed call and an unknown tool reach the model as
    tool errors, and it answers."""
    llm = FakeLLM(
        script=[
            '<tool_call>\n{"name": "calculate", "arguments": {"expression": </tool_call>',
            qwen_call("weather", city="Paris"),
            "Sorry, I cannot check the weather.",
        ]
    )
    agent = Agent(fake_models(llm=llm), tools=Toolbox(builtin_tools()))
    events = run(agent, agent.new_session(), text="Weather?")
    assert events[-1].kind == "done" and events[-1].text == "Sorry, I cannot check the weather."
    assert tool_events(events) == [("calculate", "failed"), ("weather", "failed")]
    told = [m["content"] for m in llm.calls[2]["messages"] if m["role"] == "tool"]
    assert "could not be read" in told[0] and "no tool 'weather'" in told[1]


def test_a_tool_that_acts_is_refused_without_consent_and_runs_with_it():
    """Guards the consent rule in a turn: set_timer acts, so it runs only when the session (the
    Settings panel) or TOOLS_ALLOW_ACTIONS allows it."""
    script = [qwen_call("set_timer", minutes=10), "Done."]
    for allow, status in ((None, "refused"), (True, "done")):
        llm = FakeLLM(script=script)
        agent = Agent(fake_models(llm=llm), tools=Toolbox(builtin_tools()))
        session = agent.new_session(allow_actions=allow, ring_timers=True)
        events = run(agent, session, text="Set a timer for ten minutes")
        assert tool_events(events)[-1] == ("set_timer", status)
        assert len(agent.timers.pending(session.id)) == (1 if status == "done" else 0)


def test_cancel_during_a_tool_stops_it_and_ends_the_turn():
    """Guards barge-in / Stop while a tool runs: the tool's cancel is set, the turn ends within
    a moment, and the history keeps the call with its "stopped" result."""
    started, stopped = threading.Event(), threading.Event()

    def long_job(context: ToolContext) -> str:
        """Runs a long time."""
        started.set()
        if context.cancel.wait(20):
            stopped.set()
        return "done"

    llm = FakeLLM(script=[qwen_call("long_job"), "Finished."])
    agent = Agent(fake_models(llm=llm), tools=Toolbox([tool_from_function(long_job)]))
    session = agent.new_session()
    token = CancelToken()
    threading.Thread(target=lambda: (started.wait(5), token.cancel("stopped"))).start()
    t0 = time.perf_counter()
    events = run(agent, session, text="Do the long job", cancel=token)
    assert time.perf_counter() - t0 < 3
    assert stopped.wait(2)
    assert events[-1].kind == "done" and events[-1].interrupted
    assert tool_events(events)[-1] == ("long_job", "cancelled")
    assert len(llm.calls) == 1  # no answer was written after the stop
    assert [m["role"] for m in session.history] == ["user", "assistant", "tool", "assistant"]
    assert session.interrupted[-1] is True


def test_tool_rounds_are_bounded():
    """Guards against a model that calls tools forever: after MAX_TOOL_ROUNDS the answer is
    written without tools."""
    llm = FakeLLM(script=[qwen_call("current_time")])  # every reply calls again
    agent = Agent(fake_models(llm=llm), tools=Toolbox(builtin_tools()))
    events = run(agent, agent.new_session(), text="Time?")
    assert events[-1].kind == "done"
    assert [bool(c["tools"]) for c in llm.calls] == [True, True, True, False]


def test_engines_without_tools_and_sessions_without_them_get_none():
    plain = FakeLLM()
    agent = Agent(fake_models(llm=plain), tools=Toolbox(builtin_tools()))
    run(agent, agent.new_session(), text="Hi")
    assert plain.calls[0]["tools"] == []
    scripted = FakeLLM(script=["Hello."])
    agent = Agent(fake_models(llm=scripted), tools=Toolbox(builtin_tools()))
    run(agent, agent.new_session(tools=False), text="Hi")
    assert scripted.calls[0]["tools"] == []


def test_a_text_only_turn_says_no_filler():
    def slow() -> str:
        """Slow."""
        time.sleep(0.4)
        return "ok"

    tts = FakeTTS()
    llm = FakeLLM(script=[qwen_call("slow"), "Done."])
    agent = Agent(
        fake_models(llm=llm, tts=tts), tools=Toolbox([tool_from_function(slow)]), filler_after_s=0.1
    )
    events = run(agent, agent.new_session(), text="Go", speak=False)
    assert tts.spoken == [] and "audio" not in [e.kind for e in events]
    assert [e.code for e in events if e.kind == "notice"] == ["filler"]
