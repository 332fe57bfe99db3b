"""Dia2 runtime benchmark: step speed, peak memory and time to first audio.

Configurations (each in its own process, so peak RSS is its own):

- `tiny`: the shared parity fixture (checkpoint, tokenizer, Mimi).
- `2b`: the Dia2-2B dimensions with random weights (28 layers, width 2048,
  FFN 6144, 16 query / 8 KV heads of 128; depformer 4 layers, width 1024,
  FFN 3072, 8 heads of 128, 31 stages on 5 weight groups; 32 codebooks,
  delays 16/18; 1500-step KV cache), initialised straight into the final
  tensors, with a random Mimi of the real `kyutai/mimi` dimensions.

Per configuration: median time of one generation step (CFG on, so batch 2)
after warm-up, steps per second, peak RSS, and time to first audio for a
20-word script, streaming (measured) versus batch (the whole utterance must
be generated and decoded first; measured for tiny, computed from the step
time and the fastest pace of the script for 2B, which is a lower bound).
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

SCRIPT_20_WORDS = (
    "[S1] Thanks for calling. I checked your order and it left the warehouse this "
    "morning, so it should arrive on Friday before noon."
)

DIA2_2B = {
    "data": {
        "channels": 34,
        "text_vocab_size": 49152,
        "audio_vocab_size": 2050,
        "action_vocab_size": 2,
        "text_pad_token_id": 3,
        "text_new_word_token_id": 2,
        "text_zero_token_id": 7,
        "audio_pad_token_id": 2049,
        "audio_bos_token_id": 2048,
        "action_pad_token_id": 0,
        "action_new_word_token_id": 1,
        "delay_pattern": [16] + [18] * 31,
        "first_word_min_start": 3,
        "max_pad": 8,
        "second_stream_ahead": 2,
    },
    "model": {
        "decoder": {
            "n_layer": 28,
            "n_embd": 2048,
            "n_hidden": 6144,
            "gqa_query_heads": 16,
            "kv_heads": 8,
            "gqa_head_dim": 128,
            "low_rank_dim": 256,
        },
        "depformer": {
            "n_layer": 4,
            "n_embd": 1024,
            "n_hidden": 3072,
            "gqa_query_heads": 8,
            "kv_heads": 8,
            "gqa_head_dim": 128,
            "apply_rope": True,
            "text_embedding": False,
            "mlp_activations": ["silu", "linear"],
        },
        "linear": {"mlp_activations": ["silu", "linear"]},
        "rope_min_timescale": 1,
        "rope_max_timescale": 10000,
        "normalization_layer_epsilon": 1e-6,
    },
    "runtime": {"weights_schedule": [0, 1, 2, 3] + [4] * 27, "max_context_steps": 1500},
    "assets": {"tokenizer": None, "mimi": None},
}


def _build(kind: str, dtype: str, device: str = "cpu", fast_path: str = "eager"):
    import torch
    from transformers import AutoTokenizer, MimiConfig, MimiModel

    from voice_agent.testing.paths import dia2_fixture_dir
    from voice_agent.tts.dia2 import Dia2Runtime
    from voice_agent.tts.dia2.checkpoint import random_model
    from voice_agent.tts.dia2.config import Dia2Config
    from voice_agent.tts.dia2.runtime import DTYPES

    fixture = dia2_fixture_dir()
    if kind == "tiny":
        return Dia2Runtime.from_pretrained(
            str(fixture / "dia2"), dtype=dtype, device=device, fast_path=fast_path
        )
    config = Dia2Config.from_dict(DIA2_2B, source="Dia2-2B dimensions")
    model = random_model(config, device=torch.device(device), dtype=DTYPES[dtype])
    # Any byte-level BPE works for timing: the script's ids only index the embedding.
    tokenizer = AutoTokenizer.from_pretrained(str(fixture / "tokenizer"))
    mimi = MimiModel(MimiConfig()).to(device).eval()
    return Dia2Runtime(
        config, model, tokenizer, mimi, device=torch.device(device), fast_path=fast_path
    )


def measure(
    kind: str, dtype: str, threads: int, timed_steps: int, stream_ttfa: bool
) -> dict[str, Any]:
    """One configuration, in the current process; prints nothing."""
    import torch

    from voice_agent.tts.dia2 import Dia2GenerationConfig

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    rt = _build(kind, dtype)
    build_s = time.perf_counter() - t0
    config = Dia2GenerationConfig(seed=0, on_context_overflow="truncate")
    entries = rt.parse(SCRIPT_20_WORDS)

    gen = rt.new_generation(entries, config)
    for _ in range(2):  # warm-up: first-call allocations and kernel selection
        gen.step()
    times = []
    for _ in range(timed_steps):
        t = time.perf_counter()
        gen.step()
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    del gen  # one KV cache at a time, as in the app

    # Bandwidth-bound floor: every weight a step reads (the depformer's once per stage)
    # over this machine's single-matrix GEMV bandwidth, measured now (other load shows here too).
    bytes_per_step = _bytes_per_step(rt)
    gbps = _gemv_gbps(next(rt.model.parameters()).dtype)
    row: dict[str, Any] = {
        "model": kind,
        "dtype": dtype,
        "threads": threads,
        "build_s": round(build_s, 1),
        "step_s": round(step_s, 4),
        "steps_per_s": round(1 / step_s, 2),
        "ttfa_steps": rt.max_delay,
        "gemv_gbps": round(gbps, 1),
        "floor_step_s": round(bytes_per_step / gbps / 1e9, 4),
    }
    if stream_ttfa:
        t = time.perf_counter()
        stream = rt.stream(SCRIPT_20_WORDS, config)
        next(stream)
        row["stream_ttfa_s"] = round(time.perf_counter() - t, 3)
        row["ttfa_steps"] = stream.first_audio_steps
    else:
        row["stream_ttfa_s"] = round(rt.max_delay * step_s, 3)
        row["stream_ttfa_note"] = "computed: max_delay x step"
    if kind == "tiny":
        t = time.perf_counter()
        result = rt.generate(SCRIPT_20_WORDS, config)
        row["batch_ttfa_s"] = round(time.perf_counter() - t, 3)
        row["batch_steps"] = result.steps_run
    else:
        # Fastest pace: each word takes its step plus one pad per token; then the flush.
        steps = config.initial_padding + sum(e.padding + 1 for e in entries) + rt.max_delay + 7
        codes = torch.randint(0, 2048, (1, rt.config.data.num_codebooks, steps))
        t = time.perf_counter()
        with torch.inference_mode():
            rt.mimi.decode(codes)
        row["batch_ttfa_s"] = round(steps * step_s + time.perf_counter() - t, 2)
        row["batch_steps"] = steps
        row["batch_ttfa_note"] = "lower bound: fastest-pace steps x step + measured Mimi decode"
    return row


def _bytes_per_step(rt) -> int:
    model = rt.model
    size = {n: p.numel() * p.element_size() for n, p in model.named_parameters()}
    main = sum(v for n, v in size.items() if n.startswith("transformer.layers") or "head" in n)
    stages = len(rt.config.runtime.weights_schedule)
    per_stage = sum(v for n, v in size.items() if n.startswith("depformer.layers") and ".mlp." in n)
    per_stage += sum(v for n, v in size.items() if n.startswith("depformer.layers") and "norm" in n)
    groups = len(set(rt.config.runtime.weights_schedule))
    grouped = sum(
        v for n, v in size.items() if "in_proj" in n or "out_proj" in n or "depformer_in" in n
    )
    logits = sum(v for n, v in size.items() if n.startswith("depformer.logits"))
    return main + stages * (per_stage + grouped // groups) + logits


def _gemv_gbps(dtype) -> float:
    import torch

    weight = torch.randn(12288, 2048).to(dtype)
    x = torch.randn(2, 2048).to(dtype)
    for _ in range(3):
        torch.nn.functional.linear(x, weight)
    t = time.perf_counter()
    for _ in range(10):
        torch.nn.functional.linear(x, weight)
    return weight.numel() * weight.element_size() * 10 / (time.perf_counter() - t) / 1e9


def run(quick: bool = False) -> dict[str, Any]:
    """All configurations, each in a fresh process; returns {"rows": [...], "notes": "..."}."""
    from voice_agent.bench.common import run_isolated

    plans = [("tiny", "float32", 1, 20, True), ("2b", "float32", 1, 3 if quick else 5, not quick)]
    if not quick:
        plans.append(("2b", "bfloat16", 1, 5, False))
    rows = []
    for kind, dtype, threads, steps, stream in plans:
        args = repr((kind, dtype, threads, steps, stream))
        code = f"from voice_agent.bench.dia2 import measure\nprint(json.dumps(measure(*{args})))"
        result = run_isolated(code, timeout=1800, env={"OMP_NUM_THREADS": str(threads)})
        result.setdefault("model", kind)
        result.setdefault("dtype", dtype)
        result.setdefault("threads", threads)
        rows.append(result)
    notes = (
        "CPU only. step_s: median of one generation step (CFG on: batch 2; transformer + 31 depformer "
        "stages + sampling) after 2 warm-up steps. peak_rss_mb: the whole process (model, 1500-step KV "
        "cache, Mimi). ttfa_steps: steps before the first 80 ms chunk (max_delay). The 2B rows use random "
        "weights with the shipped dimensions, so speed and memory are real but the audio is noise. "
        "Targets (2B, float32, 1 thread): <= 0.9 s/step, <= 9 GiB; the official runtime: 1.87 s/step, 14.7 GiB."
    )
    return {"rows": rows, "notes": notes}


if __name__ == "__main__":
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
