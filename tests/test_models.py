"""The cached loader: once per process, in order, shared, thread-safe, degraded on failure."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.fakes import FakeLLM, FakeSTT, FakeTTS
from voice_agent.core.config import get_settings
from voice_agent.core.errors import ModelLoadError, ModelUnavailableError
from voice_agent.core.loading import Attempt, LoadReport
from voice_agent.pipeline import models as models_mod
from voice_agent.pipeline.models import LoadedModels, get_models, reset_models


@pytest.fixture(autouse=True)
def _fresh_models():
    reset_models()
    yield
    reset_models()


class Counting:
    """Loaders that count calls and record the order components were loaded in."""

    def __init__(
        self, fail: dict[str, Exception] | None = None, gate: threading.Event | None = None
    ):
        self.calls: list[str] = []
        self.fail = fail or {}
        self.gate = gate
        self.engines = {"llm": FakeLLM(), "stt": FakeSTT(), "tts": FakeTTS()}
        self.warmed: list[str] = []
        for name, engine in self.engines.items():
            engine.warmup = lambda name=name: self.warmed.append(name)

    def loaders(self):
        def make(component):
            def load(settings, progress):
                self.calls.append(component)
                progress(0.5, f"{component} half way")
                if self.gate is not None:
                    assert self.gate.wait(5)
                if component in self.fail:
                    raise self.fail[component]
                return self.engines[component]

            return load

        return {c: make(c) for c in ("llm", "stt", "tts")}


def test_loads_in_order_once_with_progress_and_warm_up():
    counting = Counting()
    seen: list[tuple[str, float, str]] = []
    models = LoadedModels(
        get_settings(), loaders=counting.loaders(), progress=lambda *a: seen.append(a)
    )
    models.load_all()
    models.load_all()
    assert counting.calls == ["llm", "stt", "tts"]
    assert counting.warmed == ["llm", "stt", "tts"]
    assert models.ready() and models.status == dict.fromkeys(("llm", "stt", "tts"), "ready")
    assert models.require("llm") is counting.engines["llm"]
    assert models.reports["stt"] is counting.engines["stt"].report
    # Progress: per component, rising fractions ending at 1.0, components in order.
    assert [c for c, f, _ in seen if f == 1.0] == ["llm", "stt", "tts"]
    for component in ("llm", "stt", "tts"):
        fractions = [f for c, f, _ in seen if c == component]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("half way" in m for _, _, m in seen)
    assert any("warming up" in m for _, _, m in seen)


def test_concurrent_loads_share_one_instance():
    gate = threading.Event()
    counting = Counting(gate=gate)
    models = LoadedModels(get_settings(), loaders=counting.loaders(), warmup=False)
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(models.load("llm"))) for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(5)
    assert counting.calls == ["llm"]
    assert len(got) == 8 and all(g is counting.engines["llm"] for g in got)


def test_a_failing_model_leaves_the_others_usable_with_its_report():
    report = LoadReport(
        "stt",
        "openai/whisper-base.en",
        attempts=[
            Attempt("manual", "cpu", "float32", None, "failed", reason="ran out of memory"),
            Attempt("pipeline", "cpu", "float32", None, "failed", reason="a file is missing"),
        ],
    )
    counting = Counting(fail={"stt": ModelLoadError("Could not load stt", report)})
    models = LoadedModels(get_settings(), loaders=counting.loaders(), warmup=False)
    models.load_all()
    assert models.status == {"llm": "ready", "stt": "failed", "tts": "ready"}
    assert models.reports["stt"] is report
    assert (
        "ran out of memory" in models.errors["stt"] and "a file is missing" in models.errors["stt"]
    )
    assert not models.ready() and models.settled() and models.wait(0)
    with pytest.raises(ModelUnavailableError, match="speech recognition.*a file is missing"):
        models.require("stt")
    assert models.require("tts") is counting.engines["tts"]


def test_an_unexpected_exception_gets_a_report_with_one_failed_attempt():
    counting = Counting(fail={"tts": RuntimeError("CUDA error: out of memory")})
    models = LoadedModels(get_settings(), loaders=counting.loaders(), warmup=False)
    models.load_all()
    report = models.reports["tts"]
    assert report.component == "tts" and not report.ok
    assert len(report.attempts) == 1
    attempt = report.attempts[0]
    assert attempt.outcome == "failed" and attempt.error_type == "RuntimeError"
    assert attempt.reason == "ran out of memory while loading"
    assert models.errors["tts"].startswith("ran out of memory while loading")
    assert models.summary()["tts"]["report"]["ok"] is False


def test_a_failed_warm_up_is_noted_and_the_model_still_serves():
    counting = Counting()

    def broken():
        raise RuntimeError("warm-up exploded")

    counting.engines["llm"].warmup = broken
    models = LoadedModels(get_settings(), loaders=counting.loaders())
    models.load_all()
    assert models.status["llm"] == "ready"
    assert any("warm-up failed" in note for note in models.reports["llm"].notes)


def test_get_models_is_process_wide_and_lazy_loads_on_first_use(monkeypatch):
    counting = Counting()
    monkeypatch.setattr(models_mod, "DEFAULT_LOADERS", counting.loaders())
    monkeypatch.setenv("MODEL_LOADING", "lazy")
    get_settings.cache_clear()
    first = get_models()
    assert get_models() is first and models_mod.current_models() is first
    assert first.status == dict.fromkeys(("llm", "stt", "tts"), "pending")
    assert counting.calls == []
    assert first.require("tts") is counting.engines["tts"]
    assert counting.calls == ["tts"]


def test_get_models_eager_by_default(monkeypatch):
    counting = Counting()
    monkeypatch.setattr(models_mod, "DEFAULT_LOADERS", counting.loaders())
    models = get_models()
    assert models.ready() and counting.calls == ["llm", "stt", "tts"]
    assert get_models() is models and counting.calls == ["llm", "stt", "tts"]


def test_background_loading_returns_at_once_and_reports_loading(monkeypatch):
    gate = threading.Event()
    counting = Counting(gate=gate)
    monkeypatch.setattr(models_mod, "DEFAULT_LOADERS", counting.loaders())
    models = get_models(background=True)
    assert not models.wait(0.05)
    with pytest.raises(ModelUnavailableError, match="still loading"):
        models.require("llm")
    gate.set()
    assert models.wait(5) and models.ready()
    assert models.llm is counting.engines["llm"]


def test_real_engines_load_through_the_loader(tiny_env, monkeypatch, tmp_path: Path):
    """On the tiny checkpoints, with the STT pointing at nothing: the others still load."""
    monkeypatch.setenv("STT_MODEL_NAME", str(tmp_path / "no-such-model"))
    get_settings.cache_clear()
    seen: list[str] = []
    models = get_models(get_settings(), progress=lambda c, f, m: seen.append(c))
    assert models.status == {"llm": "ready", "stt": "failed", "tts": "ready"}
    assert "no-such-model" in models.errors["stt"]
    assert models.reports["stt"].component == "stt" and not models.reports["stt"].ok
    assert models.reports["llm"].ok and models.reports["tts"].ok
    assert any("warm-up" in note for note in models.reports["llm"].notes)
    assert seen[0] == "llm" and seen[-1] == "tts"


def test_chat_command_loads_the_models_under_lazy_loading(monkeypatch, capsys):
    """Regression: with MODEL_LOADING=lazy, `chat` waited forever in `models.wait()` for a
    load that nothing had started."""
    import io
    import sys

    from voice_agent.cli import chat

    counting = Counting()
    monkeypatch.setattr(models_mod, "DEFAULT_LOADERS", counting.loaders())
    monkeypatch.setenv("MODEL_LOADING", "lazy")
    get_settings.cache_clear()
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi there\n/quit\n"))
    codes: list[int] = []
    worker = threading.Thread(target=lambda: codes.append(chat.main(["--verbose"])), daemon=True)
    worker.start()
    worker.join(10)
    out = capsys.readouterr().out
    assert codes == [0], out
    assert counting.calls == ["llm", "stt", "tts"] and "assistant: " in out
