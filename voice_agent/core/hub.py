"""Offline-aware model resolution: local dir -> LOCAL_MODELS_DIR -> HF cache -> hub.

`ensure_model_exists(ref)` is the one door every engine goes through. It says
where the model was found (`ResolvedModel.source`), and when the model is
nowhere it raises `ModelNotFoundError` listing every place searched and the
command that fixes it. Offline (any of HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE,
HF_OFFLINE, HF_FORCE_OFFLINE), nothing here touches the network.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from voice_agent.core.config import Settings, get_settings
from voice_agent.core.errors import ModelLoadError

log = logging.getLogger(__name__)

Source = Literal["local_dir", "local_models_dir", "cache", "hub"]
FIX_COMMAND = "python -m voice_agent prefetch"
# org/name, optionally followed by a folder inside that repository
# ("rhasspy/piper-voices/en/en_US/lessac/medium": one voice of a many-voice repo).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}(/[A-Za-z0-9][\w.\-]{0,95})*$")
# Files a download needs; skips duplicate .bin/.pt/.onnx weights when safetensors exist.
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py"]
# A folder inside a repo is fetched alone, with the files a voice needs (ONNX weights too).
SUBFOLDER_PATTERNS = ["*.onnx", "*.json", "*.txt", "*.md", "MODEL_CARD"]
HUB_TIMEOUT_S = "10"


def split_ref(ref: str) -> tuple[str, str]:
    """(repo id, folder inside it or "") of a hub reference: "org/name/sub/dir" -> ("org/name", "sub/dir")."""
    parts = ref.split("/")
    return "/".join(parts[:2]), "/".join(parts[2:])


class ModelNotFoundError(ModelLoadError):
    """A model reference could not be resolved anywhere; `searched` says where we looked."""

    def __init__(self, message: str, searched: list[str] | None = None) -> None:
        super().__init__(message)
        self.searched = searched or []


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference was found."""

    ref: str
    path: Path
    source: Source
    searched: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"ref": self.ref, "path": str(self.path), "source": self.source}


def hub_cache_dir(settings: Settings | None = None) -> Path:
    """The hub cache folder: HF_HUB_CACHE, else HF_HOME/hub."""
    settings = settings or get_settings()
    explicit = os.environ.get("HF_HUB_CACHE")
    return Path(os.path.expanduser(explicit)) if explicit else settings.hf_home / "hub"


def _check_model_dir(path: Path, ref: str, required: tuple[str, ...]) -> None:
    """Raise a specific error if `path` is not a usable model directory."""
    if not os.access(path, os.R_OK | os.X_OK):
        raise ModelNotFoundError(
            f"Model directory {path} for {ref!r} is not readable (check its permissions)."
        )
    missing = [name for name in required if not (path / name).is_file()]
    if missing:
        raise ModelNotFoundError(
            f"{path} (for {ref!r}) is not a complete model directory: missing {', '.join(missing)}. "
            f"Copy the whole model folder there, or run `{FIX_COMMAND}` while online."
        )
    incomplete = _missing_shards(path)
    if incomplete:
        raise ModelNotFoundError(
            f"{path} (for {ref!r}) is half-downloaded: missing weight files {', '.join(incomplete[:3])}. "
            f"Run `{FIX_COMMAND}` while online to finish the download."
        )


