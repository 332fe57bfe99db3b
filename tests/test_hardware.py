"""Hardware and bitsandbytes probes, including a real broken native library."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from voice_agent.hardware import probe_bitsandbytes, probe_hardware
from voice_agent.testing.paths import REPO_ROOT


def test_hardware_probe_reports_this_machine() -> None:
    hw = probe_hardware()
    assert hw.torch_version and hw.cpu_cores >= 1
    assert 0 < hw.ram_available_bytes <= hw.ram_total_bytes
    assert hw.cuda_available == bool(hw.gpus)
    assert probe_hardware() is hw  # cached


def test_import_is_cheap() -> None:
    """`import voice_agent` (and its config/hub/hardware modules) must not import torch or bitsandbytes."""
    code = (
        "import sys, voice_agent, voice_agent.config, voice_agent.hub, voice_agent.hardware, "
        "voice_agent.loading, voice_agent.diagnostics\n"
        "print(sorted(m for m in ('torch','bitsandbytes','transformers','gradio') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    ).stdout
    assert out.strip() == "[]"


def test_bitsandbytes_probe_here() -> None:
    probe = probe_bitsandbytes()
    assert probe.installed and probe.version
    assert probe.usable, probe.diagnosis
    assert probe.library and Path(probe.library).name.startswith("libbitsandbytes")


PROBE = "import json; from voice_agent.hardware import probe_bitsandbytes; print(json.dumps(probe_bitsandbytes().as_dict()))"


def test_bitsandbytes_probe_detects_missing_native_library(tmp_path: Path) -> None:
    """A copy of bitsandbytes without its libbitsandbytes_*.so: the import succeeds, the probe says why it is unusable."""
    import bitsandbytes

    source = Path(bitsandbytes.__file__).parent
    broken = tmp_path / "site" / "bitsandbytes"
    shutil.copytree(
        source, broken, ignore=shutil.ignore_patterns("*.so", "*.dylib", "*.dll", "__pycache__")
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO_ROOT}"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["installed"] is True and probe["native_loaded"] is False
    assert "native library did not load" in probe["diagnosis"]
    assert probe["fix"]
    # On CPU bitsandbytes 0.50 falls back to pure PyTorch; the probe says so instead of blocking 4-bit.
    assert probe["backend"].upper() == "CPU" and probe["usable"] is True
    assert "pure-PyTorch" in probe["diagnosis"]


def test_bitsandbytes_probe_names_bnb_cuda_version_override(tmp_path: Path) -> None:
    import bitsandbytes

    source = Path(bitsandbytes.__file__).parent
    broken = tmp_path / "site" / "bitsandbytes"
    shutil.copytree(source, broken, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO_ROOT}",
        "BNB_CUDA_VERSION": "118",
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["native_loaded"] is False and "BNB_CUDA_VERSION=118" in probe["fix"]


def test_bitsandbytes_probe_when_import_breaks(tmp_path: Path) -> None:
    """A bitsandbytes whose import raises (a broken install) is reported unusable with the error."""
    import bitsandbytes

    broken = tmp_path / "site" / "bitsandbytes"
    shutil.copytree(
        Path(bitsandbytes.__file__).parent, broken, ignore=shutil.ignore_patterns("__pycache__")
    )
    (broken / "cextension.py").write_text(
        "raise OSError('libbitsandbytes_cuda128.so: cannot open shared object file')\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO_ROOT}"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["usable"] is False
    assert "cannot open shared object file" in probe["diagnosis"] and probe["fix"]


def test_bitsandbytes_probe_when_not_installed(tmp_path: Path) -> None:
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nclass _Block:\n    def find_spec(self, name, *a):\n"
        "        if name == 'bitsandbytes':\n            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{REPO_ROOT}"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=60
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["installed"] is False and "pip install" in probe["fix"]
