"""Hardware and bitsandbytes probes, including a real broken native library."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from voice_agent.core.hardware import probe_bitsandbytes, probe_hardware
from voice_agent.testing.paths import REPO_ROOT


def machine_backend() -> str:
    """The backend bitsandbytes picks on this machine (the rule of its `cextension`)."""
    import torch

    if torch.version.hip:
        return "ROCm"
    return "CUDA" if torch.cuda.is_available() else "CPU"


def test_hardware_probe_reports_this_machine() -> None:
    import torch

    hw = probe_hardware()
    assert hw.torch_version and hw.cpu_cores >= 1
    assert 0 < hw.ram_available_bytes <= hw.ram_total_bytes
    assert hw.cuda_available == torch.cuda.is_available() == bool(hw.gpus)
    assert probe_hardware() is hw  # cached


def test_import_is_cheap() -> None:
    """`import voice_agent` (and its config/hub/hardware modules) must not import torch or bitsandbytes."""
    code = (
        "import sys, voice_agent, voice_agent.core.config, voice_agent.core.hub, voice_agent.core.hardware, "
        "voice_agent.core.loading, voice_agent.core.diagnostics\n"
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
    """Guards a probe test that held only on the CPU build: on a CUDA machine bitsandbytes
    must report the CUDA backend and load a libbitsandbytes_cuda* library, on a CPU one
    the CPU backend and libbitsandbytes_cpu."""
    probe = probe_bitsandbytes()
    assert probe.installed and probe.version
    assert probe.usable and probe.native_loaded, probe.diagnosis
    backend = machine_backend()
    assert probe.backend == backend, probe
    library = Path(probe.library or "").name
    prefix = {"CPU": "libbitsandbytes_cpu", "CUDA": "libbitsandbytes_cuda"}.get(
        backend, "libbitsandbytes_rocm"
    )
    assert library.startswith(prefix), (backend, probe.library)
    assert backend in probe.diagnosis


PROBE = "import json; from voice_agent.core.hardware import probe_bitsandbytes; print(json.dumps(probe_bitsandbytes().as_dict()))"


def test_bitsandbytes_probe_detects_missing_native_library(tmp_path: Path) -> None:
    """A copy of bitsandbytes without its libbitsandbytes_*.so: the import succeeds, the probe says why it is unusable.

    Guards an expectation that held only on the CPU build (usable through the pure-PyTorch
    fallback); on a CUDA machine the same copy must be reported unusable.
    """
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
    assert probe["fix"] and probe["library"] is None
    backend = machine_backend()
    assert probe["backend"] == backend, probe
    if backend == "CPU":
        # bitsandbytes 0.50 falls back to pure PyTorch on CPU; the probe says so instead of
        # blocking 4-bit.
        assert probe["usable"] is True and "pure-PyTorch" in probe["diagnosis"]
    else:
        # CUDA (or ROCm) has no such fallback: quantizing is off, and the fix says which
        # library to bring back.
        assert probe["usable"] is False and "pure-PyTorch" not in probe["diagnosis"]
        assert "libbitsandbytes_cuda" in probe["fix"]


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


def test_bitsandbytes_probe_on_cuda_without_its_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the CUDA side of the probe on machines without a GPU: bitsandbytes on CUDA
    whose native library failed to load (its error-raising mock in place) is unusable, with
    the load error and a fix, unlike CPU where the pure-PyTorch fallback still works."""

    class ErrorHandlerMockBNBNativeLibrary:  # what bitsandbytes installs when the load fails
        error_msg = "No compatible CUDA binary found at .../libbitsandbytes_cuda128.so\nmore"

    cextension = types.SimpleNamespace(BNB_BACKEND="CUDA", lib=ErrorHandlerMockBNBNativeLibrary())
    fake = types.ModuleType("bitsandbytes")
    fake.__version__ = "0.50.2"  # type: ignore[attr-defined]
    fake.cextension = cextension  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    monkeypatch.delenv("BNB_CUDA_VERSION", raising=False)
    probe = probe_bitsandbytes.__wrapped__()
    assert probe.backend == "CUDA" and probe.installed and not probe.native_loaded
    assert probe.usable is False and probe.library is None
    assert "No compatible CUDA binary found" in probe.diagnosis
    assert "pure-PyTorch" not in probe.diagnosis and "libbitsandbytes_cuda" in (probe.fix or "")
    # The same failure on CPU keeps 4-bit available (slower kernels).
    cextension.BNB_BACKEND = "CPU"
    assert probe_bitsandbytes.__wrapped__().usable is True
