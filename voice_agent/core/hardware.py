"""Hardware and bitsandbytes probes: asked once, cached, cheap to ask again.

Neither probe runs at import time. The bitsandbytes probe in particular is
lazy: importing bitsandbytes imports torch and dlopens its native library.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

GIB = 1024**3


@dataclass(frozen=True)
class GPUInfo:
    index: int
    name: str
    compute_capability: str
    total_bytes: int
    free_bytes: int
    bf16: bool


@dataclass(frozen=True)
class HardwareInfo:
    """What this machine offers. Memory figures in bytes."""

    torch_version: str | None
    cuda_available: bool
    cuda_version: str | None
    gpus: list[GPUInfo]
    cpu_cores: int
    ram_total_bytes: int
    ram_available_bytes: int
    cpu_bf16: bool
    mps_available: bool = False
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["ram_total_gib"] = round(self.ram_total_bytes / GIB, 2)
        out["ram_available_gib"] = round(self.ram_available_bytes / GIB, 2)
        return out


def ram_available_bytes() -> int:
    """Available RAM now (not cached: it changes as models load)."""
    import psutil

    return int(psutil.virtual_memory().available)


def cuda_free_bytes(index: int = 0) -> int:
    """Free memory on one CUDA device now, or 0 without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return 0
    free, _total = torch.cuda.mem_get_info(index)
    return int(free)


def _cpu_supports_bf16() -> bool:
    """bf16 matmuls are fast only with AVX512-BF16 or AMX; elsewhere they are emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.lru_cache(maxsize=1)
def probe_hardware() -> HardwareInfo:
    """Probe torch, CUDA devices, CPU and RAM once."""
    import psutil

    notes: list[str] = []
    try:
        import torch
    except ImportError:
        vm = psutil.virtual_memory()
        return HardwareInfo(
            None,
            False,
            None,
            [],
            os.cpu_count() or 1,
            vm.total,
            vm.available,
            False,
            notes=["torch is not installed"],
        )
    gpus: list[GPUInfo] = []
    cuda = torch.cuda.is_available()
    if cuda:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            gpus.append(
                GPUInfo(
                    i,
                    props.name,
                    f"{props.major}.{props.minor}",
                    int(total),
                    int(free),
                    bool(props.major >= 8),
                )
            )
    elif torch.version.cuda is None:
        notes.append("torch is a CPU-only build")
    else:
        notes.append("torch has CUDA support but no GPU is visible (driver, CUDA_VISIBLE_DEVICES?)")
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    vm = psutil.virtual_memory()
    return HardwareInfo(
        torch_version=torch.__version__,
        cuda_available=cuda,
        cuda_version=torch.version.cuda,
        gpus=gpus,
        cpu_cores=os.cpu_count() or 1,
        ram_total_bytes=int(vm.total),
        ram_available_bytes=int(vm.available),
        cpu_bf16=_cpu_supports_bf16(),
        mps_available=mps,
        notes=notes,
    )


@dataclass(frozen=True)
class BnbProbe:
    """Whether bitsandbytes can actually quantize here, and if not, why."""

    installed: bool
    version: str | None
    backend: str | None  # "cuda", "cpu", ...
    native_loaded: bool
    library: str | None
    diagnosis: str
    fix: str | None

    @property
    def usable(self) -> bool:
        # On CPU/XPU bitsandbytes 0.50 runs its ops in pure PyTorch when the
        # native library is missing (slower, still correct); CUDA needs the library.
        cpu_fallback = (self.backend or "").upper() in ("CPU", "XPU")
        return self.installed and (self.native_loaded or cpu_fallback)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "usable": self.usable}


@functools.lru_cache(maxsize=1)
def probe_bitsandbytes() -> BnbProbe:
    """Import bitsandbytes once and check that its native library really loaded.

    When the native library fails to load, bitsandbytes keeps working at import
    time but substitutes an `ErrorHandlerMockBNBNativeLibrary` whose every call
    raises; we detect that object rather than trusting the import.
    """
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        return BnbProbe(
            False,
            None,
            None,
            False,
            None,
            f"bitsandbytes is not installed ({exc})",
            "pip install 'bitsandbytes>=0.50'",
        )
    except Exception as exc:  # a broken install can raise anything at import
        return BnbProbe(
            True,
            None,
            None,
            False,
            None,
            f"importing bitsandbytes failed: {type(exc).__name__}: {exc}",
            "reinstall bitsandbytes matching your torch/CUDA build",
        )
    version = getattr(bnb, "__version__", None)
    try:
        from bitsandbytes import cextension
    except Exception as exc:
        return BnbProbe(
            True,
            version,
            None,
            False,
            None,
            f"bitsandbytes.cextension failed: {exc}",
            "reinstall bitsandbytes",
        )
    lib = getattr(cextension, "lib", None)
    backend = getattr(cextension, "BNB_BACKEND", None)
    if backend is None:
        import torch

        backend = "cuda" if torch.cuda.is_available() else "cpu"
    mock = lib is None or "Mock" in type(lib).__name__ or "Error" in type(lib).__name__
    lib_path = None
    native = getattr(lib, "_lib", None) if lib is not None else None
    if native is not None:
        lib_path = getattr(native, "_name", None)
    if mock:
        error = getattr(lib, "error_msg", None) or getattr(lib, "formatted_error", None) or ""
        cuda_override = os.environ.get("BNB_CUDA_VERSION")
        fix = (
            f"BNB_CUDA_VERSION={cuda_override} asks for a libbitsandbytes_cuda{cuda_override}.so that is "
            "missing; unset BNB_CUDA_VERSION or install that CUDA runtime."
            if cuda_override
            else "reinstall bitsandbytes for your platform (`pip install --force-reinstall 'bitsandbytes>=0.50'`); "
            "on CUDA make sure the torch build's CUDA version has a matching libbitsandbytes_cuda*.so"
        )
        first = (
            str(error).strip().splitlines()[0] if str(error).strip() else "native library missing"
        )
        if str(backend).upper() in ("CPU", "XPU"):
            return BnbProbe(
                True,
                version,
                backend,
                False,
                None,
                f"bitsandbytes {version}: native library did not load; on {backend} it falls back "
                "to pure-PyTorch kernels (quantized models work, more slowly)",
                fix,
            )
        return BnbProbe(
            True,
            version,
            backend,
            False,
            None,
            f"bitsandbytes {version} is installed but its native library did not load: {first}",
            fix,
        )
    return BnbProbe(
        True,
        version,
        backend,
        True,
        lib_path,
        f"bitsandbytes {version} loaded its native library ({backend}).",
        None,
    )
