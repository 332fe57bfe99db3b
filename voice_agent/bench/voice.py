"""Benchmark section `voice`: what a listener hears, measured in a real browser.

Starts the app (`app.py`'s own `main`) on the pipeline bench's real-shaped random
models: the CPU defaults' shapes (a Qwen2.5-1.5B-shaped LLM scripted to say a fixed
3-sentence reply, `BENCH_LLM_SIZE=0.5B` for the 0.5B shape; the CPU default
recogniser's shape, `DEFAULT_STT_CPU` (whisper-base.en, or Moonshine's when that is the
default), at most 16 tokens, scripted to say a question's words and decoding as many
tokens as they take; a Piper medium-shaped ONNX voice); any model named by the
usual variables is used instead. It drives headless Chromium with a fake microphone playing
`assets/hello.wav` (3.4 s):

- **record**: Record (the page's push-to-talk button), the clip, Stop recording; end of
  speech is the click on Stop recording.
- **hands-free**: Start listening once; a pause ends the turn; end of speech is when the
  clip's speech ends (the microphone's start in the page plus the clip's last
  loud sample).

A probe in the page (`PROBE_JS`) watches the turn status line as it changes (a
`MutationObserver`: -> "Thinking" when the transcript is in, -> "Answering" at the
first reply word) and reads the page player's own record (`ui.playback`: when each
chunk is heard, from the Web Audio clock) when the bench asks, every `WAIT_POLL_MS`;
it does not poll, so it takes nothing from the cores it measures. First audio heard is
when the reply's first chunk comes out; a stall is a gap between two chunks (a chunk
that arrived after the one before had played out), so silence inside the audio itself
does not count. Against a page without that player, or whose player is not connected
(Gradio's own streamed `<audio>`), the probe polls the element's media clock every
`POLL_MS` instead: first audio heard is the first poll at which it advances, a stall
wall time after playback started that the clock did not cover.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from pathlib import Path
from typing import Any, Literal

import numpy as np

POLL_MS = 10  # the <audio> fallback's media clock only; the rest is read on change
WAIT_POLL_MS = 100  # how often the bench asks the page whether a turn is done
STALL_MIN_MS = 40  # below this a gap is poll jitter, not something heard
TURN_TIMEOUT_S = 150.0
START_TIMEOUT_S = 300.0
SETTLE_S = 1.5  # after the turn ends, how long the media clock must stand still
CLIP = "hello.wav"
MODES = ("record", "hands-free")

# The model variables a caller may set; whatever is unset is built (random weights).
MODEL_VARIABLES = {
    "llm": "MODEL_SERVER_MODEL_NAME",
    "stt": "STT_MODEL_NAME",
    "tts": "TTS_MODEL_NAME",
}

PROBE_JS = """
(() => {
  const va = window.__va = {active: false, micStart: null, first: null, stalls: [], stallAt: [], status: {},
                            lastAdvance: null, endAt: null, played: 0, fromTurn: -1, via: null};
  const md = navigator.mediaDevices;
  if (md && md.getUserMedia) {
    const original = md.getUserMedia.bind(md);
    md.getUserMedia = async (c) => { const s = await original(c); va.micStart = performance.now(); return s; };
  }
  const seen = new Map();
  let observer = null, timer = null;
  // The status line, read when it changes (a MutationObserver's callback runs right after
  // the change), not by polling: the probe must not take the cores it measures.
  const readStatus = () => {
    if (!va.active) return;
    const now = performance.now();
    const status = (document.querySelector('#turn-status') || {}).textContent || '';
    // A turn answered ahead shows its transcript and first words in one update: a stage
    // seen implies the ones before it, shown by then at the latest.
    const STAGES = ['Thinking', 'Answering', 'Speaking'];
    STAGES.forEach((key, i) => {
      if (!status.includes(key) || key in va.status) return;
      for (const before of STAGES.slice(0, i + 1)) if (!(before in va.status)) va.status[before] = now;
    });
    if ('Thinking' in va.status && status.includes('Ready') && !('Ready' in va.status)) va.status.Ready = now;
  };
  // The page player (ui.playback) schedules each chunk itself and records when it is heard,
  // from the Web Audio clock: its times are exact, so they are read when asked.
  const readPlayer = () => {
    const st = window.vaPlayer ? window.vaPlayer.stats : null;
    if (!va.active || !st || !(st.turn > va.fromTurn) || st.firstAt === null || va.via === 'audio') return;
    if (performance.now() < st.firstAt) return;  // scheduled, not heard yet
    va.via = 'player';
    va.first = st.firstAt;
    const late = st.gaps.filter((g) => g.s * 1000 > STALL_MIN_MS);
    va.stalls = late.map((g) => g.s);
    va.stallAt = late.map((g) => [g.chunks, g.audioS]);
    va.played = st.audioS;
    va.endAt = st.endAt;
  };
  // Without that player (Gradio's own streamed <audio>) only polling its media clock tells.
  const pollAudio = () => {
    if (!va.active) return;
    const now = performance.now();
    readStatus();
    document.querySelectorAll('#reply-audio audio').forEach((a) => {
      const t = a.currentTime, prev = seen.get(a);
      seen.set(a, t);
      if (prev === undefined || a.paused || !(t > prev + 1e-4)) return;
      va.via = 'audio';
      if (va.first === null) va.first = now;
      else if (va.lastAdvance !== null) {
        const gap = (now - va.lastAdvance) - (t - prev) * 1000;
        if (gap > STALL_MIN_MS) va.stalls.push(gap / 1000);
      }
      va.lastAdvance = now;
      va.played += t - prev;
    });
  };
  va.reset = () => { va.active = true; va.first = null; va.stalls = []; va.stallAt = []; va.status = {};
                     va.lastAdvance = null; va.endAt = null; va.played = 0; va.micStart = null;
                     va.via = null;
                     va.fromTurn = window.vaPlayer ? window.vaPlayer.stats.turn : -1;
                     if (observer) observer.disconnect();
                     const line = document.querySelector('#turn-status');
                     if (line) {
                       observer = new MutationObserver(readStatus);
                       observer.observe(line, {subtree: true, childList: true, characterData: true});
                     }
                     // A page whose player never connected (no streamed audio) plays <audio>.
                     const player = window.vaPlayer && window.vaPlayer.ready;
                     if (!player && timer === null) timer = setInterval(pollAudio, POLL_MS); };
  va.has = (key) => { readStatus(); return key in va.status; };
  // Played out and quiet for `ms`: the page player knows when its audio ends; an <audio>
  // element's clock must have stood still that long.
  va.settled = (ms) => { readPlayer();
                         return va.first !== null && performance.now() - (va.endAt ?? va.lastAdvance) > ms; };
  va.snapshot = () => { readStatus(); readPlayer(); return JSON.parse(JSON.stringify(va)); };
})();
""".replace("STALL_MIN_MS", str(STALL_MIN_MS)).replace("POLL_MS", str(POLL_MS))

# The app, with the random LLM scripted to a real reply (as in the pipeline bench) and the
# random speech recogniser to a real question's words.
LAUNCHER = """
import sys
from voice_agent.bench.pipeline import ScriptedLLM, ScriptedSTT, reply_pieces
from voice_agent.pipeline import models

