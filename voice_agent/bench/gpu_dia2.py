"""Dia2 on a CUDA machine: parity of the GPU paths and the speed of eager vs CUDA graphs vs compile.

    python -m voice_agent.bench.gpu_dia2

prints one JSON line (`gpu_check()`): on the tiny fixture (CUDA, float32) the c1_hello
tokens of the eager and CUDA-graph paths against the official CPU reference, whether the
static step programs run without a host sync (`torch.cuda.set_sync_debug_mode("error")`),
then for the 2B dimensions with random weights in bfloat16 the median step time of each
path (with the path actually used and any fallback reason) and the time to first audio of
the 20-word script. Each 2B path runs in its own process under a time limit, so a slow
torch.compile cannot push the whole check past about three minutes on an H100.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from typing import Any

# Seconds each 2B measurement may take (model build, capture or compile, timing).
LIMITS = {"eager": 40, "cuda_graph": 45, "compile": 75}


def gpu_check() -> dict[str, Any]:
    """Everything above, as one dict; {"cuda": False} without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return {"cuda": False, "note": "no CUDA device; nothing to check"}
    started = time.perf_counter()
    out: dict[str, Any] = {
        "cuda": True,
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
    }
    try:
        out["tiny"] = tiny_parity()
    except Exception as exc:  # report and go on to the timings
        out["tiny"] = {"error": f"{type(exc).__name__}: {exc}"}
    out["2b_bf16"] = {}
    for mode, limit in LIMITS.items():
        out["2b_bf16"][mode] = _isolated(mode, limit)
    out["total_s"] = round(time.perf_counter() - started, 1)
    return out


def tiny_parity(
    device: str = "cuda", modes: tuple[str, ...] = ("eager", "cuda_graph")
) -> dict[str, Any]:
    """c1_hello in float32, eager and CUDA graphs, against the CPU reference tokens."""
    import numpy as np
    import torch

    from voice_agent.testing.paths import dia2_fixture_dir
    from voice_agent.tts.dia2 import Dia2GenerationConfig, Dia2Runtime, SamplingConfig

    fixture = dia2_fixture_dir()
    case = next(
        c
        for c in json.loads((fixture / "cases.json").read_text())["cases"]
        if c["name"] == "c1_hello"
    )
    want = np.load(fixture / "cases" / "c1_hello" / "audio_tokens.npy")[0]
    s = case["settings"]
    config = Dia2GenerationConfig(
        text=SamplingConfig(**s["text_sampling"]),
        audio=SamplingConfig(**s["audio_sampling"]),
        cfg_scale=s["cfg_scale"],
        cfg_filter_k=s["cfg_filter_k"],
        initial_padding=s["initial_padding"],
        on_context_overflow="truncate",
    )
    result: dict[str, Any] = {}
    for mode in modes:
        rt = Dia2Runtime.from_pretrained(
            str(fixture / "dia2"), device=device, dtype="float32", fast_path=mode
        )
        got = rt.generate(case["script"], config).audio_tokens
        result[mode] = {
            "path": rt.fast_path,
            "note": rt.fast_path_note,
            "tokens_equal": bool(got.shape == want.shape and np.array_equal(got, want)),
            "frames": int(got.shape[-1]),
        }
    if device.startswith("cuda"):
        result["sync_free_static_step"] = _sync_free(rt, config, case["script"])
        torch.cuda.empty_cache()
    return result


def _sync_free(rt, config, script: str) -> str:
    """Run the static programs uncaptured with CUDA sync debugging set to raise."""
    import torch

    rt.enable_fast_path("static")
    gen = rt.new_generation(rt.parse(script), config)
    if gen.static is None:
        return f"not checked: {rt.fast_path_note}"
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            for t in range(3):
                gen.static.main(t, t)
                gen.static.depformer()
        return "yes"
    except Exception as exc:
        return f"no: {type(exc).__name__}: {exc}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def measure_2b(
    mode: str,
    timed_steps: int = 20,
    *,
    kind: str = "2b",
    device: str = "cuda",
    dtype: str = "bfloat16",
) -> dict[str, Any]:
    """One path on the 2B dimensions (random weights, CUDA, bfloat16), in this process."""
    import torch

    from voice_agent.bench.dia2 import SCRIPT_20_WORDS, _build
    from voice_agent.tts.dia2 import Dia2GenerationConfig

    t0 = time.perf_counter()
    rt = _build(kind, dtype, device=device, fast_path=mode)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    row: dict[str, Any] = {
        "asked": mode,
        "path": rt.fast_path,
        "note": rt.fast_path_note,
        "build_s": round(time.perf_counter() - t0, 1),
    }
    config = Dia2GenerationConfig(seed=0, on_context_overflow="truncate")
    gen = rt.new_generation(rt.parse(SCRIPT_20_WORDS), config)
    row["static"] = gen.static is not None
    for _ in range(3):
        gen.step()
    times = []
    for _ in range(timed_steps):
        sync()
        t = time.perf_counter()
        gen.step()
        sync()
        times.append(time.perf_counter() - t)
    gen.cancel()
    del gen
    row["step_ms"] = round(statistics.median(times) * 1000, 2)
    row["steps_per_s"] = round(1 / statistics.median(times), 1)
    t = time.perf_counter()
    stream = rt.stream(SCRIPT_20_WORDS, config)
    next(stream)
    row["ttfa_s"] = round(time.perf_counter() - t, 3)
    row["ttfa_steps"] = stream.first_audio_steps
    row["path_after"] = rt.fast_path  # a recapture for other settings may have fallen back
    if device.startswith("cuda"):
        row["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return row


def _isolated(mode: str, limit: float) -> dict[str, Any]:
    from voice_agent.bench.common import run_isolated

    code = (
        "from voice_agent.bench.gpu_dia2 import measure_2b\n"
        f"print(json.dumps(measure_2b({mode!r})))"
    )
    try:
        return run_isolated(code, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"asked": mode, "error": f"did not finish within {limit} s (compile or capture)"}


if __name__ == "__main__":
    print(json.dumps(gpu_check()))
