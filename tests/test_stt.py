"""Whisper STT on tiny random-weight checkpoints: loading chain, transcription, gate, CLI."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voice_agent.audio.io import (
    SAMPLE_RATE,
    AudioTooLongError,
    InvalidAudioError,
    encode_audio,
    resample,
)
from voice_agent.core.config import DEFAULT_STT_CPU, SettingsError, get_settings, load_settings
from voice_agent.core.errors import BusyError, InputError, ModelLoadError
from voice_agent.stt.base import STTEngine, Transcript
from voice_agent.testing import tiny_whisper

# These tests are about the transformers backend (test_stt_ct2.py has CTranslate2's); the
# CLI tests below take STT_BACKEND=auto.
TRANSFORMERS = {"STT_BACKEND": "transformers"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny multilingual and English-only Whisper, and a tiny wav2vec2 CTC model."""
    import torch

    torch.set_num_threads(1)  # the CI machine has 2 cores, shared with other tests
    root = tmp_path_factory.mktemp("stt-models")
    return {
        "multi": tiny_whisper.build(root / "stt"),
        "english": tiny_whisper.build_english(root / "stt-en"),
        "ctc": tiny_whisper.build_ctc(root / "ctc"),
    }


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WHISPER_DEVICE", "cpu")
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="module")
def engine(checkpoints):
    from voice_agent.stt.whisper import WhisperSTT

    return WhisperSTT(
        str(checkpoints["multi"]), load_settings({**TRANSFORMERS, "HF_HUB_OFFLINE": "1"})
    )


@pytest.fixture(scope="module")
def hello_path() -> Path:
    from voice_agent.testing.paths import REPO_ROOT

    return REPO_ROOT / "assets" / "hello.wav"


@pytest.fixture(scope="module")
def hello(hello_path) -> np.ndarray:
    return sf.read(hello_path, dtype="float32")[0]


def test_tiny_checkpoint_has_whisper_tokens_and_generation_config(checkpoints):
    from transformers import GenerationConfig, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(checkpoints["multi"])
    tok = processor.tokenizer
    for token in ("<|startoftranscript|>", "<|en|>", "<|de|>", "<|transcribe|>", "<|translate|>"):
        assert tok.convert_tokens_to_ids(token) != tok.unk_token_id, token
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    notimestamps = tok.convert_tokens_to_ids("<|notimestamps|>")
    assert tok.convert_tokens_to_ids("<|0.00|>") == notimestamps + 1
    assert tok.convert_tokens_to_ids("<|30.00|>") == notimestamps + 1501
    gen = GenerationConfig.from_pretrained(checkpoints["multi"])
    assert gen.is_multilingual and len(gen.lang_to_id) == 100
    assert gen.no_timestamps_token_id == notimestamps and gen.eos_token_id == eot
    assert gen.decoder_start_token_id == tok.convert_tokens_to_ids("<|startoftranscript|>")
    assert set(gen.task_to_id) == {"transcribe", "translate"}
    english = GenerationConfig.from_pretrained(checkpoints["english"])
    assert not english.is_multilingual


def test_shaped_builder_matches_openai_vocabulary(tmp_path):
    """The benchmark's base/small-shaped models must carry the real vocabulary size (51864 .en)."""
    processor = tiny_whisper.build_processor(tmp_path, text_tokens=50256, languages=99)
    assert len(processor.tokenizer) == 51864
    assert processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>") == 50257
    assert processor.tokenizer.convert_tokens_to_ids("<|notimestamps|>") == 50362


def test_manual_strategy_loads_fp32_and_warms_up(engine):
    for name in STTEngine.__annotations__:  # the protocol's attributes
        assert hasattr(engine, name), name
    assert engine.report.chosen is not None
    assert engine.report.chosen.strategy == "manual-cpu-fp32"
    assert engine.report.chosen.dtype == "float32"
    assert engine.backend.kind == "manual"
    assert str(engine.backend.model.dtype) == "torch.float32"
    assert engine.report.source == "local_dir"
    assert any(note.startswith("warm-up on hello.wav") for note in engine.report.notes)
    assert engine.sample_rate == 16_000


def test_transcribes_speech(engine, hello_path):
    result = engine.transcribe(hello_path)
    assert isinstance(result, Transcript)
    assert result.speech_detected
    assert result.text and result.text == result.text.strip()
    assert result.language == "en"
    assert result.duration_s == pytest.approx(54_811 / 16_000, abs=1e-3)
    assert 0 < result.seconds < 30


def test_input_forms_reach_the_model_as_the_same_audio(engine, hello):
    """Conversions are tested in test_audio; here each kind of source goes through transcribe."""
    hello_44k = resample(hello, 16_000, 44_100)
    forms = {
        "bytes": encode_audio(16_000, hello, "wav"),
        "int16 pair": (16_000, (hello * 32767).astype(np.int16)),
        "stereo 44.1k flac": encode_audio(44_100, np.stack([hello_44k, hello_44k], axis=1), "flac"),
    }
    for name, form in forms.items():
        result = engine.transcribe(form)
        assert result.duration_s == pytest.approx(3.4257, abs=0.01), name
        assert result.speech_detected and result.text, name


