"""Benchmark section `stt`: recogniser speed on the CPU, for choosing the CPU default model.

Random-weight models with the real dimensions and vocabulary of whisper-base.en
and whisper-small.en (`testing.tiny_whisper.build_shaped`) are loaded through
the real engine, each in a fresh process, and decode a 10 s speech clip with a
fixed length of 40 tokens (about what 10 s of speech transcribes to), so the
numbers compare sizes without depending on what random weights happen to say.
Real-time factor = compute seconds / audio seconds; below 1 keeps up with speech.
whisper-base.en is measured twice: through transformers (fp32) and through
CTranslate2 (int8 weights, `STT_BACKEND=ctranslate2`, converted once inside the
benchmark's folder; the conversion time is in `load_s`).

The "side by side" rows put whisper-base.en on CTranslate2 int8 (the CPU default's
runtime) beside Moonshine tiny and base shapes (`testing.tiny_moonshine.build_shaped`;
int8, and base in fp32 too) in one process: every repeat decodes the same clip with
each model in turn, so a busy machine slows them alike. Two clips: a 3.4 s turn
(`assets/hello.wav`, 16 tokens) and the 10 s clip (40 tokens); medians.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from voice_agent.bench.common import run_isolated

CLIP_SECONDS = 10.0
DECODE_TOKENS = 40
TURN_TOKENS = 16  # about what the 3.4 s turn (assets/hello.wav) transcribes to

CHILD = """
import json, time
import numpy as np
import torch
torch.set_num_threads({threads})
from voice_agent.audio.io import load_audio
from voice_agent.core.config import load_settings
from voice_agent.stt.whisper import WhisperSTT
from voice_agent.testing.paths import REPO_ROOT

t0 = time.perf_counter()
import transformers.models.whisper.modeling_whisper  # import cost is reported apart from loading
import_s = time.perf_counter() - t0
t0 = time.perf_counter()
stt = WhisperSTT({path!r}, load_settings({{"HF_HUB_OFFLINE": "1", "HF_HOME": {home!r}, "STT_BACKEND": {backend!r}}}), warmup=False)
load_s = time.perf_counter() - t0
assets = REPO_ROOT / "assets"
clip = np.concatenate([load_audio(assets / "hello.wav"), load_audio(assets / "speech_pause_speech.wav")])
clip = clip[: int({seconds} * 16000)]
fixed = {{"min_new_tokens": {tokens}, "max_new_tokens": {tokens}}}
first = time.perf_counter()
stt.decode(clip, "en", generate_kwargs=fixed)
first_s = time.perf_counter() - first
times = []
for _ in range({repeats}):
    t = time.perf_counter()
    decoded = stt.decode(clip, "en", generate_kwargs=fixed)
    times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({{"import_s": import_s, "load_s": load_s, "first_s": first_s, "decode_s": times[len(times) // 2],
                  "tokens": decoded.tokens, "strategy": stt.report.chosen.strategy}}))
"""


# One process, all models loaded, decodes interleaved (see the module docstring).
SIDE_BY_SIDE = """
import json, statistics, time
import numpy as np
import torch
torch.set_num_threads({threads})
from voice_agent.audio.io import load_audio
from voice_agent.core.config import load_settings
from voice_agent.stt import moonshine
from voice_agent.stt.whisper import WhisperSTT
from voice_agent.testing.paths import REPO_ROOT

assets = REPO_ROOT / "assets"
turn = load_audio(assets / "hello.wav")
ten = np.concatenate([turn, load_audio(assets / "speech_pause_speech.wav")])[: int({seconds} * 16000)]
clips = [("turn", turn, {turn_tokens}), ("10s", ten, {tokens})]
seconds = {{clip: len(samples) / 16000 for clip, samples, _ in clips}}
engines, out = {{}}, {{}}
int8_check = moonshine.int8_unavailable
for name, path, backend, int8 in {models!r}:
    # The fp32 row: the int8 strategy reports itself unavailable, so the chain's fallback loads.
    moonshine.int8_unavailable = int8_check if int8 else (lambda: "bench: the fp32 row")
    settings = load_settings({{"HF_HUB_OFFLINE": "1", "HF_HOME": {home!r}, "STT_BACKEND": backend}})
    t0 = time.perf_counter()
    try:
        engines[name] = WhisperSTT(path, settings, warmup=False)
    except Exception as exc:
        out[name] = {{"error": f"{{type(exc).__name__}}: {{exc}}"}}
        continue
    out[name] = {{"load_s": time.perf_counter() - t0, "strategy": engines[name].report.chosen.strategy}}
times = {{(name, clip): [] for name in engines for clip, _, _ in clips}}
tokens = {{}}
for clip, samples, n in clips:
    for name, stt in engines.items():  # one untimed decode each
        stt.decode(samples, "en", generate_kwargs={{"min_new_tokens": n, "max_new_tokens": n}})
for _ in range({repeats}):
    for clip, samples, n in clips:
        for name, stt in engines.items():
            t = time.perf_counter()
            decoded = stt.decode(samples, "en", generate_kwargs={{"min_new_tokens": n, "max_new_tokens": n}})
            times[(name, clip)].append(time.perf_counter() - t)
            tokens[(name, clip)] = decoded.tokens
for (name, clip), runs in times.items():
    out[name][clip] = {{"decode_s": statistics.median(runs), "runs": runs, "tokens": tokens[(name, clip)],
                        "clip_s": seconds[clip]}}
