"""The CTranslate2 STT backend on tiny random-weight Whisper checkpoints, run for real."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voice_agent.core.config import SettingsError, configured_models, load_settings
from voice_agent.core.errors import InputError, ModelLoadError
from voice_agent.stt.base import Speech, Transcript
from voice_agent.testing import tiny_whisper

# A Whisper model named, so the backend choice is Whisper's whatever the CPU default is.
WHISPER = load_settings({"STT_MODEL_NAME": "openai/whisper-base.en"})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    torch.set_num_threads(1)  # the CI machine has 2 cores, shared with other tests
    root = tmp_path_factory.mktemp("ct2-models")
    return {
        "multi": tiny_whisper.build(root / "stt"),
        "english": tiny_whisper.build_english(root / "stt-en"),
    }


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HF_HOME for this module: the conversions made here are reused across its tests."""
    return tmp_path_factory.mktemp("ct2-home")


@pytest.fixture(scope="module")
def hello() -> np.ndarray:
    from voice_agent.testing.paths import REPO_ROOT

    return sf.read(REPO_ROOT / "assets" / "hello.wav", dtype="float32")[0]


def settings(home: Path, **env: str):
    return load_settings({"HF_HUB_OFFLINE": "1", "HF_HOME": str(home), **env})


def engine(path: Path, home: Path, backend: str = "auto", **kwargs):
    from voice_agent.stt.whisper import WhisperSTT

    kwargs.setdefault("warmup", False)
    return WhisperSTT(str(path), settings(home, STT_BACKEND=backend), **kwargs)


@pytest.mark.parametrize("name", ["english", "multi"])
def test_float32_conversion_decodes_what_transformers_decodes(checkpoints, home, hello, name):
    """Same prompt, same greedy search, same token cap: the same tokens and text.

    Random int8 weights may round to different tokens, so the exact comparison uses a
    float32 conversion; int8 is checked to run the same contract below.
    """
    reference = engine(checkpoints[name], home, "transformers")
    ct2 = engine(checkpoints[name], home, "ctranslate2", ct2_quantization="float32")
    assert ct2.report.chosen.strategy == "ctranslate2-cpu-float32"
    languages = ["en", "auto"] if name == "multi" else ["en"]
    for language in languages:
        want, got = reference.decode(hello, language), ct2.decode(hello, language)
        assert got.tokens == want.tokens == tiny_whisper.TINY_MAX_LENGTH  # the cap holds
        assert (got.text, got.language) == (want.text, want.language), language
        want_t, got_t = reference.transcribe(hello, language), ct2.transcribe(hello, language)
        assert (got_t.text, got_t.language, got_t.duration_s, got_t.speech_detected) == (
            want_t.text,
            want_t.language,
            want_t.duration_s,
            want_t.speech_detected,
        )


def test_int8_keeps_the_engine_contract(checkpoints, home, hello):
    stt = engine(checkpoints["multi"], home, warmup=True)
    chosen = stt.report.chosen
    assert (chosen.strategy, chosen.device, chosen.quantization) == (
        "ctranslate2-cpu-int8",
        "cpu",
        "int8",
    )
    assert stt.backend.kind == "ctranslate2"
    assert "ctranslate2-cpu-int8 on cpu (float32, int8)" in stt.report.summary()
    assert any(n.startswith("warm-up on hello.wav") for n in stt.report.notes)
    assert stt.capabilities.timestamps and "de" in stt.capabilities.languages

    result = stt.transcribe(hello)
    assert isinstance(result, Transcript) and result.speech_detected
    assert result.text and result.text == result.text.strip() and result.language == "en"
    assert stt.transcribe(hello, "auto").language is not None
    assert stt.transcribe(np.zeros(16_000, np.float32)).speech_detected is False  # the gate
    # A Speech value was gated by the turn: the model runs on it as it is.
    assert stt.transcribe(Speech(16_000, np.zeros(16_000, np.float32))).speech_detected
    with pytest.raises(InputError, match="Unknown language"):
        stt.transcribe(hello, "elvish")

    long = stt.transcribe(np.concatenate([hello] * 10))  # 34 s: two 30 s windows
    assert long.duration_s > 30 and len(long.text) > len(result.text)
    words = stt.transcribe_words(hello)
    assert words.words and all(0 <= s <= e <= words.duration_s + 0.02 for _, s, e in words.words)
    assert " ".join(w for w, _, _ in words.words).replace(" ", "") == words.text.replace(" ", "")

    fixed = stt.decode(hello, "en", generate_kwargs={"min_new_tokens": 5, "max_new_tokens": 5})
    assert fixed.tokens == 5
    with pytest.raises(ValueError, match="takes only"):
        stt.decode(hello, "en", generate_kwargs={"num_beams": 4})


