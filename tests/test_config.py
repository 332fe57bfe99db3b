"""Settings: defaults, parsing, and errors that name the variable and the accepted values."""

from __future__ import annotations

from pathlib import Path

import pytest

from voice_agent.core.config import (
    VARIABLES,
    Settings,
    SettingsError,
    apply_process_defaults,
    configured_models,
    env_table_markdown,
    is_loopback,
    load_settings,
)


def test_defaults_match_the_seed() -> None:
    s = load_settings({})
    assert s.local_models_dir == Path("models")
    assert s.offload_folder == Path("/tmp/transformers_offload")
    assert (s.server_host, s.server_port) == ("127.0.0.1", 8000)
    assert s.llm_model_name is None and s.prefer_4bit is True
    assert s.whisper_device == "cpu" and s.tts_backend == "auto"
    assert s.max_upload_bytes == 25_000_000
    assert s.offline is False and s.api_key is None


def test_settings_are_frozen() -> None:
    s = load_settings({})
    with pytest.raises(AttributeError):
        s.server_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("MODEL_SERVER_PORT", "abc", "0 to 65535"),
        ("MODEL_SERVER_PORT", "70000", "0 to 65535"),
        ("WHISPER_DEVICE", "gpu7", "auto, cpu, cuda"),
        ("TTS_BACKEND", "espeak", "auto, dia2, dia, piper, vits"),
        ("MODEL_SERVER_PREFER_4BIT", "maybe", "1/true/yes/on"),
        ("MAX_UPLOAD_MB", "-1", "to"),
        ("MODEL_LOADING", "sometimes", "eager, lazy"),
    ],
)
def test_bad_values_name_the_variable_and_choices(name: str, value: str, accepted: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({name: value})
    assert name in str(info.value) and accepted in str(info.value)


def test_prefer_4bit_zero_disables_quantization() -> None:
    assert load_settings({"MODEL_SERVER_PREFER_4BIT": "0"}).prefer_4bit is False


@pytest.mark.parametrize(
    "name", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_OFFLINE", "HF_FORCE_OFFLINE"]
)
@pytest.mark.parametrize("word", ["1", "true", "YES", "on"])
def test_each_offline_switch_turns_offline_on(name: str, word: str) -> None:
    s = load_settings({name: word})
    assert s.offline is True and s.offline_source == name


def test_offline_off_values() -> None:
    assert load_settings({"HF_OFFLINE": "0", "HF_HUB_OFFLINE": "false"}).offline is False


def test_legacy_switch_is_mirrored_for_huggingface_hub_but_reported_as_set() -> None:
    """Regression: after mirroring HF_OFFLINE to HF_HUB_OFFLINE, doctor blamed HF_HUB_OFFLINE."""
    env = {"HF_OFFLINE": "1"}
    apply_process_defaults(env)
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert load_settings(env).offline_source == "HF_OFFLINE"


def test_process_defaults_do_not_override_user_values() -> None:
    env = {"TOKENIZERS_PARALLELISM": "true"}
    apply_process_defaults(env)
    assert env["TOKENIZERS_PARALLELISM"] == "true"
    assert env["PYTORCH_ALLOC_CONF"] == "expandable_segments:True"


def test_transformers_cache_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    from voice_agent.core import config

    config._warned_transformers_cache = False
    with pytest.warns(FutureWarning, match="HF_HOME"):
        apply_process_defaults({"TRANSFORMERS_CACHE": "/old/cache"})
    apply_process_defaults({"TRANSFORMERS_CACHE": "/old/cache"})  # second time: silent
    assert sum("TRANSFORMERS_CACHE" in r.message for r in caplog.records) == 1


def test_api_key_is_masked() -> None:
    s = load_settings({"MODEL_SERVER_API_KEY": "sekrit"})
    assert s.api_key == "sekrit"
    assert s.public_dict()["api_key"] == "***"
    assert "sekrit" not in repr(s)


@pytest.mark.parametrize(
    ("host", "loop"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("192.168.1.4", False),
        ("", False),
    ],
)
def test_loopback_detection(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


def test_machine_dependent_defaults() -> None:
    s = load_settings({})
    cpu, gpu = configured_models(s, False), configured_models(s, True)
    assert cpu["llm"] == "Qwen/Qwen2.5-1.5B-Instruct" and gpu["llm"] == "Qwen/Qwen2.5-7B-Instruct"
    assert (
        cpu["tts_backend"] == "piper"
        and gpu["tts_backend"] == "dia2"
        and gpu["mimi"] == "kyutai/mimi"
    )
    # Whisper stays on the CPU beside a GPU (the seed's choice), with word timings for Dia2;
    # a CPU-only machine gets Moonshine.
    assert cpu["stt"] == "UsefulSensors/moonshine-base"
    assert gpu["stt"] == "openai/whisper-base.en"
    assert (
        configured_models(load_settings({"WHISPER_DEVICE": "auto"}), True)["stt"]
        == "openai/whisper-large-v3-turbo"
    )
    assert (
        configured_models(load_settings({"MODEL_SERVER_MODEL_NAME": "x/y"}), True)["llm"] == "x/y"
    )
    # Regression: doctor/prefetch named the 7B under LLM_DEVICE=cpu while the engine loaded 1.5B.
    on_cpu = configured_models(load_settings({"LLM_DEVICE": "cpu"}), True)
    assert on_cpu["llm"] == "Qwen/Qwen2.5-1.5B-Instruct"


def test_every_settings_field_has_a_documented_variable() -> None:
    table = env_table_markdown()
    for v in VARIABLES:
        assert f"`{v.name}`" in table
    assert len(Settings.__dataclass_fields__) >= 25


def test_ctranslate2_asked_for_keeps_whisper_as_the_default() -> None:
    """STT_BACKEND=ctranslate2 runs Whisper only, so the CPU-only default stays Whisper."""
    out = configured_models(load_settings({"STT_BACKEND": "ctranslate2"}), cuda_available=False)
    assert out["stt"] == "openai/whisper-base.en" and out["stt_backend"] == "ctranslate2"
    auto = configured_models(load_settings({}), cuda_available=False)
    assert auto["stt"] == "UsefulSensors/moonshine-base" and auto["stt_backend"] == "moonshine"