print(json.dumps(out))
"""


def measure(path: Path, repeats: int, threads: int, backend: str = "transformers") -> dict:
    """Load + decode timings of the model at `path` on `backend`, in a fresh process."""
    code = CHILD.format(
        path=str(path),
        home=str(path.parent / "hf-home"),
        backend=backend,
        seconds=CLIP_SECONDS,
        tokens=DECODE_TOKENS,
        repeats=repeats,
        threads=threads,
    )
    return run_isolated(code, timeout=600, env={"HF_HUB_OFFLINE": "1"})


def side_by_side(root: Path, whisper_base: Path, repeats: int, threads: int) -> list[dict]:
    """Rows for whisper-base.en (CTranslate2 int8) beside Moonshine tiny and base, one process."""
    from voice_agent.core.loading import count_parameters
    from voice_agent.testing import tiny_moonshine

    models: list[tuple[str, str, str, bool]] = [
        ("whisper-base.en", str(whisper_base), "ctranslate2", True)
    ]
    for size in ("tiny", "base"):
        built = tiny_moonshine.build_shaped(root / f"moonshine-{size}", size)
        models.append((f"moonshine-{size}", str(built), "auto", True))
    models.append(("moonshine-base fp32", models[-1][1], "auto", False))
    code = SIDE_BY_SIDE.format(
        models=models,
        home=str(whisper_base.parent / "hf-home"),
        seconds=CLIP_SECONDS,
        tokens=DECODE_TOKENS,
        turn_tokens=TURN_TOKENS,
        repeats=repeats,
        threads=threads,
    )
    result = run_isolated(code, timeout=900, env={"HF_HUB_OFFLINE": "1"})
    if "error" in result:
        return [{"model": "side by side", "error": result["error"]}]
    rows: list[dict] = []
    for name, folder, _, _ in models:
        measured = result.get(name, {})
        label = name.removesuffix(" fp32")
        row: dict = {
            "model": f"{label} shape (random weights)",
            "backend": measured.get("strategy", "?"),
            "run": "side by side",
        }
        if "error" in measured:
            rows.append({**row, "error": measured["error"]})
            continue
        for clip in ("turn", "10s"):
            timing = measured[clip]
            rows.append(
                {
                    **row,
                    "params_m": round(count_parameters(Path(folder))[0] / 1e6, 1),
                    "load_s": round(measured["load_s"], 2),
                    "clip_s": round(timing["clip_s"], 2),
                    "decode_s": round(timing["decode_s"], 3),
                    "tokens": timing["tokens"],
                    "rtf": round(timing["decode_s"] / timing["clip_s"], 3),
                    "tokens_per_s": round(timing["tokens"] / timing["decode_s"], 1),
                    "runs_s": " ".join(f"{t:.2f}" for t in timing["runs"]),
                }
            )
    return rows


def run(quick: bool = False) -> dict:
    from voice_agent.testing.tiny_whisper import build_shaped

    repeats = 1 if quick else 3
    # The cores this process may use (taskset/cgroups), not every core the machine has.
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = threads or 1
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths: dict[str, Path] = {}
        for size in ("base", "small") if quick else ("tiny", "base", "small"):
            t0 = time.perf_counter()
            path = paths[size] = build_shaped(Path(tmp) / size, size, english_only=True)
            build_s = time.perf_counter() - t0
            backends = ["transformers", "ctranslate2"] if size == "base" else ["transformers"]
            for backend in backends:
                rows.append(
                    _row(size, path, backend, build_s, measure(path, repeats, threads, backend))
                )
        rows += side_by_side(Path(tmp), paths["base"], 3 if quick else 7, threads)
    return {
        "rows": rows,
        "clip_seconds": CLIP_SECONDS,
        "decode_tokens": DECODE_TOKENS,
        "torch_threads": threads,
        "repeats": repeats,
        "notes": (
            f"{CLIP_SECONDS:g} s speech clip, {DECODE_TOKENS} tokens forced (min = max new tokens), "
            "greedy, on the CPU (backend column), through WhisperSTT.decode (features + generate + detokenize). "
            "rtf = decode seconds / audio seconds (median of the repeats after one untimed decode, "
            "first_decode_s); import_s = importing transformers' Whisper; load_s = WhisperSTT() "
            "from a local directory without warm-up. Side by side rows: one process, each repeat "
            f"decodes the clip with every model in turn (the 3.4 s turn with {TURN_TOKENS} "
            f"tokens, the {CLIP_SECONDS:g} s clip with {DECODE_TOKENS}), median of runs_s."
        ),
    }


def _row(size: str, path: Path, backend: str, build_s: float, result: dict) -> dict:
    from voice_agent.core.loading import count_parameters

    kind = "transformers fp32" if backend == "transformers" else "ctranslate2 int8"
    row: dict = {
        "model": f"whisper-{size}.en shape (random weights)",
        "backend": kind,
        "run": "own process",
    }
    if "error" in result:
        row["error"] = result["error"]
        return row
    row.update(
        {
            "params_m": round(count_parameters(path)[0] / 1e6, 1),
            "import_s": round(result["import_s"], 2),
            "load_s": round(result["load_s"], 2),
            "clip_s": CLIP_SECONDS,
            "first_decode_s": round(result["first_s"], 2),
            "decode_s": round(result["decode_s"], 2),
            "tokens": result["tokens"],
            "rtf": round(result["decode_s"] / CLIP_SECONDS, 3),
            "tokens_per_s": round(result["tokens"] / result["decode_s"], 1),
            "peak_rss_mb": result.get("peak_rss_mb"),
            "build_s": round(build_s, 1),
        }
    )
    return row


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=2))
