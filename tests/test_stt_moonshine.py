"""The Moonshine STT backend on a tiny random-weight checkpoint, loaded by the real engine.

The tiny model (`voice_agent.testing.tiny_moonshine.build`, made here through
`make-tiny-models`' registered builder) never emits `</s>`, so every decode runs to its
token cap: the tests read the cap off `Decoded.tokens`.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from voice_agent.audio.io import SAMPLE_RATE
from voice_agent.core.config import SettingsError, configured_models, load_settings
from voice_agent.core.errors import InputError
from voice_agent.stt import moonshine
from voice_agent.stt.base import Speech, Transcript, WordTimestampsUnsupportedError
from voice_agent.testing import tiny_moonshine

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_POSITIONS = tiny_moonshine.SHAPES["tiny-test"].max_positions


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voice_agent.testing.tiny import make_tiny_models

    root = tmp_path_factory.mktemp("moonshine-models")
    return make_tiny_models(root, ("stt-moonshine",))["stt-moonshine"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("moonshine-home")


@pytest.fixture(scope="module")
def hello() -> np.ndarray:
    from voice_agent.testing.paths import REPO_ROOT

    return sf.read(REPO_ROOT / "assets" / "hello.wav", dtype="float32")[0]


def engine(path: Path, home: Path, **env: str):
    from voice_agent.stt.whisper import WhisperSTT

    warmup = env.pop("warmup", "") == "1"
    settings = load_settings({"HF_HUB_OFFLINE": "1", "HF_HOME": str(home), **env})
    return WhisperSTT(str(path), settings, warmup=warmup)


@pytest.fixture(scope="module")
def stt(checkpoint: Path, home: Path):
    """STT_BACKEND=auto on the CPU, warmed up."""
    return engine(checkpoint, home, warmup="1")


class Calls:
    """Wraps the loaded model's `generate`: the input lengths and options of every call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stt: Any) -> None:
        self.lengths: list[int] = []
        self.options: list[dict[str, Any]] = []
        model = stt.backend.model
        real = model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            self.lengths.append(int(kwargs["input_values"].shape[-1]))
            self.options.append({k: v for k, v in kwargs.items() if k != "input_values"})
            return real(*args, **kwargs)

        monkeypatch.setattr(model, "generate", generate)


def test_tiny_checkpoint_ids_agree_with_its_tokenizer(checkpoint: Path) -> None:
    from transformers import AutoProcessor

    config = json.loads((checkpoint / "config.json").read_text())
    generation = json.loads((checkpoint / "generation_config.json").read_text())
    tokenizer = AutoProcessor.from_pretrained(checkpoint, local_files_only=True).tokenizer
    assert config["model_type"] == "moonshine" and config["vocab_size"] == len(tokenizer)
    for source in (config, generation):
        assert source["decoder_start_token_id"] == tokenizer.bos_token_id == 1
        assert source["bos_token_id"] == tokenizer.convert_tokens_to_ids("<s>") == 1
        assert source["eos_token_id"] == tokenizer.eos_token_id == 2


def test_auto_picks_moonshine_int8_on_the_cpu_and_warms_up(stt) -> None:
    import torch

    attempts = [(a.strategy, a.outcome, a.quantization) for a in stt.report.attempts]
    assert attempts == [("moonshine-cpu-int8", "chosen", "int8")]  # no Whisper strategy tried
    assert stt.report.summary() == "stt: moonshine-cpu-int8 on cpu (float32, int8)"
    assert stt.backend.kind == "moonshine" and not stt.backend.multilingual
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert any(isinstance(m, dynamic) for m in stt.backend.model.modules())  # really int8
    assert not any(type(m) is torch.nn.Linear for m in stt.backend.model.modules())
    assert any(n.startswith("warm-up on hello.wav") for n in stt.report.notes)
    assert any("Moonshine checkpoint runs on transformers" in n for n in stt.report.notes)
    assert stt.capabilities.languages == ("en",) and stt.capabilities.timestamps is False


def test_fp32_is_the_fallback_when_int8_fails(checkpoint, home, hello, monkeypatch) -> None:
    def broken(model: Any) -> Any:
        raise RuntimeError("no int8 kernels in this build")

    monkeypatch.setattr(moonshine, "quantize_int8", broken)
    stt = engine(checkpoint, home)
    outcomes = [(a.strategy, a.outcome) for a in stt.report.attempts]
    assert outcomes == [("moonshine-cpu-int8", "failed"), ("moonshine-cpu-fp32", "chosen")]
    assert "no int8 kernels" in stt.report.attempts[0].error
    assert stt.report.chosen.quantization is None
    assert stt.transcribe(hello).text


