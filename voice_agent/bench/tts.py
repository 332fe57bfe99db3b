"""TTS benchmark: each backend on the CPU with real-shaped random weights.

Per backend, in its own process (so peak RSS is its own): load seconds
through the engine, real-time factor (compute seconds / audio seconds) for a
3-sentence reply, time to first audio when that reply is streamed in as
tokens, and peak RSS.

- `vits`: facebook/mms-tts-eng dimensions (36 M parameters) from disk.
  Random weights predict random durations, so the audio is not the length
  real speech would be; `audio_s` says what was produced, and the RTF is
  also given per second of speech at 14 characters a second.
- `dia`: Dia-1.6B dimensions, random weights built in memory (6.4 GB float32;
  writing and reading them back would double the run). Measured: decoder
  steps per second with CFG; DAC runs 86 steps per second of audio, so the RTF
  and the time to first audio (Dia cannot start before the first sentence
  is encoded and fully generated) follow from it. Skipped in `--quick` runs and
  when less than 10 GiB of RAM is free.
- `dia2`: the `dia2` section measures it (our runtime, 2B-shaped).
- `cpu_default`: the backend `TTS_BACKEND=auto` picks on a CPU (Piper), on a
  random voice with a Piper "medium" voice's widths exported to ONNX here (the
  Hub is not needed; its durations are calibrated to a real medium voice's, so
  the reply lasts about as long as real speech): RTF alone, RTF while a
  Qwen2.5-0.5B-shaped LLM decodes in another process (`rtf_beside_llm`, the
  turn's real situation: the reply is spoken while it is still being written),
  the time to first audio, `audio_s` and the RTF per second of speech at 14
  characters a second. With `BENCH_PIPER_VOICE` set (a Piper voice folder, or a
  Hub reference as `TTS_MODEL_NAME` takes it) the row measures that voice
  instead, and `model` says so.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from voice_agent.bench.common import run_isolated

PIPER_VOICE_VARIABLE = "BENCH_PIPER_VOICE"

REPLY = (
    "Sure, I can help with that. The weather today is sunny and warm, about 25 degrees. "
    "Tomorrow it may rain in the afternoon, so take an umbrella."
)
SPEECH_CHARS_PER_S = 14.0
DIA_FRAMES_PER_S = 86  # DAC 44.1 kHz / hop 512
DIA_MIN_FREE_GIB = 10

VITS_CHILD = """
import json, time, torch
torch.set_num_threads({threads})
from voice_agent.core.config import load_settings
from voice_agent.tts.engine import LocalTTS
reply = {reply!r}
settings = load_settings({{"HF_HUB_OFFLINE": "1", "TTS_DEVICE": "cpu"}})
t0 = time.perf_counter()
tts = LocalTTS(backend="vits", model_name={model!r}, settings=settings)
load_s = time.perf_counter() - t0
tts.synthesize("Warm up.")
runs = []
for _ in range({repeats}):
    t0 = time.perf_counter()
    rate, audio = tts.synthesize(reply)
    runs.append((time.perf_counter() - t0, len(audio) / rate))
