"""Benchmark section `llm`: each CPU loading strategy on a Qwen2.5-0.5B-shaped model.

Random weights (speed does not depend on their values) saved once as a bf16 checkpoint,
then, per strategy and each in its own process (so peak RSS is that strategy's alone):
load seconds through `OpenSourceLLM`, time to first token and decode tokens/s for a
fixed number of greedy new tokens. The full run then does the same for a Qwen2.5-1.5B-shaped
checkpoint (the CPU default model's shape) with `cpu-4bit` and with the float strategy the
chain picks without quantization, to check the default against speaking pace (about 3
words/s, 4 tokens/s) through the real loading code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from voice_agent.bench.common import run_isolated

STRATEGIES = ("cpu-int8-dynamic", "cpu-float32", "cpu-bfloat16", "cpu-8bit", "cpu-4bit")
SPEAKING_PACE_TOKENS_S = 4.0
PROMPT = "What is the weather like today, and should I take an umbrella when I go out?"
# Short, so the tiny test tokenizer (more tokens per word than Qwen's) gives a prompt about
# as long as a real voice turn with Qwen's tokenizer and the default system prompt.
SYSTEM = "You are a friendly voice assistant. Answer briefly."

# Runs in a fresh process: load with one strategy, warm up, then time greedy replies.
STRATEGY_RUN = """
import json, resource, statistics, sys, time, torch
from voice_agent.core.config import load_settings
from voice_agent.llm.base import GenerationSettings
from voice_agent.llm.engine import OpenSourceLLM
from transformers import AutoModelForCausalLM, AutoTokenizer  # import time is not load time
path, name, new_tokens, repeats, prompt, system = sys.argv[1:7]
new_tokens, repeats = int(new_tokens), int(repeats)
settings = load_settings({"HF_HUB_OFFLINE": "1"})
t0 = time.perf_counter()
llm = OpenSourceLLM(path, settings, strategies=[name])
load_s = time.perf_counter() - t0
gen = GenerationSettings(temperature=0, max_new_tokens=new_tokens)
llm.generate_reply(prompt, GenerationSettings(temperature=0, max_new_tokens=2), system_prompt=system)
def cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
c0 = cpu_s()
replies = [llm.generate_reply(prompt, gen, system_prompt=system) for _ in range(repeats)]
cpu_per_token = (cpu_s() - c0) / sum(r.completion_tokens for r in replies)
decode = [(r.completion_tokens - 1) / (r.seconds - r.first_token_seconds) for r in replies]
print(json.dumps({
    "load_s": round(load_s, 2),
    "ttft_s": round(statistics.median(r.first_token_seconds for r in replies), 3),
    "tokens_per_s": round(statistics.median(decode), 2),
    "cpu_s_per_token": round(cpu_per_token, 3),
    "prompt_tokens": replies[0].prompt_tokens,
    "new_tokens": replies[0].completion_tokens,
}))
"""

BUILD = """
import json, sys
from pathlib import Path
from voice_agent.testing.tiny_llm import build, build_shaped
out = build_shaped(sys.argv[2], Path(sys.argv[1])) if sys.argv[2] != "tiny" else build(Path(sys.argv[1]))
print(json.dumps({"path": str(out)}))
"""

# The float strategy the CPU chain picks when quantization is off (bf16 or fp32 by the CPU).
FLOAT_CHOICE = """
import json
from voice_agent.core.config import load_settings
from voice_agent.core.hardware import probe_hardware
from voice_agent.llm.strategies import plan_chain
settings = load_settings({"MODEL_SERVER_PREFER_4BIT": "0", "LLM_DEVICE": "cpu"})
print(json.dumps({"name": plan_chain(settings, probe_hardware())[0].name}))
"""


def _python(code: str, *args: str) -> str:
    """`code` made runnable by `run_isolated`, with `args` as sys.argv[1:]."""
    return f"import sys\nsys.argv = ['bench'] + {json.dumps(list(args))}\n{code}"


def _measure(
    path: str, names: tuple[str, ...], label: str, new_tokens: int, repeats: int, env: dict
) -> list[dict]:
    """One row per strategy name, each measured in its own process."""
    rows = []
    for name in names:
        args = (path, name, str(new_tokens), str(repeats), PROMPT, SYSTEM)
        result = run_isolated(_python(STRATEGY_RUN, *args), env=env)
        rows.append({"model": label, "strategy": name, **result})
    return rows


def run(quick: bool = False) -> dict:
    """Rows per strategy: load_s, peak_rss_mb, ttft_s, tokens_per_s (tiny model when quick)."""
    size = "tiny" if quick else "0.5B"
    new_tokens, repeats = (8, 1) if quick else (32, 1)
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    try:
        built = run_isolated(_python(BUILD, str(tmp / "model"), size), env=env)
        if "error" in built:
            return {"rows": [], "notes": f"building the {size} model failed: {built['error']}"}
        label = "tiny test model" if quick else "Qwen2.5-0.5B-shaped"
        rows += _measure(built["path"], STRATEGIES, label, new_tokens, repeats, env)
        if not quick:
            # The CPU default's shape: int8 (the chain's first) and 4-bit against the float
            # type the chain picks without quantization.
            shutil.rmtree(tmp / "model", ignore_errors=True)  # free ~1 GB before writing ~3 GB
            built = run_isolated(_python(BUILD, str(tmp / "model-1.5B"), "1.5B"), env=env)
            choice = run_isolated(FLOAT_CHOICE, env=env)
            if "error" in built or "error" in choice:
                why = built.get("error") or choice.get("error")
                rows.append({"model": "Qwen2.5-1.5B-shaped", "error": why})
            else:
                names = ("cpu-int8-dynamic", "cpu-4bit", choice["name"])
                rows += _measure(
                    built["path"], names, "Qwen2.5-1.5B-shaped", new_tokens, repeats, env
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for row in rows:
        if "tokens_per_s" in row:
            row["speaking_pace"] = row["tokens_per_s"] >= SPEAKING_PACE_TOKENS_S
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return {
        "rows": rows,
        "notes": (
            f"Greedy decoding, {new_tokens} new tokens, median of {repeats} after a warm-up; "
            f"{os.cpu_count()} CPU threads; each row in its own process (peak_rss_mb is that "
            f"process's). Random weights ({'tiny test model' if quick else 'Qwen2.5 shapes'}); "
            "the prompt goes through the tiny test tokenizer. cpu_s_per_token is CPU time (all "
            "threads) per generated token, prompt included; it is less affected than "
            "tokens_per_s when other processes share the CPU (load average at the end: "
            f"{load}). Speaking pace is about "
            f"{SPEAKING_PACE_TOKENS_S:g} tokens/s."
        ),
        "new_tokens": new_tokens,
    }
