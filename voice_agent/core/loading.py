"""The loading chain as data: strategies tried in order, one `Attempt` record each.

Every engine (LLM, STT, TTS) describes its ways of loading as a list of
`Strategy` values and hands them to `run_chain`, which plans (skips what cannot
fit, with the reason), tries, records, frees memory after a failure and moves
on. The resulting `LoadReport` is what Diagnostics, `/health` and `doctor` show.
"""

from __future__ import annotations

import gc
import json
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from voice_agent.core.errors import ModelLoadError, VoiceAgentError

log = logging.getLogger(__name__)

GIB = 1024**3
T = TypeVar("T")
Outcome = Literal["chosen", "failed", "skipped"]

# Bytes per parameter by storage kind; 4-bit NF4 stores 0.5 B plus absmax and
# double-quant constants (about 0.53 B/param measured on Qwen2 layers).
BYTES_PER_PARAM = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "int8": 1.06, "nf4": 0.56}
# Activations, KV cache and allocator slack on top of the weights.
OVERHEAD_FACTOR = 1.15
OVERHEAD_BYTES = int(0.4 * GIB)


@dataclass
class Attempt:
    """One strategy tried (or skipped): what, where, how long, and why it ended so."""

    strategy: str
    device: str
    dtype: str
    quantization: str | None
    outcome: Outcome
    seconds: float = 0.0
    needed_bytes: int | None = None
    free_bytes: int | None = None
    memory_after_bytes: int | None = None
    error_type: str | None = None
    error: str | None = None
    reason: str | None = None

    def line(self) -> str:
        """One human line, e.g. 'skipped cuda-4bit: needs 5.6 GiB, 3.1 GiB free'."""
        what = f"{self.outcome} {self.strategy} ({self.device}, {self.dtype}"
        what += f", {self.quantization})" if self.quantization else ")"
        if self.outcome == "chosen":
            return f"{what} in {self.seconds:.1f} s"
        detail = self.reason or self.error
        if self.outcome == "failed" and self.reason and self.error:
            detail = f"{self.reason} ({self.error_type}: {self.error})"
        return f"{what}: {detail}"


@dataclass
class LoadReport:
    """All attempts for one model; `chosen` is the one that loaded, if any."""

    component: str  # "llm" | "stt" | "tts"
    model_ref: str | None
    resolved_path: str | None = None
    source: str | None = None  # where the model was found (hub.ResolvedModel.source)
    attempts: list[Attempt] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. why this default model
    total_seconds: float = 0.0

    @property
    def chosen(self) -> Attempt | None:
        return next((a for a in self.attempts if a.outcome == "chosen"), None)

    @property
    def ok(self) -> bool:
        return self.chosen is not None

    def summary(self) -> str:
        chosen = self.chosen
        if chosen is None:
            last = self.attempts[-1].line() if self.attempts else "no strategy was tried"
            return f"{self.component}: not loaded ({last})"
        quant = f", {chosen.quantization}" if chosen.quantization else ""
        return f"{self.component}: {chosen.strategy} on {chosen.device} ({chosen.dtype}{quant})"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        chosen = self.chosen
        out["ok"] = self.ok
        out["summary"] = self.summary()
        out["chosen"] = asdict(chosen) if chosen else None
        return out


@dataclass(frozen=True)
class Strategy(Generic[T]):
    """One way of loading a model.

    `load` does the work and returns the engine's model object; `needed_bytes`
    and `free_bytes` (both optional) let the planner skip it before trying;
    `unavailable` returns a reason to skip (e.g. bitsandbytes broken) or None.
    """

    name: str
    device: str
    dtype: str
    load: Callable[[], T]
    quantization: str | None = None
    needed_bytes: Callable[[], int | None] | None = None
    free_bytes: Callable[[], int | None] | None = None
    unavailable: Callable[[], str | None] | None = None


def gib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f} GiB"


def explain_error(exc: BaseException) -> str:
    """A one-line reason in plain words for a loading failure.

    One of our own errors that carries a plain `reason` (a string attribute) gives that.
    """
    from voice_agent.core.hub import ModelNotFoundError

    own = getattr(exc, "reason", None)
    if isinstance(exc, VoiceAgentError) and isinstance(own, str) and own:
        return own

    if isinstance(exc, ModelNotFoundError):
        return "the model is not on this machine"
    text = f"{type(exc).__name__}: {exc}".lower()
    if "out of memory" in text or isinstance(exc, MemoryError):
        return "ran out of memory while loading"
    if "bitsandbytes" in text or "bnb" in text:
        return "bitsandbytes could not quantize here (see the bitsandbytes probe)"
    if "cuda" in text and ("driver" in text or "no cuda" in text or "not compiled" in text):
        return "CUDA is not usable in this process"
    if (
        isinstance(exc, FileNotFoundError)
        or "no such file" in text
        or "not found" in text
        or "does not appear to have" in text
    ):
        return "a file the model needs is missing"
    if "safetensors" in text or "header" in text or "corrupt" in text:
        return "the weight files look corrupt or incomplete"
    if "size mismatch" in text or "shape" in text:
        return "the weights do not match the model's config"
    return "loading raised an error"