runs.sort()
compute_s, audio_s = runs[len(runs) // 2]
firsts = []
for _ in range({repeats}):
    t0 = time.perf_counter()
    stream = tts.stream(iter(w + " " for w in reply.split()))
    next(stream)
    firsts.append(time.perf_counter() - t0)
    stream.close()
firsts.sort()
print(json.dumps({{"load_s": load_s, "compute_s": compute_s, "audio_s": audio_s,
                  "first_audio_s": firsts[len(firsts) // 2]}}))
"""

PIPER_CHILD = """
import json, os, subprocess, sys, time
from voice_agent.core.config import load_settings
from voice_agent.tts.engine import LocalTTS
reply = {reply!r}
settings = load_settings({{**os.environ, "TTS_DEVICE": "cpu"}})
tts = LocalTTS(backend="piper", model_name={model!r}, settings=settings)
tts.synthesize("Warm up.")
def runs():
    out = []
    for _ in range({repeats}):
        t0 = time.perf_counter()
        rate, audio = tts.synthesize(reply)
        compute_s, audio_s = time.perf_counter() - t0, len(audio) / rate
        out.append((compute_s / audio_s, compute_s, audio_s))
    return sorted(out)[len(out) // 2]  # (rtf, compute_s, audio_s) of the median run
alone, compute_s, audio_s = runs()
firsts = []
for _ in range({repeats}):
    t0 = time.perf_counter()
    stream = tts.stream(iter(w + " " for w in reply.split()))
    next(stream)
    firsts.append(time.perf_counter() - t0)
    stream.close()
llm = subprocess.Popen([sys.executable, "-c", {llm!r}], stdout=subprocess.PIPE, text=True)
try:
    ready = llm.stdout.readline().strip()
    beside = runs()[0] if ready == "decoding" else None
finally:
    llm.kill()
print(json.dumps({{"rtf": alone, "compute_s": compute_s, "audio_s": audio_s,
                  "rtf_beside_llm": beside, "threads": tts._backend.threads,
                  "first_audio_s": sorted(firsts)[len(firsts) // 2]}}))
"""

# Token-by-token decoding of a Qwen2.5-0.5B-shaped model (random weights, one
# thread), the load the TTS shares the machine with while a reply is spoken.
LLM_DECODE = """
import torch
torch.set_num_threads(1)
from transformers import Qwen2Config, Qwen2ForCausalLM
config = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
model = Qwen2ForCausalLM(config).eval()
ids = torch.tensor([[1, 2, 3, 4]])
print("decoding", flush=True)
with torch.inference_mode():
    while True:
        model.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False)
"""

DIA_CHILD = """
import json, time, torch
torch.set_num_threads({threads})
from transformers import DiaConfig, DiaForConditionalGeneration, DiaTokenizer
t0 = time.perf_counter()
config = DiaConfig()  # transformers' defaults are Dia-1.6B's dimensions
torch.manual_seed(0)
model = DiaForConditionalGeneration(config).eval()
build_s = time.perf_counter() - t0
params = sum(p.numel() for p in model.parameters())
tok = DiaTokenizer()
ids = tok(["[S1] " + {sentence!r}], return_tensors="pt", padding=False)
kw = dict(guidance_scale=3.0, temperature=1.8, top_p=0.9, top_k=45, do_sample=True)
with torch.inference_mode():
    model.generate(**ids, max_new_tokens=2, **kw)  # warm-up
    t0 = time.perf_counter(); model.generate(**ids, max_new_tokens=2, **kw); short = time.perf_counter() - t0
    t0 = time.perf_counter(); model.generate(**ids, max_new_tokens={steps} + 2, **kw); long = time.perf_counter() - t0
step_s = (long - short) / {steps}
print(json.dumps({{"build_s": build_s, "params": params, "step_s": step_s, "encode_s": short}}))
"""


def _vits(tmp: Path, quick: bool, threads: int) -> dict[str, Any]:
    from voice_agent.testing.tiny_vits import build_shaped

    model = build_shaped(tmp / "vits-mms-shaped")
    code = VITS_CHILD.format(
        threads=threads, reply=REPLY, model=str(model), repeats=2 if quick else 5
    )
    out = run_isolated(code, env={"HF_HUB_OFFLINE": "1"})
    if "error" in out:
        return {"backend": "vits", "model": "mms-tts-eng shape (36 M)", "error": out["error"]}
    speech_s = len(REPLY) / SPEECH_CHARS_PER_S
    return {
        "backend": "vits",
        "model": "mms-tts-eng shape",
        "load_s": round(out["load_s"], 2),
        "rtf": round(out["compute_s"] / out["audio_s"], 3),
        "rtf_at_14_chars_per_s": round(out["compute_s"] / speech_s, 3),
        "audio_s": round(out["audio_s"], 2),
        "first_audio_s": round(out["first_audio_s"], 3),
        "peak_rss_mb": out.get("peak_rss_mb"),
    }


def _cpu_default(tmp: Path, quick: bool) -> dict[str, Any]:
    from voice_agent.testing.tiny_piper import build_shaped

    voice = os.environ.get(PIPER_VOICE_VARIABLE, "").strip()
    env: dict[str, str] = {}
    if voice:  # the user's voice, found (or fetched) as their environment says
        row: dict[str, Any] = {"backend": "piper", "model": f"{voice} ({PIPER_VOICE_VARIABLE})"}
        model = voice
    else:
        row = {
            "backend": "piper",
            "model": "Piper medium shape (random, ONNX, speech length of a real medium voice)",
        }
        model = str(build_shaped(tmp / "piper-medium-shaped"))
        env["HF_HUB_OFFLINE"] = "1"
    code = PIPER_CHILD.format(reply=REPLY, model=model, repeats=2 if quick else 5, llm=LLM_DECODE)
    out = run_isolated(code, env=env)
    if "error" in out:
        return {**row, "error": out["error"]}
    beside = out["rtf_beside_llm"]
    speech_s = len(REPLY) / SPEECH_CHARS_PER_S
    return {
        **row,
        "rtf": round(out["rtf"], 3),
        "rtf_at_14_chars_per_s": round(out["compute_s"] / speech_s, 3),
        "audio_s": round(out["audio_s"], 2),
        "rtf_beside_llm": None if beside is None else round(beside, 3),
        "first_audio_s": round(out["first_audio_s"], 3),
        "onnx_threads": out["threads"],
        "peak_rss_mb": out.get("peak_rss_mb"),
    }


def _dia(quick: bool, threads: int) -> dict[str, Any]:
    import psutil

    row: dict[str, Any] = {"backend": "dia", "model": "Dia-1.6B shape"}
    free_gib = psutil.virtual_memory().available / 1024**3
    if quick:
        return {**row, "skipped": "quick run (builds 6.4 GB of random weights)"}
    if free_gib < DIA_MIN_FREE_GIB:
        return {**row, "skipped": f"{free_gib:.1f} GiB RAM free, needs {DIA_MIN_FREE_GIB}"}
    first_sentence = REPLY.split(". ")[0] + "."
    steps = 8
    code = DIA_CHILD.format(threads=threads, sentence=first_sentence, steps=steps)
    out = run_isolated(code, timeout=600)
    if "error" in out:
        return {**row, "error": out["error"]}
    step_s = out["step_s"]
    # The first sentence is generated whole before it can be decoded and played.
    first_frames = len(first_sentence) / SPEECH_CHARS_PER_S * DIA_FRAMES_PER_S
    return {
        **row,
        "load_s": f"n/a (built in memory in {out['build_s']:.0f} s)",
        "rtf": round(step_s * DIA_FRAMES_PER_S, 1),
        "first_audio_s": round(out["encode_s"] + first_frames * step_s, 1),
        "step_ms": round(step_s * 1000, 1),
        "params_m": round(out["params"] / 1e6),
        "peak_rss_mb": out.get("peak_rss_mb"),
    }


def run(quick: bool = False) -> dict:
    threads = min(4, os.cpu_count() or 1)
    load_before = round(os.getloadavg()[0], 2)  # other work on the box slows every row
    with tempfile.TemporaryDirectory() as tmp:
        cpu_default = _cpu_default(Path(tmp), quick)
        rows = [_vits(Path(tmp), quick, threads), _dia(quick, threads)]
    rows.append({"backend": "dia2", "model": "Dia2-2B shape", "skipped": "see the dia2 section"})
    return {
        "cpu_default": cpu_default,
        "rows": rows,
        "threads": threads,
        "load_avg_1m_before": load_before,
        "reply": REPLY,
        "notes": (
            "CPU, float32, random weights of the real shapes. rtf = compute seconds per second "
            "of audio (below 1 is faster than real time). first_audio_s: the reply streamed in as "
            "tokens, time until the first audio chunk. Dia's numbers come from its measured "
            "decoder step time (86 steps per second of audio)."
        ),
    }