def test_english_only_model_refuses_other_languages(checkpoints, home, hello):
    stt = engine(checkpoints["english"], home)
    assert stt.backend.kind == "ctranslate2" and not stt.backend.multilingual
    assert stt.capabilities.languages == ("en",)
    assert stt.transcribe(hello).language == "en"
    with pytest.raises(InputError, match="English only"):
        stt.transcribe(hello, "de")


def test_conversion_is_made_once_then_reused(checkpoints, tmp_path, monkeypatch):
    first = engine(checkpoints["english"], tmp_path)
    assert any(n.startswith("converted to CTranslate2 int8") for n in first.report.notes)
    folders = list((tmp_path / "ctranslate2").iterdir())
    assert len(folders) == 1 and (folders[0] / "model.bin").is_file()

    import ctranslate2

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(ctranslate2.converters, "TransformersConverter", no_conversion)
    again = engine(checkpoints["english"], tmp_path)
    assert again.report.chosen.strategy == "ctranslate2-cpu-int8"
    assert any(n.startswith("reused the CTranslate2 int8") for n in again.report.notes)
    assert list((tmp_path / "ctranslate2").iterdir()) == folders


def test_a_changed_checkpoint_or_quantization_gets_its_own_conversion(checkpoints, tmp_path):
    from voice_agent.stt.whisper_ct2 import conversion_dir

    path = checkpoints["english"]
    int8 = conversion_dir(tmp_path, "x/y", path, "int8")
    assert int8 == conversion_dir(tmp_path, "x/y", path, "int8")
    assert int8 != conversion_dir(tmp_path, "x/y", path, "float32")
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in path.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    before = conversion_dir(tmp_path, "x/y", copy, "int8")
    assert before != int8  # another folder
    weights = copy / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert conversion_dir(tmp_path, "x/y", copy, "int8") != before  # rewritten in place


def test_backend_setting_picks_the_strategies(checkpoints, home):
    assert engine(checkpoints["english"], home, "transformers").backend.kind == "manual"
    explicit = engine(checkpoints["english"], home, "ctranslate2")
    assert [a.strategy for a in explicit.report.attempts] == ["ctranslate2-cpu-int8"]
    # On CUDA, auto keeps transformers (here CUDA is missing, so it ends on the CPU).
    from voice_agent.stt.whisper import WhisperSTT

    cuda = WhisperSTT(
        str(checkpoints["english"]),
        settings(home, WHISPER_DEVICE="cuda"),
        warmup=False,
    )
    assert "ctranslate2" not in [a.strategy.split("-")[0] for a in cuda.report.attempts]
    assert any("STT_BACKEND=auto: transformers" in n for n in cuda.report.notes)
    with pytest.raises(
        SettingsError,
        match="STT_BACKEND='onnx' is not valid; accepted values: auto, transformers, ctranslate2",
    ):
        load_settings({"STT_BACKEND": "onnx"})
    assert configured_models(WHISPER, cuda_available=False)["stt_backend"] == "ctranslate2"
    assert (
        configured_models(load_settings({"WHISPER_DEVICE": "auto"}), True)["stt_backend"]
        == "transformers"
    )


def test_missing_package_falls_back_with_the_reason_or_fails_clearly(
    checkpoints, home, monkeypatch
):
    """Without ctranslate2, auto loads transformers and says why; asking for it fails naming the fix."""
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # what an absent package looks like
    auto = engine(checkpoints["english"], home)
    skipped, chosen = auto.report.attempts
    assert (skipped.strategy, skipped.outcome) == ("ctranslate2-cpu-int8", "skipped")
    assert skipped.reason == "the ctranslate2 package is not installed (pip install ctranslate2)"
    assert chosen.strategy == "manual-cpu-fp32" and auto.report.chosen is chosen
    with pytest.raises(ModelLoadError, match="pip install ctranslate2"):
        engine(checkpoints["english"], home, "ctranslate2")
    assert configured_models(WHISPER, cuda_available=False)["stt_backend"] == "transformers"
