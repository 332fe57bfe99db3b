"""Bad input and bad checkpoints each get a specific error, never a stack trace from deep inside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tests.dia2_helpers import case_config, cases, fixture_dir, runtime
from voice_agent.core.errors import InputError, ModelLoadError
from voice_agent.tts.dia2 import (
    CheckpointMismatchError,
    ContextOverflowError,
    Dia2Runtime,
    EmptyScriptError,
    InvalidSettingsError,
    NoSpeechError,
    NotADia2CheckpointError,
    PrefixError,
    TextFeed,
    UnknownTagError,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ("", EmptyScriptError),
        ("   \n\t", EmptyScriptError),
        ("[S1] [S2]", NoSpeechError),
        ('[S1] <break time="1s"/>', NoSpeechError),
        ("[S3] Hello", UnknownTagError),
        ("[S1] <laugh> Hello", UnknownTagError),
        ('[S1] Hello <break time="soon"/> there', UnknownTagError),
    ],
)
def test_bad_scripts_are_input_errors(script: str, error: type) -> None:
    with pytest.raises(error) as info:
        runtime().generate(script)
    assert isinstance(info.value, InputError) and info.value.status_code in (400, 413)


def test_empty_text_feed_is_an_input_error() -> None:
    feed = TextFeed()
    feed.close()
    with pytest.raises(EmptyScriptError):
        list(runtime().stream(feed))


def test_script_that_cannot_fit_is_refused_before_generating() -> None:
    script = cases()["c6_context_cap"]["script"]
    with pytest.raises(ContextOverflowError) as info:
        runtime().generate(script, case_config("c6_context_cap", on_context_overflow="error"))
    err = info.value
    assert err.result is None and err.status_code == 413
    assert 0 < err.words_spoken < err.words_total == 45
    assert (
        err.unspoken_text.split()
        == [w for w in script.split() if w not in ("[S1]", "[S2]")][err.words_spoken :]
    )


def test_context_cap_reached_while_speaking_reports_what_was_spoken() -> None:
    words = cases()["c6_context_cap"]["script"].split()[:36]
    with pytest.raises(ContextOverflowError) as info:
        runtime().generate(" ".join(words), case_config("c1_hello", on_context_overflow="error"))
    err = info.value
    assert err.result is not None and err.result.stopped_by == "max_context"
    assert err.words_spoken == 27 and err.words_total == 32
    assert err.unspoken_text.startswith("are you")
    assert "27 of 32 words were spoken" in str(err)


def test_invalid_settings() -> None:
    with pytest.raises(InvalidSettingsError):
        runtime().generate("[S1] Hi there.", case_config("c1_hello", cfg_scale=0.0))


def test_unreadable_voice_prefix(tmp_path: Path) -> None:
    bad = tmp_path / "voice.wav"
    bad.write_bytes(b"not a wav")
    with pytest.raises(PrefixError):
        runtime().prefix(bad, word_timer=lambda audio, rate: [])


def test_prefix_without_words() -> None:
    with pytest.raises(PrefixError, match="No words"):
        runtime().prefix(fixture_dir() / "prefix_s2.wav", word_timer=lambda audio, rate: [])


def _copy_checkpoint(tmp_path: Path) -> Path:
    target = tmp_path / "dia2"
    shutil.copytree(fixture_dir() / "dia2", target)
    for name in ("tokenizer", "mimi"):
        (tmp_path / name).symlink_to(fixture_dir() / name)
    for path in target.iterdir():
        path.chmod(0o644)
    target.chmod(0o755)
    return target


def test_config_and_weights_disagree_names_the_tensor(tmp_path: Path) -> None:
    target = _copy_checkpoint(tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["model"]["decoder"]["n_hidden"] = 96
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointMismatchError, match=r"transformer\.layers\.0\.mlp\.wi\.weight"
    ) as info:
        Dia2Runtime.from_pretrained(str(target))
    assert info.value.tensor == "transformer.layers.0.mlp.wi.weight"
    assert isinstance(info.value, ModelLoadError)


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    target = _copy_checkpoint(tmp_path)
    tensors = load_file(target / "model.safetensors")
    del tensors["depformer.logits.3.weight"]
    save_file(tensors, target / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"depformer\.logits\.3\.weight"):
        Dia2Runtime.from_pretrained(str(target))


@pytest.mark.parametrize("folder", ["mimi", "tokenizer", "empty"])
def test_non_dia2_directory(tmp_path: Path, folder: str) -> None:
    path = fixture_dir() / folder
    if folder == "empty":
        path = tmp_path / "empty"
        path.mkdir()
    with pytest.raises(NotADia2CheckpointError):
        Dia2Runtime.from_pretrained(str(path))


def test_loads_from_tiny_models_bundle(tmp_path: Path) -> None:
    """The TTS engine points at `make-tiny-models`' dia2/ folder (dia2/ tokenizer/ mimi/ inside)."""
    from voice_agent.testing.tiny import build_dia2

    bundle = build_dia2(tmp_path / "dia2")
    rt = Dia2Runtime.from_pretrained(str(bundle))
    assert rt.sample_rate == 24_000 and rt.max_context_steps == 120 and rt.fast_path == "eager"
    result = rt.generate("[S1] Hello there.", case_config("c1_hello"))
    assert result.stopped_by == "eos" and result.audio_tokens.shape == (6, 21)
