"""LLM_BACKEND=openai with tools, and an LLM server that comes up after the app.

The serving engine is our own REST app (its `/v1/chat/completions` takes `tools` and
answers `tool_calls`) on a fake LLM whose output is scripted as the model writes it
(`<tool_call>{...}</tool_call>`, parsed by the real parser on the serving side); a
scripted server stands in for vLLM where the wire matters (calls streamed in
fragments, a whole `message.tool_calls`, tools refused), recording what it received.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tests.fakes import REPLY, FakeLLM, FakeSTT, FakeTTS, fake_models
from tests.test_agent_tools import qwen_call, tool_events
from voice_agent.core.config import Settings, load_settings
from voice_agent.core.errors import ModelLoadError, ModelUnavailableError
from voice_agent.llm.openai_compat import OpenAICompatLLM
from voice_agent.pipeline.agent import Agent
from voice_agent.pipeline.models import LoadedModels
from voice_agent.server.app import create_app
from voice_agent.testing.server import LiveServer, free_port
from voice_agent.tools import Toolbox
from voice_agent.tools.toolbox import builtin_tools

CALCULATE = {
    "type": "function",
    "function": {
        "name": "calculate",
        "description": "Arithmetic.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
    },
}
CLOCK = {
    "type": "function",
    "function": {"name": "current_time", "description": "The time.", "parameters": {}},
}


def openai_settings(url: str, **env: str) -> Settings:
    return load_settings({"LLM_BACKEND": "openai", "LLM_BASE_URL": url + "/v1", **env})


def not_here(settings: Settings, progress: Any) -> Any:
    raise RuntimeError("not loaded in this test")


# --- a scripted OpenAI-compatible server ------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "scripted",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def call_delta(index: int, *, id: str | None = None, name: str | None = None, args: str = ""):
    """One `tool_calls` delta the way vLLM streams them: id and name first, then fragments."""
    entry: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if id is not None:
        entry.update(id=id, type="function")
        entry["function"]["name"] = name
    return chunk({"tool_calls": [entry]})


class ScriptedServer:
    """`/v1/models` and `/v1/chat/completions` answering from `answers`, one per request (the
    last repeats): a list of SSE events, a dict (a whole JSON completion), or (status, body)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.bodies: list[dict[str, Any]] = []
        app = FastAPI()

        @app.get("/v1/models")
        def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": "scripted", "max_model_len": 4096}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            self.bodies.append(await request.json())
            answer = self.answers[min(len(self.bodies), len(self.answers)) - 1]
            if isinstance(answer, tuple):
                return JSONResponse(answer[1], status_code=answer[0])
            if isinstance(answer, dict):
                return JSONResponse(answer)

            def events() -> Iterator[str]:
                for event in answer:
                    yield f"data: {json.dumps(event)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        self.live = LiveServer(app)

    def __enter__(self) -> ScriptedServer:
        self.live.__enter__()
        self.url = self.live.url
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(*exc)


# --- tool calls in and out --------------------------------------------------------------------


def test_a_streamed_call_from_our_serve_becomes_reply_tool_calls() -> None:
    """Guards tools through the serving-engine backend: the tools reach the server in OpenAI's
    shape, its streamed `tool_calls` become `Reply.tool_calls` (name, arguments, id) with
    finish_reason "tool_calls", and the pieces carry only the words before the call."""
    fake = FakeLLM(script=["Let me work that out. " + qwen_call("calculate", expression="24 * 37")])
    with LiveServer(create_app(fake_models(llm=fake))) as server:
        llm = OpenAICompatLLM(openai_settings(server.url))
        try:
            assert llm.capabilities.tools
            stream = llm.stream_reply("What is 24 times 37?", tools=[CALCULATE, CLOCK])
            pieces = list(stream)
        finally:
            llm.close()
    assert "".join(pieces) == "Let me work that out. " and "tool_call" not in "".join(pieces)
    reply = stream.reply
    assert reply is not None and reply.finish_reason == "tool_calls"
    (call,) = reply.tool_calls
    assert call.name == "calculate" and call.arguments == {"expression": "24 * 37"}
    assert call.id.startswith("call_") and call.error is None
    assert [t["function"]["name"] for t in fake.calls[0]["tools"]] == ["calculate", "current_time"]
    assert fake.calls[0]["tool_choice"] == "auto"