def test_int8_skipped_with_the_reason_when_torch_has_no_kernels(
    checkpoint, home, monkeypatch
) -> None:
    monkeypatch.setattr(moonshine, "int8_unavailable", lambda: "no quantized CPU kernels")
    stt = engine(checkpoint, home)
    first, chosen = stt.report.attempts
    assert (first.outcome, first.reason) == ("skipped", "no quantized CPU kernels")
    assert chosen.strategy == "moonshine-cpu-fp32"


def test_cuda_fp16_comes_first_when_asked_for(checkpoint, home) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the fallback path needs a CPU-only torch")
    stt = engine(checkpoint, home, WHISPER_DEVICE="cuda")
    attempts = [(a.strategy, a.outcome, a.dtype) for a in stt.report.attempts]
    assert attempts == [
        ("moonshine-cuda-fp16", "skipped", "float16"),
        ("moonshine-cpu-int8", "chosen", "float32"),
    ]


def test_transcribe_returns_text_and_timings(stt, hello) -> None:
    result = stt.transcribe(hello)
    assert isinstance(result, Transcript) and result.speech_detected
    assert result.text and result.text == result.text.strip()
    assert result.language == "en" and result.words == []
    assert result.duration_s == pytest.approx(3.4257, abs=0.01)
    assert 0 < result.seconds < 30
    assert stt.transcribe(hello, "auto").language == "en"  # English only: nothing to detect


def test_the_model_runs_on_a_thread_that_ends_with_the_decode(stt, hello, monkeypatch) -> None:
    """The caller's thread (a turn's, a server worker's) outlives the decode; torch's
    OpenMP pool must not stay with it beside the LLM's (core.threads.in_own_thread)."""
    ran: list[threading.Thread] = []
    real = stt.backend.model.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        ran.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(stt.backend.model, "generate", generate)
    assert stt.transcribe(hello).text
    assert len(ran) == 1 and ran[0] is not threading.current_thread()
    assert ran[0].name == "stt-decode" and not ran[0].is_alive()


def test_silence_gives_no_speech_without_calling_the_model(stt, monkeypatch) -> None:
    calls = Calls(monkeypatch, stt)
    silent = stt.transcribe(np.zeros(2 * SAMPLE_RATE, np.float32))
    assert (silent.text, silent.speech_detected, silent.language) == ("", False, "en")
    assert calls.lengths == []
    # A Speech value was gated by the turn: the model runs on it as it is.
    assert stt.transcribe(Speech(SAMPLE_RATE, np.zeros(SAMPLE_RATE, np.float32))).speech_detected
    assert calls.lengths == [SAMPLE_RATE]


def test_other_languages_are_an_input_error(stt, hello) -> None:
    with pytest.raises(InputError, match="English only"):
        stt.transcribe(hello, "de")
    with pytest.raises(InputError, match="Unknown language"):
        stt.transcribe(hello, "elvish")


def test_word_timestamps_are_a_specific_error_before_decoding(stt, hello, monkeypatch) -> None:
    calls = Calls(monkeypatch, stt)
    with pytest.raises(WordTimestampsUnsupportedError, match="no alignment heads") as info:
        stt.transcribe_words(hello)
    assert isinstance(info.value, InputError) and info.value.status_code == 400
    with pytest.raises(WordTimestampsUnsupportedError):
        stt.decode(hello, "en", words=True)
    with pytest.raises(WordTimestampsUnsupportedError):
        stt.backend.decode(hello, language=None, words=True)
    assert calls.lengths == []


def test_pipeline_strategy_on_moonshine_declares_no_word_timings(checkpoint, home, hello):
    """The generic pipeline strategy loads Moonshine too; it has no word timings there either."""
    from voice_agent.stt.whisper import WhisperSTT

    settings = load_settings({"HF_HUB_OFFLINE": "1", "HF_HOME": str(home)})
    stt = WhisperSTT(str(checkpoint), settings, strategies=("pipeline",), warmup=False)
    assert stt.backend.kind == "pipeline" and stt.capabilities.timestamps is False
    with pytest.raises(WordTimestampsUnsupportedError, match="pipeline backend"):
        stt.transcribe_words(hello)