def test_silence_and_noise_give_an_empty_transcript(engine, hello_path):
    from voice_agent.testing.paths import REPO_ROOT

    silent = engine.transcribe(REPO_ROOT / "assets" / "silence.wav")
    assert silent.text == "" and not silent.speech_detected
    assert silent.duration_s == pytest.approx(2.0)
    noise = np.random.default_rng(0).standard_normal(3 * SAMPLE_RATE).astype(np.float32) * 0.3
    assert engine.transcribe(noise).text == ""
    # The same engine still transcribes speech afterwards.
    assert engine.transcribe(hello_path).text


def test_language_auto_detects_and_bad_language_is_an_input_error(engine, hello_path):
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    detected = engine.transcribe(hello_path, language="auto")
    assert detected.language in LANGUAGES
    assert engine.transcribe(hello_path, language="German").language == "de"
    with pytest.raises(InputError, match="Unknown language"):
        engine.transcribe(hello_path, language="klingon")


def test_english_only_model(checkpoints, hello_path):
    from voice_agent.stt.whisper import WhisperSTT

    stt = WhisperSTT(str(checkpoints["english"]), load_settings(TRANSFORMERS), warmup=False)
    assert not stt.backend.multilingual
    assert stt.transcribe(hello_path, language="auto").language == "en"
    with pytest.raises(InputError, match="English only"):
        stt.transcribe(hello_path, language="de")


def test_long_audio_uses_sequential_long_form(engine, hello):
    long = np.concatenate([hello] * 9)  # 30.8 s: more than one 30 s window
    result = engine.transcribe((16_000, long))
    assert result.duration_s == pytest.approx(30.83, abs=0.01)
    assert result.text
    # Truncation to one window would stop at the tiny model's token limit; two windows pass it.
    one_window = engine.decode(long[: 30 * 16_000], "en").tokens
    assert engine.decode(long, "en").tokens > one_window


def test_word_timings(engine, hello_path):
    result = engine.transcribe_words(hello_path)
    assert result.words
    starts = [start for _, start, _ in result.words]
    assert starts == sorted(starts)
    for word, start, end in result.words:
        assert word and word == word.strip()
        assert 0.0 <= start <= end <= result.duration_s + 0.02
    assert " ".join(w for w, _, _ in result.words).replace(" ", "") == result.text.replace(" ", "")


def test_bad_audio_errors_pass_through(engine, hello):
    with pytest.raises(InvalidAudioError):
        engine.transcribe(b"definitely not audio" * 50)
    short_limit = load_settings({**TRANSFORMERS, "MAX_AUDIO_SECONDS": "2"})
    from voice_agent.stt.whisper import WhisperSTT

    limited = WhisperSTT(engine.model_id, short_limit, warmup=False)
    with pytest.raises(AudioTooLongError, match="limit is 2 s"):
        limited.transcribe(hello)


def test_busy_engine_raises_busy_error_after_bounded_wait(checkpoints, hello):
    from voice_agent.stt.whisper import WhisperSTT

    stt = WhisperSTT(
        str(checkpoints["multi"]), load_settings(TRANSFORMERS), warmup=False, busy_timeout_s=0.2
    )
    release = threading.Event()
    holder = threading.Thread(
        target=lambda: (stt._lock.acquire(), release.wait(), stt._lock.release())
    )
    holder.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    with pytest.raises(BusyError) as info:
        stt.transcribe(hello)
    assert 0.15 < time.perf_counter() - t0 < 2
    assert info.value.retry_after_s >= 1
    release.set()
    holder.join()
    assert stt.transcribe(hello).text


