"""Benchmark part of section `server`: N conversations at once in one process (browser tabs).

Each of N sessions on one `Agent` speaks the 3.4 s `assets/hello.wav` at the
same moment (a barrier), as N tabs of the app would; every turn passes the same
admission gates (one engine call at a time each, `MODEL_SERVER_QUEUE_SIZE` more
waiting). It records the time from the end of each user's speech to the first
audio of the answer: p50 and p90 over every served turn of every round, and how
many turns were refused as busy (the gate's queue was full). N = 8 runs twice:
with the default queue (4, what the app gives today) and with a queue of 8.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from voice_agent.bench.common import percentile

COUNTS = (1, 2, 4, 8)
ROOMY_QUEUE = 8  # the N = 8 row again with every turn admitted
MAX_NEW_TOKENS = 48  # a short spoken reply; the tiny LLM writes random words up to it


def one_turn(agent: Any, clip: Path, start: threading.Barrier) -> tuple[float | None, str]:
    """(seconds from the end of speech to first audio or None, the end: done/busy/error code)."""
    session = agent.new_session(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    start.wait()
    first: float | None = None
    end = "done"
    for event in agent.run_turn(session, audio=str(clip), speech_ended_at=time.perf_counter()):
        if event.kind == "done" and event.timings is not None:
            first = event.timings.first_audio
        elif event.kind == "error":
            end = event.code or "error"
    return first, end


def measure(models: Any, clip: Path, *, rounds: int, queue_size: int) -> list[dict[str, Any]]:
    """Rows for N = 1, 2, 4, 8 conversations at once (and 8 with a queue of 8), `rounds` each.

    Args:
        models: loaded `LoadedModels` (the tiny checkpoints).
        clip: the spoken question.
        queue_size: the gates' queue size during the measurement (the default, 4, is
            what the app gives today).
    """
    from voice_agent.pipeline.agent import Agent

    agent = Agent(models)
    one_turn(agent, clip, threading.Barrier(1))  # warm-up
    rows = []
    for n, queue in [(n, queue_size) for n in COUNTS] + [(COUNTS[-1], ROOMY_QUEUE)]:
        for gate in models.gates.values():
            gate.queue_size = queue
        firsts: list[float] = []
        ends: list[str] = []
        t0 = time.perf_counter()
        for _ in range(rounds):
            start = threading.Barrier(n)
            with ThreadPoolExecutor(max_workers=n) as pool:
                turns = [pool.submit(one_turn, agent, clip, start) for _ in range(n)]
                for first, end in (turn.result() for turn in turns):
                    ends.append(end)
                    if first is not None:
                        firsts.append(first)
        wall = time.perf_counter() - t0
        rows.append(
            {
                "what": f"N tabs' spoken turns -> first audio (queue {queue})",
                "clients": n,
                "requests": n * rounds,
                "rps": round(n * rounds / wall, 2),
                "p50_ms": round(percentile(firsts, 50) * 1000) if firsts else None,
                "p90_ms": round(percentile(firsts, 90) * 1000) if firsts else None,
                "failed": sum(end != "done" for end in ends),
                "busy": ends.count("busy"),
            }
        )
    return rows