def test_rest_word_timestamps_are_a_400_for_moonshine(stt, checkpoint, home, hello) -> None:
    """Word timings over REST (OpenAI's `timestamp_granularities[]`): a 400 naming the reason
    for Moonshine and for engines without word timings, the words themselves for Whisper,
    and a 200 without the option."""
    from tests.server_fakes import FakeModels, assert_error
    from voice_agent.audio.io import encode_wav
    from voice_agent.server.app import create_app
    from voice_agent.stt.whisper import WhisperSTT
    from voice_agent.testing import tiny_whisper
    from voice_agent.testing.server import LiveServer

    wav = encode_wav(SAMPLE_RATE, hello)
    route = "/v1/audio/transcriptions"
    # Sent as OpenAI's client sends it: the field once per value, "word" not last.
    words = {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]}
    with LiveServer(create_app(FakeModels(stt=stt))) as server:
        refused = httpx.post(server.url + route, files={"file": ("a.wav", wav)}, data=words)
        error = assert_error(refused, 400, "word timestamps", "Whisper")
        assert error["code"] == "word_timestamps_unsupported"
        plain = httpx.post(
            server.url + route,
            files={"file": ("a.wav", wav)},
            data={"response_format": "verbose_json"},
        )
        assert plain.status_code == 200 and plain.json()["text"] and "words" not in plain.json()
        wrong = httpx.post(
            server.url + route,
            files={"file": ("a.wav", wav)},
            data={**words, "response_format": "json"},
        )
        assert_error(wrong, 400, "verbose_json")
    # An engine with no transcribe_words at all (a remote one, the fakes): a 400 too, not a 500.
    with LiveServer(create_app(FakeModels())) as server:
        fake = httpx.post(server.url + route, files={"file": ("a.wav", wav)}, data=words)
        assert_error(fake, 400, "word timestamps")
    whisper = WhisperSTT(
        str(tiny_whisper.build_english(home / "whisper-en")),
        load_settings({"HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "STT_BACKEND": "transformers"}),
        warmup=False,
    )
    with LiveServer(create_app(FakeModels(stt=whisper))) as server:
        timed = httpx.post(server.url + route, files={"file": ("a.wav", wav)}, data=words)
        assert timed.status_code == 200, timed.text
        assert timed.json()["words"] and {"word", "start", "end"} <= set(timed.json()["words"][0])


def test_token_cap_scales_with_duration(stt, hello) -> None:
    assert moonshine.token_cap(SAMPLE_RATE) == moonshine.MIN_NEW_TOKENS  # 6.5 -> the floor
    assert moonshine.token_cap(4 * SAMPLE_RATE) == 26
    assert moonshine.token_cap(30 * SAMPLE_RATE) == 195
    assert moonshine.token_cap(30 * SAMPLE_RATE, max_positions=194) == 193
    for seconds, tokens in ((0.5, 10), (2.0, 13), (3.0, 20)):
        decoded = stt.decode(hello[: int(seconds * SAMPLE_RATE)], "en")
        assert decoded.tokens == tokens, seconds
    assert stt.decode(hello, "en").tokens == 23  # 3.43 s


def test_generate_kwargs_force_the_length(stt, hello, monkeypatch) -> None:
    calls = Calls(monkeypatch, stt)
    fixed = {"min_new_tokens": 5, "max_new_tokens": 5}
    assert stt.decode(hello, "en", generate_kwargs=fixed).tokens == 5
    # The caller's max_new_tokens replaces the duration's cap (10 tokens for 1 s).
    longer = {"min_new_tokens": 40, "max_new_tokens": 40}
    assert stt.decode(hello[:SAMPLE_RATE], "en", generate_kwargs=longer).tokens == 40
    first = calls.options[0]
    assert (first["min_new_tokens"], first["max_new_tokens"]) == (5, 5)
    assert (first["do_sample"], first["num_beams"]) == (False, 1)  # greedy


def test_long_audio_is_decoded_window_by_window(stt, hello, monkeypatch) -> None:
    calls = Calls(monkeypatch, stt)
    long = np.concatenate([hello] * 10)  # 34.3 s: a 30 s window and a 4.3 s one
    result = stt.transcribe(long)
    window = moonshine.WINDOW_SECONDS * SAMPLE_RATE
    assert calls.lengths == [window, long.shape[0] - window]
    assert result.duration_s == pytest.approx(34.26, abs=0.01) and result.text
    decoded = stt.decode(long, "en")
    assert decoded.tokens == sum(moonshine.token_cap(n, TINY_POSITIONS) for n in calls.lengths[:2])
    # A tail too short for Moonshine's convolutions is padded, not an error.
    tail = np.concatenate([long[:window], long[: SAMPLE_RATE // 100]])
    assert stt.decode(tail, "en").tokens == TINY_POSITIONS - 1 + moonshine.MIN_NEW_TOKENS
    assert calls.lengths[-1] == moonshine.MIN_SAMPLES


def test_ctranslate2_backend_refuses_a_moonshine_checkpoint(checkpoint, home) -> None:
    with pytest.raises(SettingsError, match="converts Whisper checkpoints only"):
        engine(checkpoint, home, STT_BACKEND="ctranslate2")
    stt = engine(checkpoint, home, STT_BACKEND="transformers")
    assert stt.report.chosen.strategy == "moonshine-cpu-int8"


def test_a_moonshine_default_is_a_one_line_change() -> None:
    """Everything that names the CPU default follows DEFAULT_STT_CPU when it is a Moonshine id."""
    from voice_agent.stt.whisper import why_cpu_default

    settings = load_settings({"STT_MODEL_NAME": "UsefulSensors/moonshine-base"})
    assert configured_models(settings, cuda_available=False)["stt_backend"] == "moonshine"
    note = why_cpu_default("UsefulSensors/moonshine-base")
    assert note.startswith("UsefulSensors/moonshine-base is the CPU default") and "int8" in note
    assert "real-time factor" in why_cpu_default("openai/whisper-base.en")


def test_shaped_builders_have_the_real_dimensions(tmp_path) -> None:
    from transformers import AutoConfig

    from voice_agent.core.loading import count_parameters

    path = tiny_moonshine.build_shaped(tmp_path / "tiny", "tiny")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    assert (config.hidden_size, config.intermediate_size, config.vocab_size) == (288, 1152, 32768)
    assert (config.encoder_num_hidden_layers, config.decoder_num_hidden_layers) == (6, 6)
    assert config.encoder_num_attention_heads == config.decoder_num_attention_heads == 8
    assert round(count_parameters(path)[0] / 1e6, 1) == 27.1
    base = tiny_moonshine.SHAPES["base"]
    assert (base.hidden, base.intermediate, base.layers, base.heads) == (416, 1664, 8, 8)


@pytest.mark.slow
def test_voice_bench_builds_the_moonshine_shape_for_a_moonshine_default(tmp_path, hello):
    """The voice bench's STT follows DEFAULT_STT_CPU: a Moonshine id gets Moonshine base's
    shape, decoding exactly 16 tokens like the Whisper shape it replaces."""
    from transformers import AutoConfig

    from voice_agent.bench.voice import build_default_stt

    path, about = build_default_stt(tmp_path / "stt", "UsefulSensors/moonshine-base")
    assert about == "moonshine-base shape, random weights, 16 tokens"
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    assert (config.model_type, config.hidden_size, config.vocab_size) == ("moonshine", 416, 32768)
    stt = engine(path, tmp_path)
    assert stt.report.chosen.strategy == "moonshine-cpu-int8"
    assert stt.decode(hello, "en").tokens == 16


def test_the_voice_bench_recogniser_decodes_what_its_words_take(
    checkpoint, home, hello, monkeypatch
):
    """A random model never writes its end token, so it ran on to the engine's cap: 6.5
    tokens a second of audio, twice what speech holds. Under the bench's `ScriptedSTT` it
    decodes as many tokens as the words it says for that audio (and the end token)."""
    from voice_agent.bench.pipeline import TOKENS_PER_WORD, WORDS_PER_S, ScriptedSTT

    stt = engine(checkpoint, home)  # its own: the wrapper reaches into the engine it wraps
    calls = Calls(monkeypatch, stt)
    scripted = ScriptedSTT(stt)
    for seconds, tokens in ((1.3, 6), (2.2, 9), (3.4, 13)):
        assert math.ceil(WORDS_PER_S * seconds * TOKENS_PER_WORD) + 1 == tokens
        text = scripted.transcribe((SAMPLE_RATE, hello[: int(seconds * SAMPLE_RATE)])).text
        assert text and (
            calls.options[-1]["min_new_tokens"],
            calls.options[-1]["max_new_tokens"],
        ) == (tokens, tokens)
    assert stt.decode(hello, "en").tokens == 13  # every decode through the engine
    fixed = {"min_new_tokens": 5, "max_new_tokens": 5}  # a caller's own length stays
    assert stt.decode(hello, "en", generate_kwargs=fixed).tokens == 5
