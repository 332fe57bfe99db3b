"""LLM_BACKEND=openai: the LLM on an OpenAI-compatible server (`llm/openai_compat.py`).

Our own REST app stands in for the serving engine (vLLM, SGLang, ...): fake
engines behind the real routes for the fast cases, and a real `serve` process
on the tiny checkpoints for the one that kills it mid-reply.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fakes import REPLY, FakeLLM, fake_models
from voice_agent.core.cancel import CancelToken
from voice_agent.core.config import get_settings, load_settings
from voice_agent.core.errors import BusyError, ModelLoadError
from voice_agent.llm.base import GenerationSettings
from voice_agent.llm.errors import PromptTooLongError
from voice_agent.llm.openai_compat import (
    OpenAICompatLLM,
    ServerError,
    fit_by_estimate,
)
from voice_agent.pipeline.agent import Agent
from voice_agent.pipeline.models import LoadedModels, get_models, reset_models
from voice_agent.server.app import create_app
from voice_agent.testing.server import LiveServer, ServeProcess, free_port, tiny_model_env

LONG_REPLY = " ".join(f"word{i}" for i in range(200))


def openai_settings(url: str, **env: str):
    return load_settings({"LLM_BACKEND": "openai", "LLM_BASE_URL": url + "/v1", **env})


def not_here(settings, progress):
    raise RuntimeError("not loaded in this test")


def app_models(settings) -> LoadedModels:
    """The app's side: the LLM through the real loader (LLM_BACKEND=openai), no STT or TTS."""
    return LoadedModels(
        settings, loaders={"stt": not_here, "tts": not_here}, warmup=False
    ).load_all()


@pytest.fixture(scope="module")
def llm_server():
    """Our REST app on a fake LLM that streams `REPLY` a word every 10 ms."""
    fake = FakeLLM(step_s=0.01)
    fake.context_length = 1024
    models = fake_models(llm=fake)
    with LiveServer(create_app(models)) as server:
        server.models = models
        yield server


def test_a_reply_streams_from_the_server_and_the_report_says_where(llm_server) -> None:
    """Guards the backend itself: load through the chain (one `openai` attempt, notes naming
    the server, model, reachability and round trip), stream the reply piece by piece."""
    llm = OpenAICompatLLM(openai_settings(llm_server.url))
    try:
        chosen = llm.report.chosen
        assert chosen is not None and chosen.strategy == "openai"
        assert chosen.device == llm_server.url + "/v1"
        notes = " ".join(llm.report.notes)
        assert "'fake-llm'" in notes and "reachable" in notes and "round trip" in notes
        assert llm.model_id == "fake-llm"
        assert llm.context_length == 1024  # our serve's /v1/models says max_model_len
        assert llm.capabilities.concurrency == 16
        stream = llm.stream_reply("Hi there", GenerationSettings(max_new_tokens=64))
        pieces = list(stream)
        assert len(pieces) > 3 and "".join(pieces) == REPLY
        assert stream.reply is not None and stream.reply.finish_reason == "stop"
        assert stream.reply.text == REPLY and stream.reply.first_token_seconds is not None
        assert llm.server_status()["reachable"] is True
    finally:
        llm.close()


