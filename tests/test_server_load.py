"""The REST server under load and misuse: bounded queues answer 503 + Retry-After at once,
timeouts answer 504 and stop the engine, client disconnects cancel generation, and the
server keeps answering afterwards."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.server_fakes import FakeLLM, FakeModels, FakeTTS, settings_with, wait_for
from voice_agent.server.app import create_app
from voice_agent.testing.server import LiveServer


def test_twenty_parallel_requests_with_a_queue_of_four() -> None:
    tts = FakeTTS(delay_s=0.2, chunks=2)  # 0.4 s per request
    models = FakeModels(settings_with(MODEL_SERVER_QUEUE_SIZE="4"), tts=tts)
    limits = httpx.Limits(max_connections=20)
    with (
        LiveServer(create_app(models)) as server,
        httpx.Client(base_url=server.url, timeout=30, limits=limits) as http,
    ):

        def speak(i: int) -> tuple[int, httpx.Response, float]:
            body = {"text": "" if i % 5 == 4 else f"request {i}"}  # every fifth is bad input
            t0 = time.monotonic()
            r = http.post("/tts", json=body)
            return i, r, time.monotonic() - t0

        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(speak, range(20)))

        bad = [r for i, r, _ in results if i % 5 == 4]
        good = [(r, s) for i, r, s in results if i % 5 != 4]
        assert all(r.status_code == 400 for r in bad)
        statuses = sorted(r.status_code for r, _ in good)
        assert set(statuses) <= {200, 503}, statuses
        ok = statuses.count(200)
        busy = [(r, s) for r, s in good if r.status_code == 503]
        # One runs, four wait; the rest are refused (a few more may fit as the first finish).
        assert 5 <= ok <= 10, statuses
        assert len(busy) >= 6, statuses
        for r, seconds in busy:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["code"] == "busy"
            assert seconds < 1.0  # refused at once, not after waiting in line
        assert tts.max_active == 1  # the engine served one request at a time
        # Still healthy and serving.
        assert http.get("/health").status_code == 200
        assert http.post("/tts", json={"text": "again"}).status_code == 200


def test_a_busy_engine_does_not_block_the_others() -> None:
    tts = FakeTTS(delay_s=0.5, chunks=2)
    models = FakeModels(settings_with(MODEL_SERVER_QUEUE_SIZE="0"), tts=tts)
    with LiveServer(create_app(models)) as server, ThreadPoolExecutor(2) as pool:
        slow = pool.submit(httpx.post, server.url + "/tts", json={"text": "long"}, timeout=30)
        assert wait_for(lambda: tts.active == 1)
        r = httpx.post(server.url + "/tts", json={"text": "second"}, timeout=30)
        assert r.status_code == 503  # queue size 0: nobody may wait
        r = httpx.post(server.url + "/generate", json={"prompt": "hi"}, timeout=30)
        assert r.status_code == 200
        assert slow.result().status_code == 200


def test_timeout_answers_504_and_stops_the_engine() -> None:
    llm = FakeLLM(delay_s=0.05, words=200)  # 10 s of work
    models = FakeModels(settings_with(MODEL_SERVER_TIMEOUT_S="0.5"), llm=llm)
    with LiveServer(create_app(models)) as server:
        t0 = time.monotonic()
        r = httpx.post(server.url + "/generate", json={"prompt": "x"}, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert time.monotonic() - t0 < 3
        assert wait_for(lambda: llm.cancelled == 1 and llm.active == 0)
        llm.words = 2
        assert httpx.post(server.url + "/generate", json={"prompt": "x"}).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/generate", {"prompt": "x", "stream": True}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": True}),
    ],
)
def test_client_disconnect_mid_stream_cancels_generation(path: str, body: dict) -> None:
    """Regression: the engine's generator sits in a reference cycle with its ReplyStream
    (it sets `stream.reply`), so merely dropping it on disconnect left the generation
    suspended until the garbage collector ran; the worker now closes it explicitly."""
    llm = FakeLLM(delay_s=0.02, words=1000)  # 20 s if nobody stops it
    with LiveServer(create_app(FakeModels(llm=llm))) as server:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            with http.stream("POST", path, json=body) as r:
                assert r.status_code == 200
                events = 0
                for line in r.iter_lines():
                    events += line.startswith("data: ")
                    if events >= 3:
                        break
            # Leaving the block closed the connection mid-stream.
        assert wait_for(lambda: llm.cancelled == 1 and llm.active == 0)
        assert llm.calls == 1
        # The engine is free again at once.
        llm.words = 2
        r = httpx.post(server.url + "/generate", json={"prompt": "x"}, timeout=5)
        assert r.status_code == 200


def test_client_disconnect_mid_speech_stream_cancels_synthesis() -> None:
    tts = FakeTTS(delay_s=0.02, chunks=1000)
    with LiveServer(create_app(FakeModels(tts=tts))) as server:
        with httpx.stream(
            "POST", server.url + "/v1/audio/speech", json={"input": "hi"}, timeout=60
        ) as r:
            assert r.status_code == 200
            received = 0
            for data in r.iter_bytes():
                received += len(data)
                if received > 10_000:
                    break
        assert wait_for(lambda: tts.cancelled == 1 and tts.active == 0)


def test_client_giving_up_on_a_plain_request_cancels_it() -> None:
    llm = FakeLLM(delay_s=0.05, words=200)
    with LiveServer(create_app(FakeModels(llm=llm))) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/generate", json={"prompt": "x"}, timeout=0.3)
        assert wait_for(lambda: llm.cancelled == 1 and llm.active == 0)
