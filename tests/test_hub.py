"""Model resolution: local dirs, LOCAL_MODELS_DIR, the cache, and offline misses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from voice_agent.core.config import get_settings, load_settings
from voice_agent.core.hub import ModelNotFoundError, ensure_model_exists
from voice_agent.testing.paths import REPO_ROOT


def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_local_directory(tmp_path: Path) -> None:
    d = _model_dir(tmp_path / "m")
    found = ensure_model_exists(str(d))
    assert found.source == "local_dir" and found.path == d.resolve()


@pytest.mark.parametrize("layout", ["Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"])
def test_local_models_dir_both_layouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    monkeypatch.setenv("LOCAL_MODELS_DIR", str(tmp_path))
    get_settings.cache_clear()
    d = _model_dir(tmp_path / layout)
    found = ensure_model_exists("Qwen/Qwen2.5-7B-Instruct")
    assert found.source == "local_models_dir" and found.path == d.resolve()


def test_hub_cache_snapshot_is_found_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    repo = home / "hub" / "models--org--tiny"
    snap = repo / "snapshots" / "abc123"
    _model_dir(snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HOME", str(home))
    get_settings.cache_clear()
    found = ensure_model_exists("org/tiny")
    assert found.source == "cache" and found.path == snap


def test_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="missing config.json"):
        ensure_model_exists(str(tmp_path / "empty"))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        ensure_model_exists(str(tmp_path / "nope"))


def test_half_downloaded_shards(tmp_path: Path) -> None:
    d = _model_dir(tmp_path / "m")
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    (d / "model-00001-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="half-downloaded.*00002"):
        ensure_model_exists(str(d))


def test_invalid_hub_id() -> None:
    with pytest.raises(
        ModelNotFoundError, match="neither an existing directory nor a valid hub id"
    ):
        ensure_model_exists("not a valid id!!")


def test_unreadable_local_models_dir_is_reported(tmp_path: Path) -> None:
    """A LOCAL_MODELS_DIR we cannot read is named in the searched list, not silently skipped."""
    locked = tmp_path / "locked"
    locked.mkdir()
    settings = load_settings(
        {"LOCAL_MODELS_DIR": str(locked), "HF_HOME": str(tmp_path / "h"), "HF_HUB_OFFLINE": "1"}
    )
    real_access = os.access
    try:
        os.access = lambda p, mode: False if Path(p) == locked else real_access(p, mode)  # type: ignore[assignment]
        with pytest.raises(ModelNotFoundError) as info:
            ensure_model_exists("org/model", settings)
    finally:
        os.access = real_access  # type: ignore[assignment]
    assert "not readable" in str(info.value)


OFFLINE_MISS = """
import sys, time, socket
def refuse(*a, **k):
    raise AssertionError("network attempt while offline")
socket.socket.connect = refuse
socket.create_connection = refuse
t0 = time.perf_counter()
from voice_agent.core.hub import ensure_model_exists, ModelNotFoundError
try:
    ensure_model_exists("Qwen/Qwen2.5-7B-Instruct")
except ModelNotFoundError as exc:
    print(round(time.perf_counter() - t0, 3))
    print(exc)
    sys.exit(0)
sys.exit(3)
"""


@pytest.mark.parametrize(
    "switch", ["HF_HUB_OFFLINE", "HF_OFFLINE", "HF_FORCE_OFFLINE", "TRANSFORMERS_OFFLINE"]
)
def test_offline_empty_cache_fails_fast_without_network(tmp_path: Path, switch: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("OFFLINE")}
    env.update(
        {
            switch: "1",
            "HF_HOME": str(tmp_path / "empty"),
            "LOCAL_MODELS_DIR": str(tmp_path / "models"),
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_MISS], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    seconds, message = proc.stdout.split("\n", 1)
    assert float(seconds) < 2.0
    assert "python -m voice_agent prefetch" in message
    assert str(tmp_path / "empty" / "hub") in message and str(tmp_path / "models") in message
    assert switch in message