def scripted_llm(settings, progress):
    return ScriptedLLM(models._load_llm(settings, progress), reply_pieces())

def scripted_stt(settings, progress):
    return ScriptedSTT(models._load_stt(settings, progress))

if {script_llm}:
    models.DEFAULT_LOADERS["llm"] = scripted_llm
if {script_stt}:
    models.DEFAULT_LOADERS["stt"] = scripted_stt
import app
sys.exit(app.main(["--host", "127.0.0.1", "--port", "{port}"]))
"""


def speech_end_s(path: Path, threshold: float = 0.02) -> float:
    """Seconds from the clip's start to its last sample louder than `threshold` (full scale 1)."""
    with wave.open(str(path)) as w:
        rate, width = w.getframerate(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
        channels = w.getnchannels()
    assert width == 2, "the bench clip is 16-bit PCM"
    samples = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)[:, 0] / 32768.0
    loud = np.nonzero(np.abs(samples) > threshold)[0]
    return float(loud[-1] + 1) / rate if loud.size else 0.0


def _health(base: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
            return json.loads(r.read())
    except Exception:
        return None


def _wait_ready(base: str, proc: subprocess.Popen, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited ({proc.returncode}): {log.read_text()[-2000:]}")
        snap = _health(base) or {}
        states = {c: (e or {}).get("status") for c, e in (snap.get("models") or {}).items()}
        if states and all(s in ("ready", "failed") for s in states.values()):
            if any(s == "failed" for s in states.values()):
                raise RuntimeError(f"a model failed to load: {states}")
            return snap
        time.sleep(0.5)
    raise RuntimeError(f"the models did not load in {START_TIMEOUT_S:.0f} s")


def _turn(page: Any, mode: str, clip_s: float, speech_end: float) -> dict[str, Any]:
    """One spoken turn; its in-page stage times relative to the end of speech."""
    page.evaluate("window.__va.reset()")
    if mode == "record":
        mic = page.locator("#talk-mic")
        mic.get_by_role("button", name="Record", exact=True).click()
        page.wait_for_function("window.__va.micStart !== null", timeout=30_000)
        page.wait_for_timeout(int((clip_s + 0.3) * 1000))
        end = page.evaluate("performance.now()")
        mic.get_by_role("button", name="Stop recording", exact=True).click()
    else:
        page.locator("#hands-free-mic").get_by_role("button", name="Start listening").click()
        page.wait_for_function("window.__va.micStart !== null", timeout=30_000)
        end = page.evaluate("window.__va.micStart") + speech_end * 1000
    # Polled every 100 ms, not at every frame (Playwright's default): the probe's own times
    # are exact, only noticing that they are in may wait.
    page.wait_for_function(
        "window.__va.has('Ready')", polling=WAIT_POLL_MS, timeout=int(TURN_TIMEOUT_S * 1000)
    )
    # Wait for the voice to finish (the next turn must not hear this one): it played, and
    # its media clock has stood still for SETTLE_S.
    page.wait_for_function(
        f"window.__va.settled({SETTLE_S * 1000})",
        polling=WAIT_POLL_MS,
        timeout=int(TURN_TIMEOUT_S * 1000),
    )
    probe = page.evaluate("window.__va.snapshot()")
    if mode == "hands-free":
        page.locator("#hands-free-mic").get_by_role("button", name="Stop listening").click()
    page.wait_for_timeout(500)

    def since(stamp: float | None) -> float | None:
        return None if stamp is None else round((stamp - end) / 1000, 3)

    status = probe["status"]
    stalls = probe["stalls"]
    return {
        "mode": mode,
        "transcript_s": since(status.get("Thinking")),
        "first_token_s": since(status.get("Answering") or status.get("Speaking")),
        "first_audio_heard_s": since(probe["first"]),
        "turn_done_s": since(status.get("Ready")),
        "audio_played_s": round(probe["played"], 2),
        "stalls": len(stalls),
        "longest_stall_s": round(max(stalls, default=0.0), 3),
        "stall_s_total": round(sum(stalls), 3),
        # Where each stall came: after how many chunks and seconds of the reply's audio.
        "stall_after": [
            {"chunks": n, "audio_s": round(s, 2)} for n, s in probe.get("stallAt") or []
        ],
        "latency_line": page.locator("#chat .turn-latency").last.inner_text(),
        "heard_via": probe["via"],
    }


def _page_state(page: Any) -> str:
    """What the page showed when a turn did not finish: status, the last message, the probe."""
    try:
        return json.dumps(
            page.evaluate(
                "({status: (document.querySelector('#turn-status') || {}).innerText,"
                " hands_free: (document.querySelector('#hands-free-status') || {}).innerText,"
                " last: [...document.querySelectorAll('#chat .message')].slice(-2)"
                ".map(m => m.innerText.slice(0, 200)),"
                " probe: window.__va, player: window.vaPlayer && window.vaPlayer.stats})"
            )
        )[:1500]
    except Exception as exc:
        return f"(page state unreadable: {exc})"


def _models(root: Path) -> tuple[dict[str, str], dict[str, bool], dict[str, str]]:
    """Model variables for the app, which models are scripted (random weights: the LLM's
    reply and the STT's words), and what each model is."""
    from voice_agent.bench.pipeline import build_llm
    from voice_agent.testing.tiny_piper import build_shaped as build_piper

    env: dict[str, str] = {}
    about: dict[str, str] = {}
    for part, variable in MODEL_VARIABLES.items():
        if os.environ.get(variable):
            env[variable] = os.environ[variable]
            about[part] = os.environ[variable]
    if "llm" not in env:
        size = os.environ.get("BENCH_LLM_SIZE", "1.5B")
        if size not in ("0.5B", "1.5B"):
            raise ValueError(f"BENCH_LLM_SIZE must be 0.5B or 1.5B, not {size!r}")
        env["MODEL_SERVER_MODEL_NAME"] = str(build_llm(root / "llm", size=size))  # type: ignore[arg-type]
        about["llm"] = (
            f"Qwen2.5-{size} shape, random weights, scripted reply (bench.pipeline.REPLY)"
        )
    if "stt" not in env:
        path, about["stt"] = build_default_stt(root / "stt")
        about["stt"] += (
            ", scripted words (bench.pipeline.QUESTIONS), decoding their tokens"
            " (bench.pipeline.decode_tokens)"
        )
        env["STT_MODEL_NAME"] = str(path)
    if "tts" not in env:
        # The CPU default voice (Piper, onnxruntime), a medium voice's widths.
        env["TTS_MODEL_NAME"] = str(build_piper(root / "tts"))
        env["TTS_BACKEND"] = "piper"
        about["tts"] = "Piper medium shape (ONNX), random weights"
    scripted = {part: not os.environ.get(MODEL_VARIABLES[part]) for part in ("llm", "stt")}
    return env, scripted, about


def build_default_stt(out: Path, model_id: str | None = None) -> tuple[Path, str]:
    """A random-weight recogniser shaped like `model_id` (default: the CPU default,
    `DEFAULT_STT_CPU`) that decodes 16 tokens, and what it is."""
    from voice_agent.core.config import DEFAULT_STT_CPU, names_moonshine

    model_id = model_id or DEFAULT_STT_CPU
    if names_moonshine(model_id):
        from voice_agent.testing.tiny_moonshine import build_shaped

        size: Literal["tiny", "base"] = "tiny" if "tiny" in model_id.lower() else "base"
        path = build_shaped(out, size, decode_tokens=16)
        return path, f"moonshine-{size} shape, random weights, 16 tokens"
    from voice_agent.testing.tiny_whisper import SHAPES, build_whisper

    path = build_whisper(
        out, SHAPES["base"], text_tokens=50256, multilingual=False, languages=99, max_length=16
    )
    return path, "whisper-base.en shape, random weights, 16 tokens"


def run(quick: bool = False) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from voice_agent.testing.paths import REPO_ROOT
    from voice_agent.testing.server import free_port

    chromium = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    if not chromium.exists():
        return {"error": f"{chromium} is missing (apt-get install chromium, or set CHROMIUM)"}
    turns = 2 if quick else 3
    modes = MODES[:1] if quick else MODES  # --quick: record/stop only
    clip = REPO_ROOT / "assets" / CLIP
    with wave.open(str(clip)) as w:
        clip_s = w.getnframes() / w.getframerate()
    speech_end = speech_end_s(clip)
    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-voice-") as tmp:
        root = Path(tmp)
        env_models, scripted, about = _models(root)
        port = free_port()
        env = {
            **os.environ,
            **env_models,
            "HF_HUB_OFFLINE": "1",
            "LLM_DEVICE": os.environ.get("LLM_DEVICE", "cpu"),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONUNBUFFERED": "1",
        }
        log = root / "app.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    LAUNCHER.format(
                        script_llm=scripted["llm"], script_stt=scripted["stt"], port=port
                    ),
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"
        try:
            t0 = time.perf_counter()
            _wait_ready(base, proc, log)
            load_s = time.perf_counter() - t0
            args = [
                "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--autoplay-policy=no-user-gesture-required",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={clip}%noloop",
            ]  # fmt: skip
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(chromium), args=args)
                try:
                    page = browser.new_page()
                    page.add_init_script(PROBE_JS)
                    page.goto(base, wait_until="domcontentloaded")
                    page.locator("#talk-mic").wait_for(timeout=60_000)
                    page.wait_for_timeout(2000)  # the first status poll and model banner
                    for mode in modes:
                        try:
                            if mode == "hands-free":
                                page.locator("#hands-free input[type=checkbox]").check()
                                page.locator("#hands-free-mic").wait_for()
                            # One warm-up turn per mode: first-call costs are not the turn's.
                            # Each turn then starts a conversation: the scripted reply is not
                            # the text the random model wrote, so a later turn would prefill
                            # it again, which a real model's own reply never needs.
                            for k in range(turns + 1):
                                row = _turn(page, mode, clip_s, speech_end)
                                if k:
                                    rows.append(row)
                                page.get_by_role("button", name="Clear conversation").click()
                                page.wait_for_timeout(500)
                        except Exception as exc:  # reported; the other mode still runs
                            failed[mode] = f"{type(exc).__name__}: {str(exc)[:300]}"
                            failed[mode + " (page)"] = _page_state(page)
                finally:
                    browser.close()
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    return summarize(
        rows, failed=failed, load_s=round(load_s, 1), models=about, clip_s=round(clip_s, 2),
        speech_end_s=round(speech_end, 2),
    )  # fmt: skip


