"""The LLM's loading chain as data: which strategies, in which order, and what each needs.

CUDA: 4-bit NF4 (double quant, bf16/fp16 compute) -> 8-bit -> fp16/bf16 on the GPU ->
fp16/bf16 spread over GPU, RAM and disk -> the CPU chain. CPU: int8 weights with dynamic
activation quantization (torch's fbgemm/x86 kernels: decoding is memory-bound, and a
quarter of fp32's bytes per token decodes about 3x faster than bf16) -> bf16 when the CPU
has native bf16 (else fp32) -> the other float type -> 8-bit -> 4-bit (bitsandbytes), the
last ones being where the chain lands when RAM is short. `MODEL_SERVER_PREFER_4BIT=0`
drops the quantized strategies (the CUDA chain then starts at fp16/bf16, the CPU chain at
bf16/fp32); `LLM_DEVICE` keeps only one device's strategies.

`plan_chain` decides the order from settings and the hardware probe (pure, no torch);
`to_strategies` turns the plan into `voice_agent.core.loading.Strategy` values with a memory
estimate from the safetensors headers, the free memory now, and a reason to skip when a
strategy cannot work here (no CUDA, bitsandbytes' native library missing).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from voice_agent.core.config import Settings
from voice_agent.core.hardware import (
    HardwareInfo,
    cuda_free_bytes,
    probe_bitsandbytes,
    ram_available_bytes,
)
from voice_agent.core.loading import Strategy, estimate_bytes

log = logging.getLogger(__name__)

# "int8-dynamic": torch's own int8 Linear layers, made after loading (no bitsandbytes).
Quantization = Literal["nf4", "int8", "int8-dynamic"]
# Headroom left free on each device for the KV cache, activations and the allocator.
GPU_BUDGET_FRACTION = 0.90
RAM_BUDGET_FRACTION = 0.85


@dataclass(frozen=True)
class LLMStrategy:
    """One way to load the LLM: device, dtype, quantization and how memory is counted."""

    name: str
    device: Literal["cuda", "cpu"]
    dtype: Literal["float32", "bfloat16", "float16"]
    quantization: Quantization | None = None
    offload: bool = False  # spread over GPU, RAM and OFFLOAD_FOLDER with device_map="auto"

    @property
    def storage(self) -> str:
        """The key of `loading.BYTES_PER_PARAM` that sizes this strategy's weights.

        int8-dynamic loads in float32 and quantizes after: its peak is float32's.
        """
        if self.quantization == "int8-dynamic":
            return self.dtype
        return self.quantization or self.dtype


def _half(bf16: bool) -> Literal["bfloat16", "float16"]:
    return "bfloat16" if bf16 else "float16"


def cuda_chain(gpu_bf16: bool, prefer_4bit: bool) -> list[LLMStrategy]:
    """The CUDA strategies, best first. bf16 where the GPU supports it (Ampere or newer)."""
    half = _half(gpu_bf16)
    chain = []
    if prefer_4bit:
        chain += [
            LLMStrategy("cuda-4bit", "cuda", half, "nf4"),
            # LLM.int8 computes in fp16 whatever the GPU.
            LLMStrategy("cuda-8bit", "cuda", "float16", "int8"),
        ]
    chain += [
        LLMStrategy(f"cuda-{half}", "cuda", half),
        LLMStrategy(f"cuda-{half}-offload", "cuda", half, offload=True),
    ]
    return chain


def cpu_chain(cpu_bf16: bool, quantize: bool) -> list[LLMStrategy]:
    """The CPU strategies, best first.

    bf16 first only where the CPU computes it natively (AVX512-BF16/AMX); elsewhere fp32 is
    faster and bf16 follows as the half-memory fallback. bitsandbytes' 8-bit then 4-bit come
    last: they fit where RAM is short.
    """
    floats = ["bfloat16", "float32"] if cpu_bf16 else ["float32", "bfloat16"]
    chain = [LLMStrategy(f"cpu-{dtype}", "cpu", dtype) for dtype in floats]  # type: ignore[arg-type]
    if quantize:
        chain.insert(0, LLMStrategy("cpu-int8-dynamic", "cpu", "float32", "int8-dynamic"))
        chain += [
            LLMStrategy("cpu-8bit", "cpu", "float16", "int8"),
            LLMStrategy("cpu-4bit", "cpu", "bfloat16" if cpu_bf16 else "float32", "nf4"),
        ]
    return chain


def all_strategies(hardware: HardwareInfo) -> dict[str, LLMStrategy]:
    """Every strategy this machine could name, by name (for an explicit `strategies=` list)."""
    gpu_bf16 = bool(hardware.gpus) and all(g.bf16 for g in hardware.gpus)
    chain = cuda_chain(gpu_bf16, True) + cuda_chain(not gpu_bf16, True)
    chain += cpu_chain(hardware.cpu_bf16, True) + cpu_chain(not hardware.cpu_bf16, True)
    named: dict[str, LLMStrategy] = {}
    for strategy in chain:  # the first of two same-named variants is this machine's
        named.setdefault(strategy.name, strategy)
    return named


def plan_chain(
    settings: Settings, hardware: HardwareInfo, names: Sequence[str] | None = None
) -> list[LLMStrategy]:
    """The ordered strategies for this machine and these settings.

    Args:
        settings: `llm_device` and `prefer_4bit` shape the chain.
        hardware: from `probe_hardware()`.
        names: an explicit order of strategy names (see `all_strategies`), used as given.

    Raises:
        ValueError: `names` holds a name that is not a strategy.
    """
    if names is not None:
        known = all_strategies(hardware)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(
                f"unknown LLM strategy {', '.join(unknown)}; choose from {', '.join(known)}"
            )
        return [known[n] for n in names]
    gpu_bf16 = bool(hardware.gpus) and all(g.bf16 for g in hardware.gpus)
    chain: list[LLMStrategy] = []
    use_cuda = settings.llm_device == "cuda" or (
        settings.llm_device == "auto" and hardware.cuda_available
    )
    if use_cuda:
        chain += cuda_chain(gpu_bf16, settings.prefer_4bit)
    if settings.llm_device != "cuda":
        chain += cpu_chain(hardware.cpu_bf16, settings.prefer_4bit)
    return chain


# --- from plan to loading.Strategy ------------------------------------------------------------


def memory_budget(
    strategy: LLMStrategy, hardware: HardwareInfo, max_memory: Mapping[int | str, int] | None
) -> dict[int | str, int]:
    """`max_memory` for `from_pretrained`: free memory now, less headroom, capped by the caller's.

    CPU strategies get {"cpu": bytes}; GPU ones {gpu index: bytes, ...}; offload adds "cpu".
    """
    caps = dict(max_memory or {})
    budget: dict[int | str, int] = {}
    if strategy.device == "cuda":
        for gpu in hardware.gpus:
            free = int(cuda_free_bytes(gpu.index) * GPU_BUDGET_FRACTION)
            budget[gpu.index] = min(free, caps.get(gpu.index, free))
    if strategy.device == "cpu" or strategy.offload:
        free = int(ram_available_bytes() * RAM_BUDGET_FRACTION)
        budget["cpu"] = min(free, caps.get("cpu", free))
    return budget


def unavailable_reason(strategy: LLMStrategy, hardware: HardwareInfo) -> str | None:
    """Why `strategy` cannot work on this machine at all, or None."""
    if strategy.device == "cuda" and not hardware.cuda_available:
        why = "; ".join(hardware.notes) or "torch sees no GPU"
        return f"no CUDA device is visible ({why})"
    if strategy.dtype == "bfloat16" and strategy.device == "cuda":
        if not all(g.bf16 for g in hardware.gpus):
            return "this GPU has no bf16 support (needs compute capability 8.0+)"
    if strategy.quantization == "int8-dynamic":
        return int8_dynamic_unavailable()
    if strategy.quantization:
        probe = probe_bitsandbytes()
        if not probe.usable:
            return f"{probe.diagnosis}. Fix: {probe.fix}" if probe.fix else probe.diagnosis
    return None


def int8_dynamic_unavailable() -> str | None:
    """Why torch's int8 kernels cannot run here (no fbgemm/x86 engine), or None."""
    import torch

    engines = set(torch.backends.quantized.supported_engines)
    if not engines & {"x86", "fbgemm"}:
        return (
            "torch has no x86/fbgemm quantized engine on this CPU "
            f"(has: {', '.join(sorted(engines)) or 'none'})"
        )
    return None


