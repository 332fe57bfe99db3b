"""TTS engine: every backend through the real loading chain on tiny checkpoints, fallback, bad input."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from voice_agent.core.config import get_settings
from voice_agent.core.errors import InputError, InputTooLargeError, ModelLoadError
from voice_agent.tts.backends import NothingToSpeakError, UnknownVoiceError
from voice_agent.tts.engine import CPU_REASON, LocalTTS, detect_backend


@pytest.fixture(scope="session")
def tiny_dia(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voice_agent.testing.tiny_vits import build_dia

    return build_dia(tmp_path_factory.mktemp("tiny-dia") / "dia")


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    monkeypatch.setenv("TTS_DEVICE", "cpu")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


def local_vits(monkeypatch: pytest.MonkeyPatch, tiny_models: Path, tmp_path: Path) -> None:
    """Put the tiny VITS where the default `facebook/mms-tts-eng` is looked up first."""
    models = tmp_path / "local-models"
    shutil.copytree(tiny_models / "vits", models / "mms-tts-eng")
    monkeypatch.setenv("LOCAL_MODELS_DIR", str(models))


def check_audio(rate: int, audio: np.ndarray, expected_rate: int) -> None:
    assert rate == expected_rate
    assert audio.dtype == np.float32
    assert audio.ndim == 1 and audio.size > 0
    assert np.isfinite(audio).all()
    assert float(np.abs(audio).max()) <= 1.0 + 1e-6


def test_vits_loads_through_engine(monkeypatch, tiny_models: Path) -> None:
    configure(monkeypatch, TTS_BACKEND="vits", TTS_MODEL_NAME=str(tiny_models / "vits"))
    tts = LocalTTS()
    assert (tts.backend, tts.device, tts.dtype) == ("vits", "cpu", "float32")
    chosen = tts.report.chosen
    assert chosen is not None and chosen.strategy.startswith("vits ")
    assert tts.report.resolved_path == str((tiny_models / "vits").resolve())
    check_audio(*tts.synthesize("Hello there, it is 3:45 pm."), 16_000)
    assert [v.id for v in tts.voices()] == ["default"]


def test_dia2_loads_through_engine(monkeypatch, tiny_models: Path) -> None:
    configure(monkeypatch, TTS_BACKEND="dia2", TTS_MODEL_NAME=str(tiny_models / "dia2"))
    tts = LocalTTS()
    assert tts.backend == "dia2" and tts.fast_path == "eager"
    rate, audio = tts.synthesize("Hello there, it is 3:45 pm.")
    check_audio(rate, audio, 24_000)
    assert tts.describe()["max_chars_per_piece"] > 0


def test_dia_loads_through_engine(monkeypatch, tiny_dia: Path) -> None:
    configure(monkeypatch, TTS_BACKEND="dia", TTS_MODEL_NAME=str(tiny_dia))
    tts = LocalTTS()
    assert tts.backend == "dia"
    check_audio(*tts.synthesize("Hi."), 44_100)


def test_engine_arguments_override_settings(monkeypatch, tiny_models: Path) -> None:
    configure(monkeypatch, TTS_BACKEND="dia", TTS_MODEL_NAME="/nowhere")
    tts = LocalTTS(backend="vits", model_name=str(tiny_models / "vits"))
    assert tts.backend == "vits"


def test_corrupt_dia2_falls_back_to_vits_and_says_why(
    monkeypatch, tiny_models: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "dia2-broken"
    shutil.copytree(tiny_models / "dia2", broken)
    (broken / "dia2" / "model.safetensors").write_bytes(
        b"\x08\x00\x00\x00\x00\x00\x00\x00{not json"
    )
    local_vits(monkeypatch, tiny_models, tmp_path)
    configure(monkeypatch, TTS_BACKEND="dia2", TTS_MODEL_NAME=str(broken))
    tts = LocalTTS()
    assert tts.backend == "vits" and tts.model_id == "facebook/mms-tts-eng"
    first, last = tts.report.attempts[0], tts.report.attempts[-1]
    assert first.strategy.startswith("dia2 ") and first.outcome == "failed"
    assert first.device == "cpu" and first.dtype == "float32"
    assert first.error_type and first.reason
    assert last.outcome == "chosen" and last.strategy.startswith("vits ")
    assert tts.report.source == "local_models_dir"
    check_audio(*tts.synthesize("Still talking."), 16_000)


def test_auto_on_cpu_skips_dia2_with_the_reason(
    monkeypatch, tiny_models: Path, tmp_path: Path
) -> None:
    local_vits(monkeypatch, tiny_models, tmp_path)
    configure(monkeypatch, TTS_BACKEND="auto")
    tts = LocalTTS()
    skipped = tts.report.attempts[0]
    assert skipped.strategy.startswith("dia2 nari-labs/Dia2-2B")
    assert skipped.outcome == "skipped" and skipped.reason == CPU_REASON
    assert tts.backend == "vits"
    assert any("far slower than speech" in note for note in tts.report.notes)


def test_auto_picks_the_backend_of_a_named_checkpoint(
    monkeypatch, tiny_models: Path, tmp_path: Path
) -> None:
    configure(monkeypatch, TTS_BACKEND="auto", TTS_MODEL_NAME=str(tiny_models / "vits"))
    assert LocalTTS().model_id == str(tiny_models / "vits")
    settings = get_settings()
    assert detect_backend(str(tiny_models / "dia2"), settings) == "dia2"
    assert detect_backend("nari-labs/Dia-1.6B-0626", settings) == "dia"
    assert detect_backend("facebook/mms-tts-fra", settings) == "vits"


def test_every_backend_failing_raises_with_the_report(monkeypatch, tmp_path: Path) -> None:
    configure(monkeypatch, TTS_BACKEND="dia2", TTS_MODEL_NAME=str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError) as info:
        LocalTTS()
    report = info.value.report
    assert [a.strategy.split()[0] for a in report.attempts] == ["dia2", "piper", "vits"]
    assert all(a.outcome == "failed" for a in report.attempts)
    assert "prefetch" in (report.attempts[-1].error or "")


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the CPU-only path of TTS_DEVICE=cuda"
)
def test_tts_device_cuda_without_cuda_is_recorded(monkeypatch, tiny_models: Path) -> None:
    configure(monkeypatch, TTS_BACKEND="vits", TTS_MODEL_NAME=str(tiny_models / "vits"))
    monkeypatch.setenv("TTS_DEVICE", "cuda")
    get_settings.cache_clear()
    tts = LocalTTS()
    assert tts.device == "cpu"
    assert tts.report.attempts[0].device == "cuda" and tts.report.attempts[0].outcome == "skipped"
    assert "TTS_DEVICE=cuda" in tts.report.notes[0]


def test_unknown_backend_names_the_choices() -> None:
    with pytest.raises(ValueError, match="auto, dia2, dia, piper, vits"):
        LocalTTS(backend="espeak")


# --- bad input --------------------------------------------------------------------------------


@pytest.fixture
def vits_tts(monkeypatch, tiny_models: Path) -> LocalTTS:
    configure(monkeypatch, TTS_BACKEND="vits", TTS_MODEL_NAME=str(tiny_models / "vits"))
    return LocalTTS()


@pytest.mark.parametrize("text", ["", "   \n\t ", "😀🎉🚀", "```\nprint(1)\n```", "**  ** ---"])
def test_nothing_to_say_is_a_clear_input_error(vits_tts: LocalTTS, text: str) -> None:
    with pytest.raises(NothingToSpeakError) as info:
        vits_tts.synthesize(text)
    assert isinstance(info.value, InputError) and info.value.status_code == 400
    with pytest.raises(NothingToSpeakError):
        vits_tts.stream(text)


def test_text_over_the_limit_is_refused(vits_tts: LocalTTS) -> None:
    text = "word " * 12_001  # 60 005 characters, over the default 60 000
    with pytest.raises(InputTooLargeError, match="60,000") as info:
        vits_tts.synthesize(text)
    assert info.value.status_code == 413


def test_fifty_thousand_characters_are_chunked_and_spoken(vits_tts: LocalTTS) -> None:
    text = "This is a fairly ordinary sentence for testing. " * 1042  # 50 016 characters
    assert len(text) > 50_000
    chunks = vits_tts.stream(text)
    first, second = next(chunks), next(chunks)
    chunks.close()
    for chunk in (first, second):
        assert len(chunk.text) <= 400 and chunk.samples.dtype == np.float32
        assert chunk.samples.size > 0


def test_control_characters_are_stripped(vits_tts: LocalTTS) -> None:
    rate, audio = vits_tts.synthesize("Hello\x00 there\x07\x1b[0m, friend\u200b!")
    check_audio(rate, audio, 16_000)


def test_non_english_text_warns_and_still_speaks(vits_tts: LocalTTS, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="voice_agent.tts.engine"):
        rate, audio = vits_tts.synthesize(
            "Ça va très bien, merci! Où est la bibliothèque? Été à Zürich."
        )
    check_audio(rate, audio, 16_000)
    assert any("English only" in r.getMessage() for r in caplog.records)


def test_text_in_a_script_the_voice_cannot_read(vits_tts: LocalTTS) -> None:
    with pytest.raises(NothingToSpeakError):
        vits_tts.synthesize("你好，世界")


def test_unknown_voice_lists_the_voices(vits_tts: LocalTTS) -> None:
    with pytest.raises(UnknownVoiceError, match="available: default"):
        vits_tts.synthesize("Hello.", voice="pirate")


# --- Dia2 voices ------------------------------------------------------------------------------


def test_dia2_prefix_voice_and_kept_default_voice(
    monkeypatch, tiny_models: Path, tmp_path: Path
) -> None:
    voices = tmp_path / "voices"
    voices.mkdir()
    shutil.copyfile(tiny_models / "dia2" / "prefix_s1.wav", voices / "narrator.wav")
    (voices / "narrator.txt").write_text("Hello there my friend.")
    shutil.copyfile(tiny_models / "dia2" / "prefix_s2.wav", voices / "mute.wav")  # no transcript
    configure(
        monkeypatch,
        TTS_BACKEND="dia2",
        TTS_MODEL_NAME=str(tiny_models / "dia2"),
        TTS_VOICES_DIR=str(voices),
    )
    tts = LocalTTS()
    assert [v.id for v in tts.voices()] == ["default", "mute", "narrator"]
    check_audio(*tts.synthesize("Nice to meet you.", voice="narrator"), 24_000)
    # Regression: a new transcript timer per utterance defeated the runtime's prefix cache
    # (keyed by the timer), so the voice was re-encoded every reply and the cache grew.
    backend = tts._backend
    assert backend._prefix("narrator") is backend._prefix("narrator")
    with pytest.raises(UnknownVoiceError, match="transcript"):
        tts.synthesize("Nice to meet you.", voice="mute")

    assert backend.kept_voice_seconds is None  # a named voice is not the default voice
    tts.synthesize("One two three four five six.")
    kept = backend.kept_voice_seconds
    assert kept is not None and 0 < kept <= backend.lock_frames / 12.5
    check_audio(*tts.synthesize("And a second reply."), 24_000)
    assert backend.kept_voice_seconds == kept  # kept once, reused after


def test_dia2_word_timer_from_the_app_is_used(
    monkeypatch, tiny_models: Path, tmp_path: Path
) -> None:
    voices = tmp_path / "voices"
    voices.mkdir()
    shutil.copyfile(tiny_models / "dia2" / "prefix_s1.wav", voices / "guest.wav")
    configure(
        monkeypatch,
        TTS_BACKEND="dia2",
        TTS_MODEL_NAME=str(tiny_models / "dia2"),
        TTS_VOICES_DIR=str(voices),
    )
    tts = LocalTTS()
    calls: list[int] = []

    def timer(audio: np.ndarray, rate: int) -> list[tuple[str, float, float]]:
        calls.append(rate)
        return [("Hello", 0.05, 0.3), ("friend", 0.35, 0.6)]

    tts.set_word_timer(timer)
    check_audio(*tts.synthesize("Good to see you.", voice="guest"), 24_000)
    check_audio(*tts.synthesize("Again.", voice="guest"), 24_000)
    assert calls == [24_000]  # the encoded prefix is cached
