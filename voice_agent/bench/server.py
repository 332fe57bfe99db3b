"""Benchmark section `server`: REST throughput and latency on the tiny checkpoints.

`python -m voice_agent serve` runs in its own process (as in production) on the
tiny LLM, Whisper and VITS; this process is the client. For `/health`, `/stt`
(a 1 s speech clip) and `/tts` (a short sentence) it measures requests per
second and p50/p95 latency with 1 and 8 concurrent clients, then the same STT
and TTS work called directly on engines loaded here, so the difference is what
the HTTP layer adds (connection, multipart parsing, JSON, WAV encoding,
admission control and thread hand-offs). Last, N = 1, 2, 4, 8 conversations
at once on those engines, as N browser tabs of one app process
(`bench/conversations.py`): first audio p50/p90 and how many were refused.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from voice_agent.bench.common import percentile

STARTUP_TIMEOUT_S = 120
TTS_TEXT = "Hello there, how are you today?"


def _load(
    call: Callable[[Any], int], clients: int, requests: int, http: Any
) -> dict[str, float | int]:
    """`requests` calls spread over `clients` threads: rps, p50/p95 ms and failures."""
    latencies: list[float] = []
    statuses: list[int] = []

    def one(_: int) -> None:
        t0 = time.perf_counter()
        try:
            status = call(http)
        except Exception:  # a timeout or dropped connection counts as a failure
            status = 0
        latencies.append(time.perf_counter() - t0)
        statuses.append(status)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    return {
        "rps": round(requests / wall, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p95_ms": round(percentile(latencies, 95) * 1000, 1),
        "failed": sum(status != 200 for status in statuses),
    }


def run(quick: bool = False) -> dict:
    import httpx

    from voice_agent.audio.io import SAMPLE_RATE, encode_wav, load_audio
    from voice_agent.bench import conversations
    from voice_agent.core.config import load_settings
    from voice_agent.pipeline.models import LoadedModels
    from voice_agent.testing.paths import REPO_ROOT
    from voice_agent.testing.server import ServeProcess, tiny_model_env
    from voice_agent.testing.tiny import make_tiny_models

    # (requests with 1 client, requests with 8 clients) per route; Whisper dominates the time.
    counts = {"/health": (100, 100), "/stt": (3, 8), "/tts": (6, 16)}
    if not quick:
        counts = {"/health": (400, 400), "/stt": (4, 8), "/tts": (24, 32)}
    pairs = 10 if quick else 30  # interleaved direct/HTTP pairs for the overhead
    clip = encode_wav(SAMPLE_RATE, load_audio(REPO_ROOT / "assets" / "hello.wav")[:SAMPLE_RATE])
    # Silence: the speech gate answers without running Whisper, so the HTTP layer is all
    # there is to measure.
    silence = encode_wav(SAMPLE_RATE, load_audio(REPO_ROOT / "assets" / "silence.wav"))

    calls: dict[str, Callable[[Any], int]] = {
        "/health": lambda http: http.get("/health").status_code,
        "/stt": lambda http: (
            http.post("/stt", files={"file": ("clip.wav", clip, "audio/wav")}).status_code
        ),
        "/tts": lambda http: http.post("/tts", json={"text": TTS_TEXT}).status_code,
    }
    rows: list[dict] = []
    overhead: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        make_tiny_models(tmpdir / "tiny", parts=("llm", "stt", "vits"))
        # Every benchmark request is served; the queue limit is tested elsewhere.
        env = {**tiny_model_env(tmpdir / "tiny", tmpdir), "MODEL_SERVER_QUEUE_SIZE": "32"}

        # The same work on engines loaded in this process, for the direct-call baseline.
        models = LoadedModels(load_settings(env)).load_all()
        stt, tts = models.require("stt"), models.require("tts")
        max_seconds = models.settings.max_audio_seconds

        def direct_silence() -> None:
            stt.transcribe((SAMPLE_RATE, load_audio(silence, max_seconds=max_seconds)))

        def http_silence(http: Any) -> int:
            files = {"file": ("silence.wav", silence, "audio/wav")}
            return http.post("/stt", files=files).status_code

        def direct_tts() -> None:
            encode_wav(*tts.synthesize(TTS_TEXT))

        with ServeProcess({**env, "LOG_LEVEL": "WARNING"}) as serve:
            serve.wait_healthy(STARTUP_TIMEOUT_S)
            limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
            with httpx.Client(base_url=serve.url, timeout=120, limits=limits) as http:
                for route, call in calls.items():
                    call(http)  # warm-up
                    for clients, requests in zip((1, 8), counts[route], strict=True):
                        stats = _load(call, clients, requests, http)
                        rows.append(
                            {"what": f"{route} over HTTP", "clients": clients,
                             "requests": requests, **stats}
                        )  # fmt: skip
                # Direct and HTTP calls alternate, so both see the same background load.
                for what, direct, over_http, n in (
                    ("/stt of 2 s silence", direct_silence, http_silence, pairs),
                    ("/tts", direct_tts, calls["/tts"], max(3, pairs // 3)),
                ):
                    direct()
                    over_http(http)
                    direct_s, extra_s = [], []
                    for _ in range(n):
                        t0 = time.perf_counter()
                        direct()
                        t1 = time.perf_counter()
                        over_http(http)
                        t2 = time.perf_counter()
                        direct_s.append(t1 - t0)
                        extra_s.append((t2 - t1) - (t1 - t0))
                    rows.append(
                        {"what": f"{what}: direct engine call", "clients": 1, "requests": n,
                         "rps": round(1 / percentile(direct_s, 50), 1),
                         "p50_ms": round(percentile(direct_s, 50) * 1000, 1),
                         "p95_ms": round(percentile(direct_s, 95) * 1000, 1), "failed": 0}
                    )  # fmt: skip
                    overhead[what] = round(percentile(extra_s, 50) * 1000, 1)
        # N tabs of one app: the engines loaded here, with the queue size the app has today.
        default_queue = load_settings({}).server_queue_size
        rows += conversations.measure(
            models,
            REPO_ROOT / "assets" / "hello.wav",
            rounds=1 if quick else 3,
            queue_size=default_queue,
        )
    return {
        "rows": rows,
        "http_overhead_ms_p50": overhead,
        "notes": (
            "Tiny random-weight checkpoints on CPU, server in its own process: the numbers show "
            "the server's own cost and queueing, not model speed (the tiny Whisper writes random "
            "words until its token limit, hence its seconds). Engines serve one request at a "
            "time, so 8 clients raise throughput only where HTTP work (not the model) dominates; "
            "their extra latency is time waiting in the engine's queue. /stt sends 1 s of speech "
            "(multipart); /tts returns a whole WAV. HTTP overhead = median, over alternating "
            "pairs, of (time over HTTP - time of the same work called directly). "
            "N tabs: N sessions on one Agent in this process each speak assets/hello.wav "
            "(3.4 s) at once, as N browser tabs; first audio from the end of speech, p50/p90 "
            "over every served turn; `busy` = turns refused because an engine's queue was full "
            f"(size {load_settings({}).server_queue_size} is the default)."
        ),
    }