def test_concurrent_calls_are_serialised(engine, hello):
    results: list[Transcript] = []
    threads = [
        threading.Thread(target=lambda: results.append(engine.transcribe(hello))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len({r.text for r in results}) == 1


def test_pipeline_fallback_when_the_manual_load_fails(checkpoints, hello_path):
    """A non-Whisper recogniser makes the manual strategy fail for real; the pipeline loads it."""
    from voice_agent.stt.whisper import WhisperSTT

    stt = WhisperSTT(str(checkpoints["ctc"]), load_settings(TRANSFORMERS))
    outcomes = [(a.strategy, a.outcome) for a in stt.report.attempts]
    assert outcomes == [("manual-cpu-fp32", "failed"), ("pipeline-cpu-fp32", "chosen")]
    assert "not a Whisper checkpoint" in stt.report.attempts[0].error
    assert stt.backend.kind == "pipeline"
    result = stt.transcribe(hello_path)
    assert result.speech_detected and isinstance(result.text, str)
    assert result.duration_s == pytest.approx(3.4257, abs=0.01)


def test_pipeline_strategy_on_whisper_short_long_and_words(checkpoints, hello):
    from voice_agent.stt.whisper import WhisperSTT

    stt = WhisperSTT(
        str(checkpoints["multi"]), load_settings(TRANSFORMERS), strategies=("pipeline",)
    )
    assert stt.report.chosen.strategy == "pipeline-cpu-fp32"
    assert stt.transcribe(hello, language="fr").language == "fr"
    long = stt.transcribe(np.concatenate([hello] * 9))  # 30.8 s: long-form
    assert long.text and long.duration_s == pytest.approx(30.83, abs=0.01)
    words = stt.transcribe_words(hello).words
    assert words and all(0 <= s <= e <= 3.5 for _, s, e in words)


def test_every_strategy_failing_raises_with_the_report(tmp_path):
    from voice_agent.stt.whisper import WhisperSTT

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ModelLoadError) as info:
        WhisperSTT(str(tmp_path), load_settings(TRANSFORMERS))
    report = info.value.report
    assert [a.outcome for a in report.attempts] == ["failed", "failed"]
    assert "manual-cpu-fp32" in str(info.value) and "pipeline-cpu-fp32" in str(info.value)


def test_cuda_request_without_cuda_falls_back_to_cpu(checkpoints):
    import torch

    from voice_agent.stt.whisper import WhisperSTT

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the fallback path needs a CPU-only torch")
    stt = WhisperSTT(
        str(checkpoints["multi"]),
        load_settings({**TRANSFORMERS, "WHISPER_DEVICE": "cuda"}),
        warmup=False,
    )
    skipped = [a for a in stt.report.attempts if a.outcome == "skipped"]
    assert [a.strategy for a in skipped] == ["manual-cuda-fp16", "pipeline-cuda-fp16"]
    assert all("CUDA is not available" in a.reason for a in skipped)
    assert skipped[0].dtype == "float16"
    assert stt.report.chosen.strategy == "manual-cpu-fp32"


def test_default_model_offline_fails_fast_naming_the_fix(settings):
    from voice_agent.stt.whisper import WhisperSTT

    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        WhisperSTT(settings=settings)
    assert time.perf_counter() - t0 < 2
    assert DEFAULT_STT_CPU in str(info.value)
    assert "prefetch" in str(info.value)
    assert info.value.report.model_ref == DEFAULT_STT_CPU
    assert any("CPU default" in note for note in info.value.report.notes)


def test_bad_stt_language_setting_fails_at_load(checkpoints):
    from voice_agent.stt.whisper import WhisperSTT

    with pytest.raises(SettingsError, match="STT_LANGUAGE='elvish'.*Unknown language"):
        WhisperSTT(
            str(checkpoints["multi"]), load_settings({**TRANSFORMERS, "STT_LANGUAGE": "elvish"})
        )


# --- CLI ------------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch, checkpoints):
    monkeypatch.setenv("STT_MODEL_NAME", str(checkpoints["multi"]))
    monkeypatch.setenv("WHISPER_DEVICE", "cpu")
    get_settings.cache_clear()


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "webm"])
def test_cli_transcribes_each_format(cli_env, checkpoints, hello, tmp_path, capsys, fmt):
    from voice_agent.cli.transcribe import main

    path = tmp_path / f"hello.{fmt}"
    path.write_bytes(encode_audio(16_000, hello, fmt))
    assert main([str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text"] and out["speech_detected"]
    assert out["duration_s"] == pytest.approx(3.43, abs=0.08)
    assert out["model"] == str(checkpoints["multi"])


def test_cli_plain_text_output(cli_env, hello_path, capsys):
    from voice_agent.cli.transcribe import main

    assert main([str(hello_path), "--language", "en"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed and "\n" not in printed


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is a text file, not audio" * 10, "not a recognised audio file"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "WAV"),
        (b"", "empty"),
    ],
    ids=["text", "cut-wav-header", "empty"],
)
def test_cli_corrupt_file_is_one_clear_line_and_exit_2(cli_env, tmp_path, capsys, content, message):
    from voice_agent.cli.transcribe import main

    path = tmp_path / "broken.wav"
    path.write_bytes(content)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err
    assert "\n" not in err and "Traceback" not in err


def test_cli_bad_language_fails_before_loading(cli_env, hello_path, capsys, monkeypatch):
    from voice_agent.cli.transcribe import main

    monkeypatch.setenv("STT_MODEL_NAME", "/nonexistent/model")  # would fail with exit 1
    get_settings.cache_clear()
    assert main([str(hello_path), "--language", "xx-unknown"]) == 2
    assert "Unknown language" in capsys.readouterr().err


def test_cli_missing_file_and_model_errors(cli_env, tmp_path, hello_path, capsys, monkeypatch):
    from voice_agent.cli.transcribe import main

    assert main([str(tmp_path / "missing.mp3")]) == 2
    assert "No such audio file" in capsys.readouterr().err
    monkeypatch.setenv("STT_MODEL_NAME", str(tmp_path / "no-model-here"))
    get_settings.cache_clear()
    assert main([str(hello_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


@pytest.mark.parametrize("bad", [5, ["en"], {"lang": "en"}])
def test_language_that_is_not_a_string_is_an_input_error(bad) -> None:
    """Regression: a non-string language (e.g. JSON `"language": 5`) raised AttributeError (a 500)."""
    from voice_agent.core.errors import InputError
    from voice_agent.stt.whisper import normalize_language

    with pytest.raises(InputError, match="must be a string"):
        normalize_language(bad)
