"""REST server on fake engines, over a real uvicorn server: every route's success path and
every bad-input path, health states, error mapping, body limits and CORS."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.server_fakes import (
    FakeLLM,
    FakeModels,
    FakeSTT,
    FakeTTS,
    assert_error,
    settings_with,
    sse_events,
    tone_wav,
)
from voice_agent.server.app import create_app
from voice_agent.testing.server import LiveServer


@pytest.fixture(scope="module")
def fakes() -> FakeModels:
    return FakeModels(settings_with(MAX_UPLOAD_MB="0.2", MAX_AUDIO_SECONDS="5"))


@pytest.fixture(scope="module")
def http(fakes: FakeModels) -> Iterator[httpx.Client]:
    with (
        LiveServer(create_app(fakes)) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        yield client


# --- /health ---------------------------------------------------------------------------------------


def test_health_reports_models_offline_and_versions(http: httpx.Client) -> None:
    r = http.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["ok"] is True and body["status"] == "ok" and body["reason"] is None
    for component in ("llm", "stt", "tts"):
        entry = body["models"][component]
        assert entry["status"] == "ready"
        assert entry["report"]["chosen"]["strategy"] == "fake"
        assert entry["queue"]["queue_size"] == 4
    assert body["models"]["llm"]["model_id"] == "fake-llm"
    assert body["models"]["llm"]["context_length"] == 512
    assert "enabled" in body["offline"]
    assert body["versions"]["voice_agent"]
    assert body["uptime_s"] >= 0
    assert body["settings"]["api_key"] is None


@pytest.mark.parametrize(
    ("status", "errors", "verdict", "words"),
    [
        ({"llm": "loading", "stt": "ready", "tts": "pending"}, {}, "loading", ["llm", "tts"]),
        (
            {"llm": "ready", "stt": "failed", "tts": "ready"},
            {"stt": "ran out of memory while loading"},
            "failed",
            ["stt failed", "out of memory"],
        ),
    ],
)
def test_health_is_503_with_the_reason_until_ready(
    status: dict, errors: dict, verdict: str, words: list[str]
) -> None:
    models = FakeModels(status=status, errors=errors)
    with LiveServer(create_app(models)) as server:
        r = httpx.get(server.url + "/health", timeout=60)
        assert r.status_code == 503
        body = r.json()
        assert body["ok"] is False and body["status"] == verdict
        for word in words:
            assert word in body["reason"]
        # The routes that need the missing model answer 503 at once, with the reason.
        r = httpx.post(
            server.url + "/tts" if "tts" in words else server.url + "/stt",
            json={"text": "hi"},
            timeout=60,
        )
        if "tts" in words:
            assert_error(r, 503, "tts", "loading")
            assert r.headers["Retry-After"]
        else:
            files = {"file": ("a.wav", tone_wav(), "audio/wav")}
            assert_error(
                httpx.post(server.url + "/stt", files=files, timeout=60), 503, "out of memory"
            )


def test_lazy_loading_pending_model_is_healthy() -> None:
    models = FakeModels(
        settings_with(MODEL_LOADING="lazy"),
        status={"llm": "pending", "stt": "ready", "tts": "ready"},
    )
    with LiveServer(create_app(models)) as server:
        r = httpx.get(server.url + "/health", timeout=60)
        assert r.status_code == 200 and r.json()["models"]["llm"]["status"] == "pending"


# --- /generate -------------------------------------------------------------------------------------


def test_generate_prompt_and_messages_with_sampling(http: httpx.Client, fakes: FakeModels) -> None:
    r = http.post("/generate", json={"prompt": "hello there"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == "echo: hello there "
    assert body["finish_reason"] == "stop" and body["model"] == "fake-llm"
    assert body["completion_tokens"] == 3

    r = http.post(
        "/generate",
        json={
            "messages": [
                {"role": "user", "content": "one"},
                {"role": "assistant", "content": "two"},
                {"role": "user", "content": "three four"},
            ],
            "system_prompt": "be brief",
            "temperature": 0,
            "top_p": 0.5,
            "max_new_tokens": 2,
            "stop": ["END"],
            "seed": 3,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "echo: three " and r.json()["finish_reason"] == "length"
    sent = fakes.llm.last_settings
    assert (sent.temperature, sent.top_p, sent.max_new_tokens, sent.stop, sent.seed) == (
        0,
        0.5,
        2,
        ("END",),
        3,
    )
    assert fakes.llm.last_system_prompt == "be brief"
    assert fakes.llm.last_messages[1] == {"role": "assistant", "content": "two"}


def test_generate_stream_sends_deltas_then_the_reply(http: httpx.Client) -> None:
    with http.stream("POST", "/generate", json={"prompt": "a b c", "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    deltas = [e["delta"] for e in events if "delta" in e]
    assert deltas == ["echo: ", "a ", "b ", "c "]
    assert events[-1]["done"] is True and events[-1]["text"] == "echo: a b c "


@pytest.mark.parametrize(
    ("kwargs", "status", "words"),
    [
        (
            {"content": b'{"prompt": "hi",', "headers": {"content-type": "application/json"}},
            400,
            ["malformed JSON"],
        ),
        ({"json": {}}, 400, ["messages", "prompt", "required"]),
        ({"content": b""}, 400, ["body is missing"]),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 400, ["JSON object"]),
        ({"json": ["prompt"]}, 400, ["JSON object"]),
        ({"json": {"prompt": "hi", "temperature": "hot"}}, 400, ["temperature", "number"]),
        ({"json": {"prompt": "hi", "temperature": 5}}, 400, ["temperature", "less than"]),
        ({"json": {"prompt": 42}}, 400, ["prompt", "string"]),
        ({"json": {"prompt": "hi", "max_new_tokens": 0}}, 400, ["max_new_tokens", "between"]),
        ({"json": {"prompt": "hi", "max_tokens": 10**6}}, 400, ["max_tokens", "between"]),
        ({"json": {"prompt": "hi", "colour": "red"}}, 400, ["colour"]),
        ({"json": {"prompt": "   "}}, 400, ["prompt", "empty"]),
        ({"json": {"prompt": "hi", "messages": []}}, 400, ["not both"]),
        ({"json": {"messages": []}}, 400, ["messages", "empty"]),
        ({"json": {"messages": [{"role": "user"}]}}, 400, ["messages.0.content", "required"]),
        ({"json": {"prompt": "x" * 60_001}}, 413, ["MAX_TEXT_CHARS"]),
        (
            {"json": {"messages": [{"role": "user", "content": "x" * 40_000}] * 2}},
            413,
            ["MAX_TEXT_CHARS"],
        ),
    ],
)
def test_generate_bad_input_is_a_clear_4xx(
    http: httpx.Client, kwargs: dict, status: int, words: list[str]
) -> None:
    assert_error(http.post("/generate", **kwargs), status, *words)


def test_engine_input_errors_keep_their_status(http: httpx.Client) -> None:
    # The fake LLM raises InputError("no user message") for an assistant-only list.
    r = http.post("/generate", json={"messages": [{"role": "assistant", "content": "hi"}]})
    assert_error(r, 400, "no user message")


# --- /stt ------------------------------------------------------------------------------------------


def test_stt_multipart_raw_body_and_language(http: httpx.Client, assets_dir: Path) -> None:
    audio = (assets_dir / "hello.wav").read_bytes()
    r = http.post("/stt", files={"file": ("hello.wav", audio, "audio/wav")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == "fake transcript" and body["model"] == "fake-whisper"
    assert body["duration_s"] == pytest.approx(3.4, abs=0.1)

    r = http.post(
        "/stt", files={"audio": ("a.wav", tone_wav(), "audio/wav")}, data={"language": "de"}
    )
    assert r.status_code == 200 and r.json()["language"] == "de"

    r = http.post("/stt?language=fr", content=tone_wav(), headers={"content-type": "audio/wav"})
    assert r.status_code == 200 and r.json()["language"] == "fr"
    r = http.post("/stt", content=tone_wav(), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "status", "words"),
    [
        ({"files": {"file": ("a.wav", b"", "audio/wav")}}, 400, ["empty"]),
        ({"content": b"", "headers": {"content-type": "audio/wav"}}, 400, ["empty"]),
        ({"files": {"file": ("a.wav", b"this is not audio at all" * 20, "audio/wav")}}, 400, []),
        ({"files": {"other": ("a.wav", tone_wav(), "audio/wav")}}, 400, ["file"]),
        ({"data": {"language": "en"}}, 415, ["content type"]),
        ({"json": {"audio": "aGVsbG8="}}, 415, ["multipart/form-data"]),
        ({"content": tone_wav(), "headers": {"content-type": "text/plain"}}, 415, ["text/plain"]),
        (
            {"files": {"file": ("a.wav", tone_wav(6.0, rate=8000), "audio/wav")}},
            413,
            ["MAX_AUDIO_SECONDS"],
        ),
        (
            {
                "content": tone_wav(),
                "params": {"language": "en; drop"},
                "headers": {"content-type": "audio/wav"},
            },
            400,
            ["language"],
        ),
        ({"files": {"file": ("a.wav", tone_wav(0.02), "audio/wav")}}, 400, ["at least"]),
    ],
)
def test_stt_bad_input_is_a_clear_4xx(
    http: httpx.Client, kwargs: dict, status: int, words: list[str]
) -> None:
    assert_error(http.post("/stt", **kwargs), status, *words)


def test_uploads_over_the_size_limit_are_refused(http: httpx.Client) -> None:
    big = b"RIFF" + b"\0" * 300_000  # limit in this module: 0.2 MB
    for route in ("/stt", "/v1/audio/transcriptions"):
        r = http.post(route, files={"file": ("big.wav", big, "audio/wav")})
        assert_error(r, 413, "MAX_UPLOAD_MB")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b"\0" * 50_000

    r = http.post("/stt", content=chunks(), headers={"content-type": "audio/wav"})
    assert_error(r, 413, "MAX_UPLOAD_MB")
    # A JSON body far beyond any text limit is refused before it is parsed.
    r = http.post(
        "/generate", content=b"[" * 1_000_000, headers={"content-type": "application/json"}
    )
    assert_error(r, 413, "MAX_TEXT_CHARS")
    assert http.get("/health").status_code == 200


# --- /tts ------------------------------------------------------------------------------------------


def test_tts_whole_wav_and_pcm(http: httpx.Client, fakes: FakeModels) -> None:
    r = http.post("/tts", json={"text": "hello"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    samples, rate = sf.read(io.BytesIO(r.content), dtype="float32")
    assert rate == 16_000 and len(samples) == 3 * 1600
    assert np.abs(samples).max() == pytest.approx(0.3, abs=0.01)

    r = http.post("/tts", json={"text": "hello", "format": "pcm", "voice": "Narrator"})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/pcm"
    assert r.headers["x-sample-rate"] == "16000" and len(r.content) == 2 * 3 * 1600
    assert fakes.tts.last_voice == "narrator"
    http.post("/tts", json={"text": "hello", "voice": "alloy"})
    assert fakes.tts.last_voice is None  # OpenAI's names map to the default voice


def test_tts_stream_is_chunked_wav(http: httpx.Client) -> None:
    with http.stream("POST", "/tts", json={"text": "hello", "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in r.headers
        data = b"".join(r.iter_bytes())
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    pcm = np.frombuffer(data[44:], dtype="<i2")
    assert len(pcm) == 3 * 1600
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 16_000 and len(samples) == 3 * 1600


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"text": ""}, 400, ["text", "empty"]),
        ({}, 400, ["text", "required"]),
        ({"text": None}, 400, ["text"]),
        ({"text": "hi", "voice": "gandalf"}, 400, ["gandalf", "narrator", "alloy"]),
        ({"text": "hi", "format": "mp3"}, 400, ["mp3", "wav, pcm"]),
        ({"text": "hi", "stream": True, "voice": "gandalf"}, 400, ["gandalf"]),
        ({"text": "x" * 60_001}, 413, ["MAX_TEXT_CHARS"]),
        ({"text": "hi", "stream": "sometimes"}, 400, ["stream"]),
    ],
)
def test_tts_bad_input_is_a_clear_4xx(
    http: httpx.Client, body: dict, status: int, words: list[str]
) -> None:
    assert_error(http.post("/tts", json=body), status, *words)


# --- errors that are not the caller's ---------------------------------------------------------------


def test_unknown_route_and_method_are_json(http: httpx.Client) -> None:
    assert_error(http.get("/nope"), 404, "/nope")
    assert_error(http.get("/generate"), 405)


class BrokenLLM(FakeLLM):
    def stream_reply(self, *args: object, **kwargs: object):  # type: ignore[override]
        raise RuntimeError("secret internal detail /home/x/model.py line 3")


def test_engine_crash_is_a_500_without_details() -> None:
    """Regression: Starlette's last-resort handler answered the 500 and then re-raised, so
    uvicorn dropped the keep-alive connection and the client's next request on it failed
    with a connection reset. Now the 500 is answered and the connection stays usable."""
    models = FakeModels(llm=BrokenLLM())
    with (
        LiveServer(create_app(models)) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        error = assert_error(http.post("/generate", json={"prompt": "hi"}), 500, "server log")
        assert "secret" not in json.dumps(error)
        r = http.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}], "stream": True},
        )
        assert_error(r, 500)
        assert http.get("/health").status_code == 200


def test_cors_is_off_by_default_and_on_when_asked() -> None:
    headers = {"Origin": "http://example.com", "Access-Control-Request-Method": "POST"}
    with LiveServer(create_app(FakeModels())) as server:
        r = httpx.options(server.url + "/generate", headers=headers)
        assert "access-control-allow-origin" not in r.headers
    keyed = FakeModels(settings_with(MODEL_SERVER_API_KEY="k"))
    app = create_app(keyed, cors_origins=["http://example.com"])
    with LiveServer(app) as server:
        # The preflight needs no key; a refused request still tells the browser why.
        r = httpx.options(server.url + "/generate", headers=headers)
        assert r.headers["access-control-allow-origin"] == "http://example.com"
        r = httpx.post(
            server.url + "/generate", json={"prompt": "hi"}, headers={"Origin": headers["Origin"]}
        )
        assert r.status_code == 401
        assert r.headers["access-control-allow-origin"] == "http://example.com"


def test_create_app_takes_settings_from_the_models() -> None:
    models = FakeModels(settings_with(MODEL_SERVER_QUEUE_SIZE="2"))
    app = create_app(models)
    assert app.state.voice_agent.gates["llm"].queue_size == 2
    assert FakeSTT().report.ok and FakeTTS().report.ok


def test_generate_seed_out_of_range_is_a_400(http: httpx.Client) -> None:
    """Regression: a seed beyond 64 bits passed validation and overflowed in
    `torch.manual_seed`, so the request failed with a 500 instead of a clear 400."""
    r = http.post("/generate", json={"prompt": "hi", "seed": 2**70})
    assert_error(r, 400, "seed")
    assert http.post("/generate", json={"prompt": "hi", "seed": 2**63 - 1}).status_code == 200