def test_call_fragments_are_joined_and_the_request_is_openais_shape() -> None:
    """Guards the streamed wire format of a serving engine (vLLM's): each call's id and name
    come first and its arguments in fragments, calls told apart by `index`; they join into
    whole calls. The request carries `tools`, and a named `tool_choice` in OpenAI's shape."""
    events = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Checking."}),
        call_delta(0, id="call_a", name="calculate"),
        call_delta(0, args='{"expre'),
        call_delta(0, args='ssion": "2 +'),
        call_delta(0, args=' 2"}'),
        call_delta(1, id="call_b", name="current_time"),
        call_delta(1, args="{}"),
        chunk({}, "tool_calls"),
    ]
    with ScriptedServer([events]) as server:
        llm = OpenAICompatLLM(openai_settings(server.url))
        reply = llm.generate_reply(
            "Sum and time?", tools=[CALCULATE, CLOCK], tool_choice="calculate"
        )
        llm.close()
    assert reply.text == "Checking." and reply.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments, c.error) for c in reply.tool_calls] == [
        ("call_a", "calculate", {"expression": "2 + 2"}, None),
        ("call_b", "current_time", {}, None),
    ]
    body = server.bodies[0]
    assert [t["function"]["name"] for t in body["tools"]] == ["calculate", "current_time"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "calculate"}}


def test_a_whole_completion_with_message_tool_calls_is_read() -> None:
    """Guards a server that answers one JSON completion (not SSE): its `message.tool_calls`
    (arguments a JSON string) become `Reply.tool_calls`, like streamed ones."""
    completion = {
        "id": "chatcmpl-2",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_x",
                            "type": "function",
                            "function": {"name": "calculate", "arguments": '{"expression": "6*7"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42},
    }
    with ScriptedServer([completion]) as server:
        llm = OpenAICompatLLM(openai_settings(server.url))
        reply = llm.generate_reply("Six times seven?", tools=[CALCULATE])
        llm.close()
    assert reply.finish_reason == "tool_calls" and reply.text == ""
    (call,) = reply.tool_calls
    assert (call.id, call.name, call.arguments) == ("call_x", "calculate", {"expression": "6*7"})
    assert (reply.prompt_tokens, reply.completion_tokens) == (30, 12)


def test_a_full_turn_runs_the_tool_and_speaks_only_the_answer() -> None:
    """Guards a voice turn over LLM_BACKEND=openai: the model (on the server) calls `calculate`,
    the agent runs it and sends the call and its result back in OpenAI's form (the server
    reads the call, and the result under the call's id), and the voice says only the answer.
    The next turn sends that history again."""
    fake = FakeLLM(script=[qwen_call("calculate", expression="24 * 37"), "It is 888."])
    tts = FakeTTS()
    with LiveServer(create_app(fake_models(llm=fake))) as server:
        models = LoadedModels(
            openai_settings(server.url),
            loaders={"stt": not_here, "tts": lambda settings, progress: tts},
            warmup=False,
        ).load_all()
        try:
            assert models.status["llm"] == "ready", models.errors
            agent = Agent(models, tools=Toolbox(builtin_tools()))
            session = agent.new_session()
            events = list(agent.run_turn(session, text="What is 24 times 37?"))
            assert events[-1].kind == "done" and events[-1].text == "It is 888.", events
            assert tool_events(events) == [("calculate", "running"), ("calculate", "done")]
            assert tts.spoken == ["It is 888."]
            assert [m["role"] for m in session.history] == [
                "user",
                "assistant",
                "tool",
                "assistant",
            ]
            call_id = session.history[1]["tool_calls"][0]["id"]
            # What the serving engine received for the answer: the call and its result.
            call, result = fake.calls[1]["messages"][-2:]
            assert call["role"] == "assistant" and call["tool_calls"] == [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "calculate", "arguments": {"expression": "24 * 37"}},
                }
            ]
            assert result["role"] == "tool" and result["tool_call_id"] == call_id
            assert result["name"] == "calculate" and '"result": 888' in result["content"]
            list(agent.run_turn(session, text="Thanks"))
            roles = [m["role"] for m in fake.calls[2]["messages"]]
            assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
        finally:
            models.llm.close()  # type: ignore[union-attr]


