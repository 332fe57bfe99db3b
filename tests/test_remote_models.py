"""MODEL_SERVER_REMOTE=1: the app's loader uses a separate model server's engines."""

from __future__ import annotations

from pathlib import Path

import pytest

from voice_agent.core.config import get_settings, load_settings
from voice_agent.pipeline.agent import Agent
from voice_agent.pipeline.models import LoadedModels, get_models, reset_models
from voice_agent.server.app import create_app
from voice_agent.testing.server import LiveServer, tiny_model_env


@pytest.fixture(scope="module")
def model_server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory):
    env = tiny_model_env(tiny_models, tmp_path_factory.mktemp("home"))
    models = LoadedModels(load_settings(env)).load_all()
    assert models.ready(), models.errors
    with LiveServer(create_app(models)) as server:
        yield server


def test_the_app_talks_through_the_model_server(model_server: LiveServer, monkeypatch) -> None:
    monkeypatch.setenv("MODEL_SERVER_REMOTE", "1")
    monkeypatch.setenv("MODEL_SERVER_URL", model_server.url)
    get_settings.cache_clear()
    reset_models()
    try:
        models = get_models(eager=True)
        assert models.ready(), models.errors
        for component in ("llm", "stt", "tts"):
            assert models.reports[component].chosen.strategy == "remote"
        agent = Agent(models)
        session = agent.new_session(max_new_tokens=16)
        events = list(agent.run_turn(session, text="Hello there"))
        kinds = [e.kind for e in events]
        assert kinds[-1] == "done" and "text" in kinds and "audio" in kinds
        assert session.history[-1]["role"] == "assistant" and session.history[-1]["content"]
    finally:
        reset_models()


def test_an_unreachable_model_server_degrades_with_the_reason(monkeypatch) -> None:
    from voice_agent.testing.server import free_port

    monkeypatch.setenv("MODEL_SERVER_REMOTE", "1")
    monkeypatch.setenv("MODEL_SERVER_URL", f"http://127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    reset_models()
    try:
        models = get_models(eager=True)
        assert not models.ready()
        assert models.status["llm"] == "failed"
        assert "127.0.0.1" in models.errors["llm"]
    finally:
        reset_models()


def test_serve_refuses_to_proxy_itself(monkeypatch, capsys) -> None:
    from voice_agent.cli import serve

    monkeypatch.setenv("MODEL_SERVER_REMOTE", "1")
    get_settings.cache_clear()
    assert serve.main([]) == 2
    assert "MODEL_SERVER_REMOTE" in capsys.readouterr().err