def quantize_int8_dynamic(model: Any) -> Any:
    """Replace `model`'s Linear layers by int8 ones (per-channel weights, activations
    quantized per call), in place. The embedding stays float (a lookup, not a matmul)."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    engines = torch.backends.quantized.supported_engines
    torch.backends.quantized.engine = "x86" if "x86" in engines else "fbgemm"
    with warnings.catch_warnings():
        # torch points new code at torchao; these eager-mode kernels still ship and are
        # what runs with no extra dependency.
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning, FutureWarning))
        return quantize_dynamic(
            model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
        )


def from_pretrained_kwargs(
    strategy: LLMStrategy, settings: Settings, budget: Mapping[int | str, int]
) -> dict[str, Any]:
    """The transformers 5 `from_pretrained` arguments for `strategy` (imports torch)."""
    import torch

    dtype = getattr(torch, strategy.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": settings.offline}
    if strategy.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    elif strategy.quantization == "int8":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if strategy.device == "cpu":
        kwargs["device_map"] = {"": "cpu"}
    else:
        kwargs["device_map"] = "auto"
        kwargs["max_memory"] = dict(budget)
        if strategy.offload:
            settings.offload_folder.mkdir(parents=True, exist_ok=True)
            kwargs["offload_folder"] = str(settings.offload_folder)
    return kwargs


def to_strategies(
    chain: Sequence[LLMStrategy],
    model_dir: Path,
    settings: Settings,
    hardware: HardwareInfo,
    load: Callable[[LLMStrategy, dict[str, Any]], Any],
    max_memory: Mapping[int | str, int] | None = None,
) -> list[Strategy[Any]]:
    """`loading.Strategy` values for `run_chain`: plan (memory, availability) and load.

    Args:
        chain: from `plan_chain`.
        model_dir: the resolved checkpoint (its safetensors headers size the plan).
        settings: the process settings (offline, offload folder).
        hardware: from `probe_hardware()`.
        load: `load(strategy, from_pretrained_kwargs)` returns the model or raises.
        max_memory: per-device caps in bytes ({"cpu": n, 0: n}), on top of free memory.
    """
    out: list[Strategy[Any]] = []
    for strategy in chain:

        def needed(s: LLMStrategy = strategy) -> int | None:
            try:
                return estimate_bytes(model_dir, s.storage)
            except (OSError, ValueError) as exc:  # no safetensors: plan nothing, let it try
                log.info("cannot size %s for %s: %s", model_dir, s.name, exc)
                return None

        def free(s: LLMStrategy = strategy) -> int | None:
            return sum(memory_budget(s, hardware, max_memory).values())

        def run(s: LLMStrategy = strategy) -> Any:
            budget = memory_budget(s, hardware, max_memory)
            return load(s, from_pretrained_kwargs(s, settings, budget))

        out.append(
            Strategy(
                name=strategy.name,
                device=strategy.device if not strategy.offload else "cuda+cpu",
                dtype=strategy.dtype,
                load=run,
                quantization=strategy.quantization,
                needed_bytes=needed,
                free_bytes=free,
                unavailable=partial(unavailable_reason, strategy, hardware),
            )
        )
    return out