def free_memory() -> None:
    """Release what a failed attempt left behind before the next one."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _process_memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def run_chain(report: LoadReport, strategies: list[Strategy[T]]) -> T:
    """Try `strategies` in order, recording each in `report`; return the first success.

    Raises:
        ModelLoadError: every strategy was skipped or failed; `.report` holds why.
    """
    start = time.perf_counter()
    for strategy in strategies:
        attempt = Attempt(
            strategy.name, strategy.device, strategy.dtype, strategy.quantization, "skipped"
        )
        report.attempts.append(attempt)
        why_not = strategy.unavailable() if strategy.unavailable else None
        if why_not:
            attempt.reason = why_not
            log.warning("%s: skipping %s: %s", report.component, strategy.name, why_not)
            continue
        need = strategy.needed_bytes() if strategy.needed_bytes else None
        free = strategy.free_bytes() if strategy.free_bytes else None
        attempt.needed_bytes, attempt.free_bytes = need, free
        if need is not None and free is not None and need > free:
            attempt.reason = f"needs {gib(need)}, {gib(free)} free"
            log.warning("%s: skipping %s: %s", report.component, strategy.name, attempt.reason)
            continue
        log.info(
            "%s: trying %s (%s, %s%s)",
            report.component,
            strategy.name,
            strategy.device,
            strategy.dtype,
            f", {strategy.quantization}" if strategy.quantization else "",
        )
        t0 = time.perf_counter()
        try:
            result = strategy.load()
        except Exception as exc:  # any failure moves the chain on; it is recorded, not hidden
            attempt.outcome = "failed"
            attempt.seconds = time.perf_counter() - t0
            attempt.error_type = type(exc).__name__
            attempt.error = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
            attempt.reason = explain_error(exc)
            log.warning(
                "%s: %s failed after %.1f s (%s: %s); trying the next strategy",
                report.component,
                strategy.name,
                attempt.seconds,
                attempt.error_type,
                attempt.error,
            )
            del exc
            free_memory()
            continue
        attempt.outcome = "chosen"
        attempt.seconds = time.perf_counter() - t0
        attempt.memory_after_bytes = _process_memory_bytes()
        report.total_seconds = time.perf_counter() - start
        log.info("%s: loaded with %s in %.1f s", report.component, strategy.name, attempt.seconds)
        return result
    report.total_seconds = time.perf_counter() - start
    lines = "\n  ".join(a.line() for a in report.attempts) or "no strategies"
    raise ModelLoadError(
        f"Could not load {report.component} model {report.model_ref!r}:\n  {lines}", report
    )


# --- memory planning from safetensors headers (no weights read) ---------------------------------

SAFETENSORS_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of one .safetensors file (reads only its first bytes)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            # A truncated download; struct.error here would escape the planners, which
            # catch ValueError/OSError to mean "cannot size this, just try loading".
            raise ValueError(f"{path} is too short to be a safetensors file: truncated?")
        (length,) = struct.unpack("<Q", head)
        if length > 100_000_000:
            raise ValueError(
                f"{path} has an implausible safetensors header ({length} bytes): corrupt file?"
            )
        header = json.loads(f.read(length))
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a safetensors header that is not a JSON object: corrupt?")
    return header


def count_parameters(model_dir: Path) -> tuple[int, int]:
    """(parameter count, bytes on disk) from the safetensors headers in `model_dir`."""
    params = 0
    stored = 0
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {model_dir}")
    for file in files:
        for name, info in safetensors_header(file).items():
            if name == "__metadata__":
                continue
            try:
                shape = info["shape"]
                n = 1
                for d in shape:
                    n *= int(d)
                width = SAFETENSORS_DTYPE_BYTES.get(info["dtype"], 4)
            except (TypeError, KeyError) as exc:
                raise ValueError(f"{file} has a malformed safetensors entry {name!r}") from exc
            params += n
            stored += n * width
    return params, stored


def estimate_bytes(model_dir: Path, storage: str) -> int:
    """Memory a model needs loaded as `storage` (a key of BYTES_PER_PARAM), with overhead."""
    params, _ = count_parameters(model_dir)
    return int(params * BYTES_PER_PARAM[storage] * OVERHEAD_FACTOR) + OVERHEAD_BYTES
