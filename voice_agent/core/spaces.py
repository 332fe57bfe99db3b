"""Hugging Face Spaces: detection, and ZeroGPU's `spaces.GPU` as a no-op everywhere else.

On ZeroGPU hardware a GPU is attached to the process only inside functions
decorated with `spaces.GPU`; the package exists only there (and on machines
where someone installed it), so this module imports it lazily and only when
`SPACES_ZERO_GPU` says the process really runs on ZeroGPU.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# ZeroGPU gives each call at most this long on the GPU unless told otherwise;
# one spoken turn (transcribe, reply, speak) fits comfortably.
DEFAULT_GPU_SECONDS = 120


def in_space(env: Mapping[str, str] | None = None) -> bool:
    """True inside a Hugging Face Space (the platform sets SPACE_ID)."""
    environ = os.environ if env is None else env
    return bool(environ.get("SPACE_ID"))


def on_zero_gpu(env: Mapping[str, str] | None = None) -> bool:
    """True when `spaces` is importable and the platform says this is ZeroGPU hardware."""
    environ = os.environ if env is None else env
    if environ.get("SPACES_ZERO_GPU", "").strip().lower() not in ("1", "true", "yes", "on"):
        return False
    return importlib.util.find_spec("spaces") is not None


def gpu(fn: F | None = None, *, duration: int = DEFAULT_GPU_SECONDS) -> Any:
    """Decorate GPU work: `spaces.GPU(duration=...)` on ZeroGPU, the function unchanged elsewhere.

    Usable bare (`@gpu`) or with arguments (`@gpu(duration=60)`). Generators
    are supported by `spaces.GPU` itself, so streaming handlers may use it too.
    """

    def decorate(func: F) -> F:
        if not on_zero_gpu():
            return func
        import spaces  # only present on Spaces hardware

        log.info("ZeroGPU: %s runs under spaces.GPU(duration=%d)", func.__qualname__, duration)
        return cast(F, spaces.GPU(duration=duration)(func))

    return decorate(fn) if fn is not None else decorate
