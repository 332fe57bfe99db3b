"""Shared fixtures: tiny checkpoints built once per session, and a network-free environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from voice_agent.config import get_settings
from voice_agent.testing.paths import REPO_ROOT, shared_fixtures_dir

# No test may reach the network: offline before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VOICE_AGENT_TEST", "1")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding llm/, stt/, vits/ and dia2/ tiny checkpoints (built once)."""
    from voice_agent.testing.tiny import make_tiny_models

    prebuilt = os.environ.get("VOICE_AGENT_TINY_MODELS")
    if prebuilt and all((Path(prebuilt) / p).is_dir() for p in ("llm", "stt", "vits", "dia2")):
        return Path(prebuilt)
    out = tmp_path_factory.mktemp("tiny-models")
    make_tiny_models(out)
    return out


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    path = shared_fixtures_dir()
    if not path.is_dir():
        pytest.fail(f"shared fixtures not found at {path} (set VOICE_AGENT_SHARED_FIXTURES)")
    return path


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    return REPO_ROOT / "assets"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """Offline, an empty HF cache, an empty LOCAL_MODELS_DIR, fresh settings for every test."""
    home = tmp_path_factory.mktemp("hf-home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LOCAL_MODELS_DIR", str(home / "local-models"))
    monkeypatch.delenv("TRANSFORMERS_CACHE", raising=False)
    for name in (
        "MODEL_SERVER_MODEL_NAME",
        "STT_MODEL_NAME",
        "TTS_MODEL_NAME",
        "TTS_BACKEND",
        "MODEL_SERVER_API_KEY",
        "MODEL_SERVER_HOST",
        "MODEL_SERVER_PORT",
    ):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def tiny_env(monkeypatch: pytest.MonkeyPatch, tiny_models: Path):
    """Point every model setting at the tiny checkpoints; returns the fresh Settings."""
    monkeypatch.setenv("MODEL_SERVER_MODEL_NAME", str(tiny_models / "llm"))
    monkeypatch.setenv("STT_MODEL_NAME", str(tiny_models / "stt"))
    monkeypatch.setenv("TTS_BACKEND", "vits")
    monkeypatch.setenv("TTS_MODEL_NAME", str(tiny_models / "vits"))
    monkeypatch.setenv("LLM_DEVICE", "cpu")
    monkeypatch.setenv("WHISPER_DEVICE", "cpu")
    monkeypatch.setenv("TTS_DEVICE", "cpu")
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="module")
def keyed_fakes():
    """Fake engines (tests/server_fakes.py) behind `server_fakes.API_KEY`, one set per module."""
    from tests.server_fakes import API_KEY, FakeModels, settings_with

    return FakeModels(settings_with(MODEL_SERVER_API_KEY=API_KEY))


@pytest.fixture(scope="module")
def keyed_server(keyed_fakes):
    """A live REST server (`voice_agent.testing.server.LiveServer`) on `keyed_fakes`."""
    from voice_agent.server import create_app
    from voice_agent.testing.server import LiveServer

    with LiveServer(create_app(keyed_fakes)) as live:
        yield live


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (`pytest.mark.usefixtures("one_torch_thread")`).

    The Dia2 fixture was made with one torch thread; reductions then add up in the same
    order, and the shared machine is spared the extra threads.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