def test_malformed_arguments_are_told_to_the_model_and_the_turn_goes_on() -> None:
    """Guards a call whose arguments are not JSON: it becomes a malformed call (as the
    embedded engine's), the model is told so in the tool result, and the turn answers.
    The result goes back on the wire as OpenAI's `tool` message (arguments a string)."""
    broken = [
        call_delta(0, id="call_bad", name="calculate"),
        call_delta(0, args='{"expression": '),
        chunk({}, "tool_calls"),
    ]
    answer = [chunk({"content": "Sorry, I could not work that out."}), chunk({}, "stop")]
    with ScriptedServer([broken, answer]) as server:
        models = LoadedModels(
            openai_settings(server.url), loaders={"stt": not_here, "tts": not_here}, warmup=False
        ).load_all()
        try:
            agent = Agent(models, tools=Toolbox(builtin_tools()))
            events = list(agent.run_turn(agent.new_session(), text="What is 2 plus?"))
        finally:
            models.llm.close()  # type: ignore[union-attr]
    assert events[-1].kind == "done" and events[-1].text == "Sorry, I could not work that out."
    assert tool_events(events) == [("calculate", "failed")]
    call_message, result = server.bodies[1]["messages"][-2:]
    assert call_message["tool_calls"] == [
        {"id": "call_bad", "type": "function", "function": {"name": "calculate", "arguments": "{}"}}
    ]
    assert result == {"role": "tool", "content": result["content"], "tool_call_id": "call_bad"}
    assert "could not be read" in result["content"] and "not valid JSON" in result["content"]


def test_a_server_that_refuses_tools_is_asked_again_without_them() -> None:
    """Guards a serving engine started without tool support (vLLM without
    --enable-auto-tool-choice answers 400): the reply is asked again without tools, the
    engine stops declaring tools (the agent then offers none) and says why in its report.
    A server that takes the tools but answers in words is just a reply."""
    refusal = (
        400,
        {"error": {"message": '"auto" tool choice requires --enable-auto-tool-choice to be set'}},
    )
    words = [chunk({"content": "It is noon."}), chunk({}, "stop")]
    with ScriptedServer([refusal, words]) as server:
        llm = OpenAICompatLLM(openai_settings(server.url))
        reply = llm.generate_reply("What time is it?", tools=[CLOCK])
        again = llm.generate_reply("And now?", tools=[CLOCK])
        llm.close()
    assert reply.text == "It is noon." and reply.finish_reason == "stop"
    assert "tools" in server.bodies[0] and "tools" not in server.bodies[1]
    assert again.text == "It is noon." and "tools" not in server.bodies[2]
    assert not llm.capabilities.tools and "enable-auto-tool-choice" in (llm.tools_refused or "")
    assert any("refused tools" in note for note in llm.report.notes)
    with ScriptedServer([words]) as server:
        llm = OpenAICompatLLM(openai_settings(server.url))
        reply = llm.generate_reply("What time is it?", tools=[CLOCK])
        llm.close()
    assert reply.text == "It is noon." and not reply.tool_calls and llm.capabilities.tools


# --- a server that comes up after the app -----------------------------------------------------