def _p(values: list[float], q: float) -> float | None:
    from voice_agent.bench.common import percentile

    return round(percentile(values, q), 3) if values else None


def summarize(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The section's JSON: per-mode medians, the headline percentiles and every row."""
    heard = [r["first_audio_heard_s"] for r in rows if r["first_audio_heard_s"] is not None]
    by_mode = {}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        by_mode[mode] = {
            key: round(statistics.median(v), 3)
            if (v := [r[key] for r in mine if r[key] is not None])
            else None
            for key in ("transcript_s", "first_token_s", "first_audio_heard_s", "longest_stall_s")
        }
    return {
        "first_audio_heard_s": {"p50": _p(heard, 50), "p90": _p(heard, 90)},
        "longest_stall_s": max((r["longest_stall_s"] for r in rows), default=None),
        "stall_s_total": round(sum(r["stall_s_total"] for r in rows), 3),
        "by_mode": by_mode,
        "rows": rows,
        **extra,
        "notes": (
            "Seconds from the end of speech (record: the click on Stop; hands-free: the clip's "
            "speech end) to the transcript shown, the first reply word shown and the first "
            f"audio playing in the page (headless Chromium, fake microphone playing {CLIP}); "
            "a stall is wall time after playback started that the reply's media clock did not "
            "cover. One warm-up turn per mode, then fresh conversations."
        ),
    }