def test_the_turn_pipeline_runs_unchanged_on_top(llm_server) -> None:
    """Guards the loader's choice (LLM_BACKEND=openai picks this engine) and that a
    conversation turn, its history, the LLM gate's slots and our REST API work over it."""
    models = app_models(openai_settings(llm_server.url, LLM_CONCURRENCY="3"))
    try:
        assert models.status["llm"] == "ready", models.errors
        assert type(models.llm).__name__ == "OpenAICompatLLM"
        assert models.gates["llm"].slots == 3  # the server batches: 3 replies at once
        agent = Agent(models)
        session = agent.new_session(max_new_tokens=64)
        events = list(agent.run_turn(session, text="Hello"))
        assert events[-1].kind == "done" and events[-1].text == REPLY
        assert [m["role"] for m in session.history] == ["user", "assistant"]
        assert session.history[1]["content"] == REPLY
        # Our REST API in front of it: an OpenAI client streams through both servers.
        from openai import OpenAI

        with LiveServer(create_app(models)) as front:
            client = OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0)
            chunks = client.chat.completions.create(
                model="any", messages=[{"role": "user", "content": "Hi"}], stream=True
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    finally:
        models.llm.close()  # type: ignore[union-attr]


def test_a_wrong_model_name_fails_at_load_naming_the_served_ones(llm_server) -> None:
    """Guards LLM_MODEL validation: our serve answers any `model` name, so a typo would only
    show as wrong answers; the load checks /v1/models and names what the server serves,
    without retrying (a wrong name will not fix itself)."""
    with pytest.raises(ModelLoadError) as caught:
        OpenAICompatLLM(openai_settings(llm_server.url, LLM_MODEL="gpt-4o-typo"))
    message = str(caught.value)
    assert "LLM_MODEL='gpt-4o-typo'" in message and "'fake-llm'" in message
    outcomes = [a.outcome for a in caught.value.report.attempts]
    assert outcomes == ["failed", "skipped", "skipped"]
    # Our serve lists its Whisper too (here `fake-stt`): that is not an LLM.
    with pytest.raises(ModelLoadError, match="not an LLM"):
        OpenAICompatLLM(openai_settings(llm_server.url, LLM_MODEL="fake-stt"))
    llm = OpenAICompatLLM(openai_settings(llm_server.url, LLM_MODEL="fake-llm"))
    assert llm.model_id == "fake-llm"
    llm.close()


def test_a_wrong_key_is_refused_clearly(keyed_server) -> None:
    """Guards LLM_API_KEY: a server that refuses the key fails the load at once, saying
    the key was refused (not 'cannot reach'); the right key loads."""
    with pytest.raises(ModelLoadError) as caught:
        OpenAICompatLLM(openai_settings(keyed_server.url, LLM_API_KEY="wrong"))
    assert "refused the API key" in str(caught.value) and "LLM_API_KEY" in str(caught.value)
    assert [a.outcome for a in caught.value.report.attempts][1:] == ["skipped", "skipped"]
    from tests.server_fakes import API_KEY

    llm = OpenAICompatLLM(openai_settings(keyed_server.url, LLM_API_KEY=API_KEY))
    assert llm.model_id == "fake-llm"
    llm.close()


def test_a_server_down_at_start_leaves_the_app_degraded_with_the_reason(monkeypatch) -> None:
    """Guards degraded mode: no LLM server at start -> the app starts, the LLM is 'failed'
    with a reason naming the URL, every retry is in the load report, and a turn says why."""
    url = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv("LLM_BACKEND", "openai")
    monkeypatch.setenv("LLM_BASE_URL", url)
    monkeypatch.setenv("LLM_MAX_RETRIES", "1")
    get_settings.cache_clear()
    reset_models()
    try:
        models = get_models(eager=False)
        models.load("llm")
        assert models.status["llm"] == "failed"
        assert url in models.errors["llm"] and "cannot be reached" in models.errors["llm"]
        attempts = models.reports["llm"].attempts
        assert [a.strategy for a in attempts] == ["openai", "openai-retry-1"]
        assert all(a.outcome == "failed" for a in attempts)
        session = Agent(models).new_session()
        event = list(Agent(models).run_turn(session, text="Hello"))[-1]
        assert event.kind == "error" and event.code == "llm_unavailable"
        assert "cannot be reached" in event.text
    finally:
        reset_models()


def test_a_server_that_comes_up_late_is_found_by_the_retries() -> None:
    """Guards retries with backoff on connect errors: the serving engine starts a moment
    after the app (a fleet restarting); the load keeps trying and records each try."""
    port = free_port()
    app = create_app(fake_models(llm=FakeLLM()))
    started = threading.Event()
    stop = threading.Event()

    def serve_late() -> None:
        time.sleep(0.3)
        with LiveServer(app, port=port):
            started.set()
            stop.wait(30)

    thread = threading.Thread(target=serve_late, daemon=True)
    thread.start()
    try:
        llm = OpenAICompatLLM(openai_settings(f"http://127.0.0.1:{port}", LLM_MAX_RETRIES="6"))
        attempts = llm.report.attempts
        assert attempts[0].outcome == "failed" and "cannot be reached" in (attempts[0].reason or "")
        assert attempts[-1].outcome == "chosen" and attempts[-1].strategy.startswith(
            "openai-retry-"
        )
        llm.close()
    finally:
        stop.set()
        thread.join(15)


def test_cancel_hangs_up_and_the_server_stops_generating() -> None:
    """Guards cancel = closing the stream: a cancelled reply ends at once with the words so
    far, and the server sees the connection go (its engine is cancelled, its gate freed),
    even while it is silent (the hang-up does not wait for the next piece)."""
    llm_fake = FakeLLM(LONG_REPLY, step_s=0.01, wait_for_cancel=True)  # stalls after 2 words
    models = fake_models(llm=llm_fake)
    with LiveServer(create_app(models)) as server:
        llm = OpenAICompatLLM(openai_settings(server.url))
        token = CancelToken()
        stream = llm.stream_reply("Tell me a story", GenerationSettings(max_new_tokens=400), token)
        pieces = iter(stream)
        got = [next(pieces), next(pieces)]
        assert llm_fake.started.is_set() and models.gates["llm"].admitted == 1
        t0 = time.monotonic()
        token.cancel("barge-in")
        got += list(pieces)
        assert time.monotonic() - t0 < 1.0
        assert stream.reply is not None and stream.reply.finish_reason == "cancelled"
        assert stream.reply.text == "".join(got) and len(got) == 2
        deadline = time.monotonic() + 3
        while models.gates["llm"].admitted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert models.gates["llm"].admitted == 0 and llm_fake.cancelled
        llm.close()


def test_a_silent_server_times_out_with_a_clear_error() -> None:
    """Guards LLM_TIMEOUT_S: a server that stops sending mid-reply ends the reply with an
    error naming the setting, instead of hanging the turn."""
    llm_fake = FakeLLM(LONG_REPLY, wait_for_cancel=True)  # silent after 2 words, up to 5 s
    with LiveServer(create_app(fake_models(llm=llm_fake))) as server:
        llm = OpenAICompatLLM(openai_settings(server.url, LLM_TIMEOUT_S="0.5"))
        stream = llm.stream_reply("Hi", GenerationSettings(max_new_tokens=400))
        t0 = time.monotonic()
        with pytest.raises(ServerError, match="LLM_TIMEOUT_S"):
            list(stream)
        assert time.monotonic() - t0 < 3.0
        assert llm.server_status()["reachable"] is False
        llm.close()


def test_a_busy_server_is_retried_after_its_retry_after_then_reported_busy() -> None:
    """Guards retries of a request the server did not take (503 + Retry-After): retried,
    then a BusyError (the turn says busy, REST answers 503), and fine once it frees up."""
    models = fake_models(llm=FakeLLM())
    models.gates["llm"].queue_size = 0
    with LiveServer(create_app(models)) as server:
        llm = OpenAICompatLLM(openai_settings(server.url, LLM_MAX_RETRIES="1"))
        held = models.gates["llm"].enter(timeout_s=1)  # the server's engine is taken
        assert held is not None
        t0 = time.monotonic()
        with pytest.raises(BusyError, match="busy"):
            llm.generate_reply("Hi")
        assert time.monotonic() - t0 >= 0.9  # waited the server's Retry-After (1 s) once
        held.release()
        assert llm.generate_reply("Hi").text == REPLY
        llm.close()


def test_history_is_trimmed_to_the_servers_context_by_estimate() -> None:
    """Guards trimming without the server's tokenizer: oldest turns go first, the system
    prompt and the latest turn stay, and a message that cannot fit is refused clearly."""
    system = {"role": "system", "content": "Be brief."}
    old = [
        {"role": "user", "content": "a" * 300},
        {"role": "assistant", "content": "b" * 300},
    ]
    latest = {"role": "user", "content": "What now?"}
    kept, dropped = fit_by_estimate([system, *old, *old, latest], 64, 300)
    assert dropped == 2 and kept[0] == system and kept[-1] == latest
    kept, dropped = fit_by_estimate([system, latest], 64, 300)
    assert dropped == 0
    with pytest.raises(PromptTooLongError, match="context holds 300 tokens"):
        fit_by_estimate([system, {"role": "user", "content": "c" * 2000}], 64, 300)


def test_health_and_doctor_show_the_server(llm_server, monkeypatch, capsys) -> None:
    """Guards the load report's reach: /health and the Diagnostics tab name the backend and
    the server (where, model, reachable, round trip); `doctor` asks the server and names
    what it serves."""
    import httpx

    from voice_agent.cli import doctor

    models = app_models(openai_settings(llm_server.url))
    try:
        with LiveServer(create_app(models)) as app:
            llm = httpx.get(app.url + "/health", timeout=120).json()["models"]["llm"]
        assert llm["backend"] == "openai" and llm["model_id"] == "fake-llm"
        assert llm["server"]["base_url"] == llm_server.url + "/v1"
        assert llm["server"]["reachable"] and llm["server"]["round_trip_ms"] is not None
        assert llm["report"]["chosen"]["strategy"] == "openai"
        from voice_agent.core.diagnostics import snapshot
        from voice_agent.ui.diagnostics import render_models

        page = render_models(snapshot(models, resolve=False))  # the Diagnostics tab
        assert "openai" in page and "round trip" in page and llm_server.url in page
    finally:
        models.llm.close()  # type: ignore[union-attr]
    monkeypatch.setenv("LLM_BACKEND", "openai")
    monkeypatch.setenv("LLM_BASE_URL", llm_server.url + "/v1")
    monkeypatch.setenv("LLM_MODEL", "nope")
    get_settings.cache_clear()
    doctor.main([])
    out = capsys.readouterr().out
    assert "llm [openai]: nope -> NOT USABLE" in out and "'fake-llm'" in out
    monkeypatch.delenv("LLM_MODEL")
    get_settings.cache_clear()
    doctor.main([])
    out = capsys.readouterr().out
    assert "served at " + llm_server.url + "/v1: reachable, round trip" in out


@pytest.mark.slow
def test_killing_the_llm_server_mid_reply_ends_the_turn_and_keeps_the_history(
    tiny_models: Path, tmp_path: Path
) -> None:
    """Guards the serving engine dying under a reply: a real `serve` (OpenAI-compatible)
    on the tiny LLM is killed after the first words; the turn ends with an error that says
    the connection to the LLM server broke off, and the history is as before the turn."""
    env = {**tiny_model_env(tiny_models, tmp_path), "LOG_LEVEL": "WARNING"}
    with ServeProcess(env) as serve:
        serve.wait_healthy(180)
        models = app_models(openai_settings(serve.url, LLM_MAX_RETRIES="0"))
        assert models.status["llm"] == "ready", models.errors
        assert models.llm is not None and models.llm.model_id == str(tiny_models / "llm")
        agent = Agent(models)
        session = agent.new_session(max_new_tokens=8, temperature=0.0, system_prompt="Be brief.")
        assert list(agent.run_turn(session, text="Hello"))[-1].kind == "done"
        before = [dict(m) for m in session.history]
        assert len(before) == 2
        session.generation = replace(session.generation, max_new_tokens=400)  # of 512
        events = []
        assert serve.proc is not None
        for event in agent.run_turn(session, text="Tell me a long story"):
            events.append(event)
            if event.kind == "text" and serve.proc.poll() is None:
                serve.proc.kill()
        last = events[-1]
        assert last.kind == "error" and last.code == "llm_failed", events
        assert "LLM server" in last.text and "broke off mid-reply" in last.text
        assert session.history == before
        models.llm.close()  # type: ignore[attr-defined]
