"""One diagnostics snapshot, rendered by the Diagnostics tab, `GET /health` and `doctor`.

Cheap by design: it reads cached probes and the loader's records and runs no
model. Keys: `ok`, `settings`, `hardware`, `offline`, `bitsandbytes`,
`models`, `versions`, `turns`, and one key per section a lower layer added with
`add_section` (`voice_activity`: the detector in use and why).
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from voice_agent.core.config import OFFLINE_VARIABLES, Settings, configured_models, get_settings

log = logging.getLogger(__name__)

STARTED_AT = time.time()
PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "bitsandbytes",
    "huggingface_hub",
    "gradio",
    "fastapi",
    "uvicorn",
    "numpy",
    "soundfile",
    "av",
    "soxr",
    "safetensors",
    "onnxruntime",
    "silero-vad",
)


# Sections the layers above core add to every snapshot (core cannot import them).
SECTIONS: dict[str, Callable[[], Any]] = {}


def add_section(name: str, info: Callable[[], Any]) -> None:
    """Include `info()` under `name` in every snapshot; `info` must be cheap (no model runs)."""
    SECTIONS[name] = info


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (imports nothing; once per process,
    since reading the metadata costs ~15 ms and /health renders it on every call)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    from voice_agent import __version__

    out["voice_agent"] = __version__
    return out


def offline_info(settings: Settings) -> dict[str, Any]:
    from voice_agent.core.hub import hub_cache_dir

    return {
        "enabled": settings.offline,
        "source": settings.offline_source,
        "variables": {name: os.environ.get(name) for name in OFFLINE_VARIABLES},
        "hf_home": str(settings.hf_home),
        "hub_cache": str(hub_cache_dir(settings)),
        "local_models_dir": str(settings.local_models_dir),
        "offload_folder": str(settings.offload_folder),
    }


def hardware_now() -> dict[str, Any]:
    """The cached hardware probe with memory figures refreshed."""
    from voice_agent.core.hardware import GIB, cuda_free_bytes, probe_hardware, ram_available_bytes

    hw: dict[str, Any] = probe_hardware().as_dict()
    hw["ram_available_bytes"] = ram_available_bytes()
    hw["ram_available_gib"] = round(hw["ram_available_bytes"] / GIB, 2)
    for gpu in hw["gpus"]:
        gpu["free_bytes"] = cuda_free_bytes(gpu["index"])
        gpu["used_bytes"] = gpu["total_bytes"] - gpu["free_bytes"]
        gpu["total_gib"] = round(gpu["total_bytes"] / GIB, 2)
        gpu["free_gib"] = round(gpu["free_bytes"] / GIB, 2)
    return hw


def models_info(
    settings: Settings, models: Any | None, cuda: bool, resolve: bool
) -> dict[str, Any]:
    """Per component: configured reference, and the loader's status and load report when loaded."""
    from voice_agent.core.hub import describe

    configured = configured_models(settings, cuda)
    out: dict[str, Any] = {}
    for component in ("llm", "stt", "tts"):
        entry: dict[str, Any] = {"configured": configured[component]}
        if component == "tts":
            entry["backend"] = configured["tts_backend"]
        if component == "stt":
            entry["backend"] = configured["stt_backend"]
        served = component == "llm" and settings.llm_backend == "openai"
        if served:
            entry["backend"] = "openai"
            entry["server"] = settings.llm_base_url
        if models is not None:
            entry["status"] = models.status.get(component, "pending")
            report = models.reports.get(component)
            entry["report"] = report.as_dict() if report is not None else None
            if models.errors.get(component):
                entry["error"] = models.errors[component]
        if resolve and served:
            # On a server, not on this disk: `doctor` asks the server (llm.openai_compat.probe).
            entry["resolution"] = {
                "ref": configured[component],
                "found": None,
                "source": "openai server",
                "path": settings.llm_base_url,
                "error": "not checked",
            }
        elif resolve:
            entry["resolution"] = describe(configured[component], settings)
        out[component] = entry
    return out


def snapshot(
    models: Any | None = None,
    agent: Any | None = None,
    *,
    settings: Settings | None = None,
    resolve: bool | None = None,
) -> dict[str, Any]:
    """Everything a person needs to see how the models were loaded and why.

    Args:
        models: the cached loader's `LoadedModels`, when models are (being) loaded.
        agent: the `Agent`, for recent turn timings and the tools on offer.
        resolve: also look each configured model up on disk (no download); the
            default does so only when `models` is None (doctor).
    """
    from voice_agent.core.hardware import probe_bitsandbytes

    settings = settings or (models.settings if models is not None else get_settings())
    hw = hardware_now()
    resolve = models is None if resolve is None else resolve
    info = models_info(settings, models, bool(hw["cuda_available"]), resolve)
    if models is not None:
        ok = all(entry.get("status") == "ready" for entry in info.values())
    else:
        ok = all(entry.get("resolution", {}).get("found") for entry in info.values())
    return {
        "ok": ok,
        "uptime_s": round(time.time() - STARTED_AT, 1),
        "settings": settings.public_dict(),
        "hardware": hw,
        "offline": offline_info(settings),
        "bitsandbytes": probe_bitsandbytes().as_dict(),
        "models": info,
        "versions": versions(),
        "turns": agent.recent_timings() if agent is not None else None,
        **{name: info() for name, info in SECTIONS.items()},
        "tools": _tools(agent),
    }


def _tools(agent: Any | None) -> dict[str, Any] | None:
    """The agent's tools and MCP servers (None without an agent, or for one without tools)."""
    describe = getattr(agent, "describe_tools", None)
    if not callable(describe):
        return None
    try:
        tools: dict[str, Any] = describe()
    except Exception as exc:  # a snapshot must not fail on one part
        log.warning("describing the tools failed: %s", exc)
        return {"notes": [f"the tools could not be listed: {type(exc).__name__}: {exc}"]}
    return tools
