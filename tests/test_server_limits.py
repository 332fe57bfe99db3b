"""`voice_agent.server.admission` on its own: admission, the worker pump, cancellation and deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from voice_agent.core.cancel import CancelToken
from voice_agent.core.errors import BusyError
from voice_agent.server import admission
from voice_agent.server.admission import EngineGate, RequestTimeoutError, pump, run_gated


def test_admission_refuses_beyond_the_queue_at_once() -> None:
    gate = EngineGate("tts", queue_size=2)
    for _ in range(3):  # one running + two waiting
        gate.admit()
    t0 = time.monotonic()
    with pytest.raises(BusyError, match="queue size 2") as info:
        gate.admit()
    assert time.monotonic() - t0 < 0.1 and info.value.retry_after_s >= 1
    gate.leave()
    gate.admit()  # a place freed up


def test_pump_yields_in_order_and_releases_the_engine() -> None:
    gate = EngineGate("llm", queue_size=1)

    async def collect() -> list[int]:
        return [x async for x in pump(gate, lambda tok: iter(range(20)), token=CancelToken(),
                                      timeout_s=5)]  # fmt: skip

    assert asyncio.run(collect()) == list(range(20))
    time.sleep(0.05)
    assert gate.admitted == 0 and not gate.lock.locked()


def test_consumer_leaving_early_closes_the_engine_generator() -> None:
    gate = EngineGate("llm", queue_size=1)
    closed = threading.Event()
    token = CancelToken()

    def produce(tok: CancelToken) -> Iterator[int]:
        try:
            for i in range(10_000):
                time.sleep(0.001)
                yield i
        finally:
            closed.set()

    async def take_three() -> list[int]:
        out = []
        stream = pump(gate, produce, token=token, timeout_s=5)
        async for x in stream:
            out.append(x)
            if len(out) == 3:
                break
        await stream.aclose()
        return out

    assert asyncio.run(take_three()) == [0, 1, 2]
    assert closed.wait(2) and token.cancelled
    deadline = time.monotonic() + 2
    while gate.lock.locked() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not gate.lock.locked()


def test_cancelled_while_queued_ends_at_once() -> None:
    """Regression: a worker cancelled while waiting for the engine delivered nothing, so
    its request waited out the whole deadline before giving up."""
    gate = EngineGate("stt", queue_size=1)
    gate.lock.acquire()  # someone else holds the engine
    token = CancelToken()

    async def wait_then_cancel() -> float:
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, token.cancel)
        t0 = time.monotonic()
        with pytest.raises(RequestTimeoutError, match="cancelled"):
            await run_gated(gate, lambda tok: 1, token=token, timeout_s=30)
        return time.monotonic() - t0

    try:
        assert asyncio.run(wait_then_cancel()) < 2
    finally:
        gate.lock.release()
    time.sleep(0.2)
    assert gate.admitted == 0


def test_deadline_cancels_the_work_and_waiting_past_it_is_busy() -> None:
    gate = EngineGate("llm", queue_size=1)
    token = CancelToken()

    def slow(tok: CancelToken) -> str:
        while not tok.cancelled:
            time.sleep(0.01)
        return "stopped"

    async def run_slow() -> None:
        await run_gated(gate, slow, token=token, timeout_s=0.2)

    with pytest.raises(RequestTimeoutError, match="0.2 s"):
        asyncio.run(run_slow())
    assert token.reason == "timeout"

    gate.lock.acquire()
    try:
        with pytest.raises(BusyError, match="stayed busy"):
            asyncio.run(run_gated(gate, lambda tok: 1, token=CancelToken(), timeout_s=0.2))
    finally:
        gate.lock.release()


def test_worker_noticing_the_deadline_first_still_answers_busy() -> None:
    """Regression: when the queued worker saw the deadline before the consumer's own timer
    fired (a busy event loop), it ended the stream bare, so the request got a 504
    "cancelled" (or an empty 200 stream) instead of 503 busy with Retry-After."""
    gate = EngineGate("llm", queue_size=1)
    gate.lock.acquire()  # someone else holds the engine for longer than the deadline

    async def queued_behind_a_long_request() -> None:
        call = asyncio.ensure_future(
            run_gated(gate, lambda tok: 1, token=CancelToken(), timeout_s=0.2)
        )
        await asyncio.sleep(0.05)  # the worker is now waiting for the engine
        time.sleep(0.5)  # the loop stalls past the deadline: the worker notices it first
        with pytest.raises(BusyError, match="stayed busy"):
            await call

    try:
        asyncio.run(queued_behind_a_long_request())
    finally:
        gate.lock.release()


def test_a_stalled_reader_bounds_how_far_the_worker_runs_ahead() -> None:
    """Guards back-pressure (an unbounded `PUMP_BUFFER`, e.g. 10**9): a reader that stops
    reading must stop the engine within a few items, not let it run on to the end and pile
    its whole output (tokens, audio chunks) up in memory."""
    gate = EngineGate("tts", queue_size=1)
    produced = [0]

    def produce(tok: CancelToken) -> Iterator[int]:
        for i in range(1000):  # all 1000 take a millisecond or two when nothing holds them
            produced[0] += 1
            yield i

    async def read_three_then_stall() -> tuple[list[int], int]:
        stream = pump(gate, produce, token=CancelToken(), timeout_s=30)
        got = [await stream.__anext__() for _ in range(3)]
        # Stall until the worker has stopped moving (it is blocked on the full buffer).
        last, still_since = -1, time.monotonic()
        while time.monotonic() - still_since < 0.5:
            await asyncio.sleep(0.02)
            if produced[0] != last:
                last, still_since = produced[0], time.monotonic()
        ahead = produced[0] - len(got)
        got += [x async for x in stream]  # reading again lets the rest through
        return got, ahead

    got, ahead = asyncio.run(read_three_then_stall())
    assert got == list(range(1000))
    # The worker filled the buffer and then waited: PUMP_BUFFER items handed over, plus
    # the one it produced and is waiting to hand over; PUMP_BUFFER itself is small.
    assert admission.PUMP_BUFFER <= ahead <= admission.PUMP_BUFFER + 1, ahead
    assert ahead <= 32, f"the worker ran {ahead} items ahead of a stalled reader"