def test_an_llm_server_that_comes_up_after_the_app_is_found_on_use() -> None:
    """Guards recovery: the LLM server is down when the app loads (the LLM fails, degraded);
    once it is up, the next request finds it (at most every `recover_every_s`) and the LLM
    becomes ready: REST answers, /health and the load report say so, and a turn replies."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    models = LoadedModels(
        openai_settings(url, LLM_MAX_RETRIES="0"),
        loaders={"stt": not_here, "tts": not_here},
        warmup=False,
    )
    models.recover_every_s = 0.3
    models.load_all()
    assert models.status["llm"] == "failed" and "cannot be reached" in models.errors["llm"]
    agent = Agent(models)
    with LiveServer(create_app(models)) as front, httpx.Client(base_url=front.url) as http:
        health = http.get("/health", timeout=60).json()["models"]["llm"]
        assert health["status"] == "failed" and "cannot be reached" in health["error"]
        event = list(agent.run_turn(agent.new_session(), text="Hello"))[-1]
        assert event.kind == "error" and event.code == "llm_unavailable"
        time.sleep(models.recover_every_s)  # a check is due, and finds the server still down
        chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 64}
        refused = http.post("/v1/chat/completions", json=chat, timeout=60)
        assert refused.status_code == 503 and "cannot be reached" in refused.text
        with LiveServer(create_app(fake_models(llm=FakeLLM())), port=port):
            time.sleep(models.recover_every_s)  # the next check is due
            answer = http.post("/v1/chat/completions", json=chat, timeout=60)
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == REPLY
            assert models.status["llm"] == "ready" and "llm" not in models.errors
            chosen = models.reports["llm"].chosen
            assert chosen is not None and chosen.strategy == "openai"
            health = http.get("/health", timeout=60).json()["models"]["llm"]
            assert health["status"] == "ready" and "error" not in health
            assert health["server"]["reachable"] and health["model_id"] == "fake-llm"
            event = list(agent.run_turn(agent.new_session(), text="Hello"))[-1]
            assert event.kind == "done" and event.text == REPLY
            models.llm.close()  # type: ignore[union-attr]


def test_the_page_finds_a_late_llm_server_by_itself() -> None:
    """Guards the Conversation tab's banner: with the LLM server down it says the language
    model is unavailable and keeps polling (the degraded banner used to stay until a
    reload); once the server is up, the next poll finds it and the banner clears."""
    from voice_agent.ui.conversation import Conversation
    from voice_agent.ui.handlers import Handlers

    port = free_port()
    models = LoadedModels(
        openai_settings(f"http://127.0.0.1:{port}", LLM_MAX_RETRIES="0"),
        loaders={"stt": lambda settings, progress: FakeSTT(), "tts": lambda s, p: FakeTTS()},
        warmup=False,
    )
    models.recover_every_s = 0.3
    models.load_all()
    agent = Agent(models)
    handlers = Handlers(Conversation(lambda: agent), models, lambda: {})
    banner, _, timer, _ = handlers.tick()
    assert "Language model is unavailable" in banner.value and timer.active
    with LiveServer(create_app(fake_models(llm=FakeLLM())), port=port):
        time.sleep(models.recover_every_s)
        banner, diagnostics_button, timer, _ = handlers.tick()
        try:
            assert models.status["llm"] == "ready"
            assert not banner.visible and not diagnostics_button.visible and not timer.active
        finally:
            models.llm.close()  # type: ignore[union-attr]


def test_a_failure_that_may_fix_itself_is_checked_at_most_every_interval() -> None:
    """Guards the recovery's cost: while the server stays down, uses in quick succession do
    not each probe it (one check per `recover_every_s`), a failure that cannot fix itself is
    never checked, and once the check passes `require` loads the engine and returns it."""
    checks: list[float] = []
    server_up = threading.Event()
    loads: list[float] = []

    def server_answers() -> bool:
        checks.append(time.monotonic())
        return server_up.is_set()

    def load_llm(settings: Settings, progress: Any) -> Any:
        loads.append(time.monotonic())
        if not server_up.is_set():
            raise ModelLoadError("Cannot reach the LLM server", recheck=server_answers)
        return FakeLLM()

    models = LoadedModels(
        load_settings({}), loaders={"llm": load_llm, "stt": not_here, "tts": not_here}, warmup=False
    )
    models.recover_every_s = 0.5
    models.load_all()
    for _ in range(5):
        with pytest.raises(ModelUnavailableError, match="Cannot reach"):
            models.require("llm")
    assert checks == [] and len(loads) == 1  # not due yet
    time.sleep(0.5)
    for _ in range(5):
        with pytest.raises(ModelUnavailableError, match="Cannot reach"):
            models.require("llm")
    assert len(checks) == 1 and len(loads) == 1  # checked once, still down: nothing loaded
    server_up.set()
    time.sleep(0.5)
    engine = models.require("llm")
    assert engine.model_id == "fake-llm" and models.status["llm"] == "ready"
    assert len(checks) == 2 and len(loads) == 2
    assert models.recover("stt") is False and models.status["stt"] == "failed"
