"""`python -m voice_agent speak TEXT -o OUT.wav` with each backend on the tiny checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile

from voice_agent.cli.speak import main
from voice_agent.testing.paths import REPO_ROOT

TEXT = "Hello there, it is 3:45 pm."


@pytest.fixture(scope="module")
def tiny_dia(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voice_agent.testing.tiny_vits import build_dia

    return build_dia(tmp_path_factory.mktemp("tiny-dia-cli") / "dia")


@pytest.mark.parametrize(("backend", "rate"), [("vits", 16_000), ("dia2", 24_000), ("dia", 44_100)])
def test_speak_writes_a_valid_wav(
    backend: str, rate: int, tiny_models: Path, tiny_dia: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("TTS_DEVICE", "cpu")
    model = tiny_dia if backend == "dia" else tiny_models / backend
    out = tmp_path / "out" / "speech.wav"
    assert main([TEXT, "-o", str(out), "--backend", backend, "--model", str(model)]) == 0
    info = soundfile.info(str(out))
    assert (info.format, info.subtype, info.channels, info.samplerate) == ("WAV", "PCM_16", 1, rate)
    assert info.frames > 0


def test_speak_bad_input_exits_2(tiny_models: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TTS_DEVICE", "cpu")
    out = tmp_path / "x.wav"
    code = main(["  ", "-o", str(out), "--backend", "vits", "--model", str(tiny_models / "vits")])
    assert code == 2 and not out.exists()
    assert "error: The text is empty" in capsys.readouterr().err
    code = main(
        ["😀 ```x```", "-o", str(out), "--backend", "vits", "--model", str(tiny_models / "vits")]
    )
    assert code == 2 and not out.exists()
    assert "error: Nothing speakable" in capsys.readouterr().err


def test_speak_load_failure_exits_1(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TTS_DEVICE", "cpu")
    code = main(
        [
            "Hi.",
            "-o",
            str(tmp_path / "x.wav"),
            "--backend",
            "vits",
            "--model",
            str(tmp_path / "none"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "error: Could not load tts model" in err and "Traceback" not in err


def test_speak_through_the_module_entry_point(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.wav"
    env = {
        **os.environ,
        "TTS_BACKEND": "vits",
        "TTS_MODEL_NAME": str(tiny_models / "vits"),
        "TTS_DEVICE": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "voice_agent", "speak", TEXT, "-o", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and soundfile.info(str(out)).frames > 0
