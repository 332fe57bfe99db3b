"""A fleet of app processes sharing one `serve` (MODEL_SERVER_REMOTE=1), and the team set-up
where the LLM comes from a serving engine (LLM_BACKEND=openai) and Whisper and the voice
from `serve` (docs/deploy.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from voice_agent.core.config import get_settings, load_settings
from voice_agent.pipeline.agent import Agent
from voice_agent.pipeline.models import LoadedModels, get_models, reset_models
from voice_agent.server.app import create_app
from voice_agent.testing.paths import REPO_ROOT
from voice_agent.testing.server import LiveServer, tiny_model_env


@pytest.fixture(scope="module")
def model_server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory):
    """One `serve`'s routes on the tiny LLM, Whisper and VITS (the GPU box of a team)."""
    env = tiny_model_env(tiny_models, tmp_path_factory.mktemp("home"))
    models = LoadedModels(load_settings(env)).load_all()
    assert models.ready(), models.errors
    with LiveServer(create_app(models)) as server:
        server.models = models
        yield server


def test_the_llm_from_a_serving_engine_and_speech_from_serve(model_server, monkeypatch) -> None:
    """Guards the loader's choice in the team set-up: with MODEL_SERVER_REMOTE=1 and
    LLM_BACKEND=openai the LLM goes to LLM_BASE_URL (OpenAI API, batched, `slots` at once)
    while Whisper and the voice stay on `serve`; a spoken turn runs through both."""
    monkeypatch.setenv("MODEL_SERVER_REMOTE", "1")
    monkeypatch.setenv("MODEL_SERVER_URL", model_server.url)
    monkeypatch.setenv("LLM_BACKEND", "openai")
    monkeypatch.setenv("LLM_BASE_URL", model_server.url + "/v1")
    get_settings.cache_clear()
    reset_models()
    try:
        models = get_models(eager=True)
        assert models.ready(), models.errors
        strategies = {c: models.reports[c].chosen.strategy for c in ("llm", "stt", "tts")}
        assert strategies == {"llm": "openai", "stt": "remote", "tts": "remote"}
        assert models.gates["llm"].slots == 16 and models.gates["stt"].slots == 1
        agent = Agent(models)
        session = agent.new_session(max_new_tokens=12, system_prompt="Be brief.")
        events = list(agent.run_turn(session, audio=str(REPO_ROOT / "assets" / "hello.wav")))
        kinds = [e.kind for e in events]
        assert kinds[-1] == "done" and "audio" in kinds, events[-1]
        assert session.history[-1]["role"] == "assistant"
    finally:
        reset_models()


@pytest.mark.slow
def test_two_app_processes_share_one_serve(model_server, tmp_path: Path) -> None:
    """Guards the fleet: two app processes (the `chat` command, MODEL_SERVER_REMOTE=1) talk
    at the same time through one `serve`; each gets its own answer and speech, and the
    server's engines served them in turn (its queues are empty afterwards)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_SERVER_", "LLM_"))}
    env = {**base, "MODEL_SERVER_REMOTE": "1", "MODEL_SERVER_URL": model_server.url}
    runs = []
    for i in range(2):
        out = tmp_path / f"speech-{i}"
        command = [
            sys.executable, "-m", "voice_agent", "chat",
            "--audio", str(REPO_ROOT / "assets" / "hello.wav"),
            "--speak-to", str(out), "--max-tokens", "12", "--system", "Be brief.",
        ]  # fmt: skip
        runs.append(
            (
                out,
                subprocess.Popen(
                    command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    cwd=REPO_ROOT,
                ),
            )
        )
    for out, proc in runs:
        text, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, text
        assert "assistant:" in text, text
        assert list(out.glob("*.wav")), text
    gates = model_server.models.gates
    assert all(gates[c].admitted == 0 for c in ("llm", "stt", "tts"))