def _missing_shards(path: Path) -> list[str]:
    """Weight shards named by a safetensors index but absent on disk."""
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        return []
    import json

    try:
        names = set(json.loads(index.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError):
        return [index.name + " (unreadable)"]
    return sorted(name for name in names if not (path / name).is_file())


def _local_candidates(ref: str, settings: Settings) -> list[Path]:
    base = settings.local_models_dir
    names = [base / ref]
    if "/" in ref:
        names.append(base / ref.split("/")[-1])
    return names


def ensure_model_exists(
    ref: str,
    settings: Settings | None = None,
    *,
    required_files: tuple[str, ...] = ("config.json",),
    download: bool = True,
) -> ResolvedModel:
    """Resolve a model reference to a local directory, downloading only when online.

    Args:
        ref: a local directory, a name under LOCAL_MODELS_DIR, or a hub id.
        settings: defaults to the process settings.
        required_files: files that must exist for the directory to count.
        download: when False, never download even if online (used by `doctor`).

    Raises:
        ModelNotFoundError: the model is nowhere; the message lists every place
            searched and the command that fixes it.
    """
    settings = settings or get_settings()
    ref = ref.strip()
    if not ref:
        raise ModelNotFoundError(
            "Empty model name; set it to a hub id (org/name) or a local directory."
        )
    searched: list[str] = []

    # 1. An explicit directory.
    as_path = Path(os.path.expanduser(ref))
    looks_like_path = ref.startswith((".", "/", "~")) or as_path.is_dir()
    if looks_like_path:
        searched.append(f"directory {as_path}")
        if as_path.is_dir():
            _check_model_dir(as_path, ref, required_files)
            return ResolvedModel(ref, as_path.resolve(), "local_dir", searched)
        if not HUB_ID.match(ref):
            raise ModelNotFoundError(f"Model directory {as_path} does not exist.", searched)

    # 2. LOCAL_MODELS_DIR/NAME and LOCAL_MODELS_DIR/ORG/NAME.
    base = settings.local_models_dir
    if base.exists() and not os.access(base, os.R_OK | os.X_OK):
        log.warning("LOCAL_MODELS_DIR=%s is not readable; skipping it.", base)
        searched.append(f"LOCAL_MODELS_DIR {base} (not readable)")
    else:
        for candidate in _local_candidates(ref, settings):
            searched.append(f"LOCAL_MODELS_DIR entry {candidate}")
            if candidate.is_dir():
                _check_model_dir(candidate, ref, required_files)
                return ResolvedModel(ref, candidate.resolve(), "local_models_dir", searched)

    if not HUB_ID.match(ref):
        raise ModelNotFoundError(
            f"{ref!r} is neither an existing directory nor a valid hub id (org/name). Searched: "
            + "; ".join(searched),
            searched,
        )

    # 3. The hub cache (never touches the network).
    cache = hub_cache_dir(settings)
    searched.append(f"Hugging Face cache {cache}")
    cached = _from_cache(ref, cache)
    if cached is not None and cached.is_dir():
        _check_model_dir(cached, ref, required_files)
        return ResolvedModel(ref, cached, "cache", searched)

    # 4. The hub itself, only when online.
    if settings.offline or not download:
        why = (
            f"offline mode is on ({settings.offline_source}=1)"
            if settings.offline
            else "it has not been downloaded yet"
        )
        raise ModelNotFoundError(
            f"Model {ref!r} was not found locally and {why}. Searched: "
            + "; ".join(searched)
            + f". Fix: run `{FIX_COMMAND}` while online (or put the model in "
            f"{base}/{ref if split_ref(ref)[1] else ref.split('/')[-1]}), then start again.",
            searched,
        )
    searched.append(f"Hugging Face Hub ({ref})")
    path = download_model(ref, settings, searched=searched)
    _check_model_dir(path, ref, required_files)
    return ResolvedModel(ref, path, "hub", searched)


def _from_cache(ref: str, cache: Path) -> Path | None:
    """The cached snapshot of `ref` (its folder, for a ref inside a repo), or None. Local files only."""
    repo, sub = split_ref(ref)
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    if not repo_dir.is_dir():
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo, cache_dir=str(cache), local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return snapshot / sub if sub else snapshot


def download_model(
    ref: str, settings: Settings | None = None, *, searched: list[str] | None = None
) -> Path:
    """Download `ref` into the hub cache with progress bars; a clear error on failure."""
    settings = settings or get_settings()
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", HUB_TIMEOUT_S)
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", HUB_TIMEOUT_S)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    log.info("Downloading %s into %s", ref, hub_cache_dir(settings))
    where = "; ".join(searched or [])
    repo, sub = split_ref(ref)
    patterns = [f"{sub}/{p}" for p in SUBFOLDER_PATTERNS] if sub else DOWNLOAD_PATTERNS
    try:
        snapshot = Path(
            snapshot_download(repo, cache_dir=str(hub_cache_dir(settings)), allow_patterns=patterns)
        )
        return snapshot / sub if sub else snapshot
    except GatedRepoError:
        raise ModelNotFoundError(
            f"{ref!r} is gated on the hub: accept its licence on its page and log in "
            "(`huggingface-cli login`), then run `python -m voice_agent prefetch`.",
            searched,
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"No model named {ref!r} on the Hugging Face Hub (check the spelling). Searched: {where}.",
            searched,
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ModelNotFoundError(
            f"Could not download {ref!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            f"Searched: {where}. Check the network, or set HF_HUB_OFFLINE=1 and put the model in "
            f"{settings.local_models_dir}. Fix: run `{FIX_COMMAND}` while online.",
            searched,
        ) from None


def describe(ref: str | None, settings: Settings | None = None) -> dict[str, object]:
    """Resolution result for doctor/diagnostics: never downloads, never raises."""
    if not ref:
        return {"ref": None, "found": False, "error": "not configured"}
    try:
        found = ensure_model_exists(ref, settings, download=False)
    except ModelNotFoundError as exc:
        return {"ref": ref, "found": False, "error": str(exc)}
    return {"found": True, **found.as_dict()}
