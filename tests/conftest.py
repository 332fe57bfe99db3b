"""Shared fixtures: tiny checkpoints built once per session, and a network-free environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from voice_agent.core.config import VARIABLES, get_settings
from voice_agent.testing.paths import REPO_ROOT, dia2_fixture_dir

# No test may reach the network: offline before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VOICE_AGENT_TEST", "1")


EXIT_WATCHDOG_S = 120.0


def pytest_unconfigure(config: pytest.Config) -> None:
    """A thread left running must fail the run, not hang CI until its time limit.

    Python joins every non-daemon thread before it exits. A daemon watchdog outlives
    that join only if it hangs; then it prints every thread's stack and exits with 1.
    """
    import faulthandler
    import sys
    import threading
    import time

    def watch() -> None:
        time.sleep(EXIT_WATCHDOG_S)
        print("\npytest finished but a thread kept the process alive:", file=sys.stderr)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=watch, name="exit-watchdog", daemon=True).start()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding llm/, stt/, vits/, piper/ and dia2/ tiny checkpoints (built once)."""
    from voice_agent.testing.tiny import make_tiny_models

    prebuilt = os.environ.get("VOICE_AGENT_TINY_MODELS")
    if prebuilt and all(
        (Path(prebuilt) / p).is_dir() for p in ("llm", "stt", "vits", "piper", "dia2")
    ):
        return Path(prebuilt)
    out = tmp_path_factory.mktemp("tiny-models")
    make_tiny_models(out)
    return out


@pytest.fixture(scope="session")
def dia2_fixture() -> Path:
    """The Dia2 parity fixture, `tests/fixtures/dia2-tiny` (see its README)."""
    path = dia2_fixture_dir()
    if not (path / "cases.json").is_file():
        pytest.fail(f"the Dia2 parity fixture is missing from {path} (an incomplete checkout)")
    return path


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    return REPO_ROOT / "assets"


# Variables of `VARIABLES` the tests set themselves (above at import, or in `_isolated_env`).
_SET_FOR_TESTS = {
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "LOCAL_MODELS_DIR",
    "TOKENIZERS_PARALLELISM",
}


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """Offline, an empty HF cache, an empty LOCAL_MODELS_DIR, fresh settings for every test."""
    home = tmp_path_factory.mktemp("hf-home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LOCAL_MODELS_DIR", str(home / "local-models"))
    monkeypatch.delenv("TRANSFORMERS_CACHE", raising=False)
    # Every other variable the settings read starts unset: the shell's MODEL_LOADING,
    # STT_LANGUAGE, ... must not change what a test sees.
    for variable in VARIABLES:
        if variable.name not in _SET_FOR_TESTS:
            monkeypatch.delenv(variable.name, raising=False)
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
    from voice_agent.server.app import create_app
    from voice_agent.testing.server import LiveServer

    with LiveServer(create_app(keyed_fakes)) as live:
        yield live


@pytest.fixture(scope="module")
def tiny_server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory):
    """A live REST server on the real engines and tiny checkpoints, loaded once per module."""
    from voice_agent.core.config import load_settings
    from voice_agent.pipeline.models import LoadedModels
    from voice_agent.server.app import create_app
    from voice_agent.testing.server import LiveServer, tiny_model_env

    settings = load_settings(tiny_model_env(tiny_models, tmp_path_factory.mktemp("home")))
    models = LoadedModels(settings).load_all()
    assert models.ready(), models.errors
    with LiveServer(create_app(models)) as server:
        yield server


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
