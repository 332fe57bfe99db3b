"""The command line: help, doctor, prefetch offline, bad settings, the bench harness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from voice_agent.testing.paths import REPO_ROOT


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = env or {}
    base = dict(os.environ)
    if any(k.endswith("OFFLINE") for k in env):  # the test names its own offline switch
        base = {k: v for k, v in base.items() if not k.endswith("OFFLINE")}
    full_env = {**base, "PYTHONPATH": str(REPO_ROOT), **env}
    return subprocess.run(
        [sys.executable, "-m", "voice_agent", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def test_help_lists_every_command() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for name in (
        "app",
        "serve",
        "doctor",
        "prefetch",
        "transcribe",
        "speak",
        "chat",
        "bench",
        "make-tiny-models",
    ):
        assert name in out.stdout


def test_unknown_command() -> None:
    out = run_cli("frobnicate")
    assert out.returncode == 2 and "unknown command" in out.stderr


def test_doctor_json_has_the_contract_keys(tmp_path: Path) -> None:
    out = run_cli("doctor", "--json", env={"HF_HOME": str(tmp_path), "HF_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert {"settings", "hardware", "offline", "bitsandbytes", "models"} <= set(snap)
    assert snap["offline"]["enabled"] is True and snap["offline"]["source"] == "HF_OFFLINE"
    llm = snap["models"]["llm"]
    assert llm["configured"] and llm["resolution"]["found"] is False
    assert "prefetch" in llm["resolution"]["error"]
    assert snap["bitsandbytes"]["installed"] is True


def test_doctor_text_names_what_is_missing(tmp_path: Path, tiny_models: Path) -> None:
    out = run_cli(
        "doctor",
        env={
            "HF_HOME": str(tmp_path),
            "HF_HUB_OFFLINE": "1",
            "MODEL_SERVER_MODEL_NAME": str(tiny_models / "llm"),
        },
    )
    assert out.returncode == 0, out.stderr
    assert "offline mode: ON (set by HF_HUB_OFFLINE)" in out.stdout
    assert f"llm: {tiny_models / 'llm'} -> found (local_dir" in out.stdout
    assert "stt [moonshine]: UsefulSensors/moonshine-base -> MISSING" in out.stdout


def test_bad_setting_is_one_clear_line() -> None:
    out = run_cli("doctor", env={"MODEL_SERVER_PORT": "abc"})
    assert out.returncode == 2
    assert "MODEL_SERVER_PORT='abc'" in out.stderr and "0 to 65535" in out.stderr
    assert "Traceback" not in out.stderr


def test_prefetch_offline_explains_instead_of_downloading(tmp_path: Path) -> None:
    out = run_cli("prefetch", env={"HF_HOME": str(tmp_path), "HF_FORCE_OFFLINE": "1"})
    assert out.returncode == 1
    assert "Offline mode is on (HF_FORCE_OFFLINE=1)" in out.stdout and "missing: " in out.stdout


def test_env_table_lists_every_variable() -> None:
    out = run_cli("doctor", "--env-table")
    assert out.returncode == 0
    for name in (
        "HF_HOME",
        "LOCAL_MODELS_DIR",
        "OFFLOAD_FOLDER",
        "MODEL_SERVER_MODEL_NAME",
        "WHISPER_DEVICE",
        "HF_FORCE_OFFLINE",
        "PYTORCH_ALLOC_CONF",
        "TOKENIZERS_PARALLELISM",
        "TTS_BACKEND",
        "MODEL_SERVER_API_KEY",
    ):
        assert f"`{name}`" in out.stdout


def test_bench_hub_section_json() -> None:
    out = run_cli("bench", "--only", "hub", "--quick", "--json", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["machine"]["cores"] >= 1
    rows = {row["what"]: row["median_s"] for row in doc["hub"]["rows"]}
    assert rows["offline miss (empty cache) -> ModelNotFoundError"] < 2.0
    assert doc["hub"]["peak_rss_mb"] > 0
