"""The REST server on the real engines and tiny checkpoints: every route, the `openai`
package and our client against it, 20 parallel requests with a queue of 4, a disconnect
mid-stream, and `python -m voice_agent serve` answering /health."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from voice_agent.audio import encode_wav, load_audio
from voice_agent.client import VoiceAgentClient
from voice_agent.config import Settings, load_settings
from voice_agent.server import create_app
from voice_agent.testing.server import LiveServer, ServeProcess, tiny_model_env

pytestmark = pytest.mark.slow


def tiny_settings(tiny_models: Path, home: Path, **extra: str) -> Settings:
    return load_settings({**tiny_model_env(tiny_models, home), **extra})


@pytest.fixture(scope="module")
def tiny_server(
    tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    from voice_agent.models import LoadedModels

    settings = tiny_settings(tiny_models, tmp_path_factory.mktemp("home"))
    models = LoadedModels(settings).load_all()
    assert models.ready(), models.errors
    with LiveServer(create_app(models)) as server:
        yield server


@pytest.fixture(scope="module")
def http(tiny_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as client:
        yield client


def tone_wav(seconds: float = 1.0) -> bytes:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return encode_wav(16_000, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))


def test_health_shows_real_load_reports(http: httpx.Client) -> None:
    r = http.get("/health")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True
    for component in ("llm", "stt", "tts"):
        chosen = body["models"][component]["report"]["chosen"]
        assert chosen["device"] == "cpu" and chosen["dtype"]
    assert body["models"]["tts"]["backend"] == "vits"
    assert body["offline"]["enabled"] is True


def test_seed_routes(http: httpx.Client, assets_dir: Path) -> None:
    r = http.post("/generate", json={"prompt": "Hello", "max_new_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["text"], str) and 1 <= r.json()["completion_tokens"] <= 8

    with http.stream(
        "POST", "/generate", json={"prompt": "Hi", "max_new_tokens": 6, "stream": True}
    ) as s:
        lines = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert '"done": true' in lines[-1]

    r = http.post("/stt", files={"file": ("tone.wav", tone_wav(), "audio/wav")})
    assert r.status_code == 200, r.text
    assert r.json()["speech_detected"] is False and r.json()["text"] == ""

    r = http.post("/tts", json={"text": "Hello there."})
    assert r.status_code == 200, r.text
    samples, rate = sf.read(io.BytesIO(r.content), dtype="float32")
    assert rate == 16_000 and len(samples) > 1000

    with http.stream("POST", "/tts", json={"text": "Hello. How are you?", "stream": True}) as s:
        data = b"".join(s.iter_bytes())
    assert data[:4] == b"RIFF" and len(data) > 44 + 2000


def test_bad_input_on_real_engines(http: httpx.Client) -> None:
    r = http.post("/stt", files={"file": ("x.wav", b"RIFF\x00\x00\x00\x00WAVEjunk", "audio/wav")})
    assert r.status_code in (400, 415) and "Traceback" not in r.text
    r = http.post("/generate", json={"prompt": "hi", "max_new_tokens": 4000})
    assert r.status_code in (400, 413), r.text  # beyond the tiny model's 512-token context
    r = http.post("/tts", json={"text": "hi", "voice": "nobody"})
    assert r.status_code == 400 and "nobody" in r.json()["error"]["message"]


def test_openai_package(tiny_server: LiveServer, assets_dir: Path) -> None:
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="none", max_retries=0)
    assert len(client.models.list().data) == 3
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}], max_tokens=5
    )
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens <= 5
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=5,
        stream=True,
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    # One real transcription of speech (Whisper runs; the tiny model's words are random).
    audio = encode_wav(16_000, load_audio(assets_dir / "hello.wav")[:16_000])
    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=("hello.wav", audio), response_format="verbose_json"
    )
    assert verbose.duration == pytest.approx(1.0, abs=0.05) and verbose.text

    speech = client.audio.speech.create(
        model="tts-1", voice="alloy", input="Hello there.", response_format="wav"
    )
    samples, rate = sf.read(io.BytesIO(speech.content), dtype="float32")
    assert rate == 16_000 and len(samples) > 1000


def test_our_client(tiny_server: LiveServer, tmp_path: Path) -> None:
    with VoiceAgentClient(tiny_server.url, api_key="") as client:
        reply = client.generate_reply("Hello", max_new_tokens=4)
        assert reply.completion_tokens <= 4
        assert "".join(client.stream_reply("Hello", max_new_tokens=4)) is not None
        out = client.synthesize("Hello there.", tmp_path / "hello.wav")
        assert sf.info(out).samplerate == 16_000
        assert client.transcribe(tone_wav()).speech_detected is False
        assert [v.id for v in client.voices()] == ["default"]


def test_twenty_parallel_requests_with_a_queue_of_four(tiny_models: Path, tmp_path: Path) -> None:
    from voice_agent.models import LoadedModels

    settings = tiny_settings(tiny_models, tmp_path, MODEL_SERVER_QUEUE_SIZE="4")
    models = LoadedModels(settings, warmup=False)
    models.load("tts")
    models.load("llm")
    limits = httpx.Limits(max_connections=20)
    with (
        LiveServer(create_app(models)) as server,
        httpx.Client(base_url=server.url, timeout=60, limits=limits) as http,
    ):

        def call(i: int) -> tuple[int, httpx.Response]:
            if i % 5 == 4:
                return i, http.post("/tts", json={"text": "x" * 70_000})  # over MAX_TEXT_CHARS
            if i % 2:
                return i, http.post("/generate", json={"prompt": "Hi", "max_new_tokens": 24})
            return i, http.post("/tts", json={"text": f"Sentence number {i} is spoken here."})

        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(call, range(20)))
        for i, r in results:
            assert "Traceback" not in r.text
            if i % 5 == 4:
                assert r.status_code == 413
            else:
                assert r.status_code in (200, 503), r.text
                if r.status_code == 503:
                    assert r.headers["Retry-After"]
        assert any(r.status_code == 200 for _, r in results)
        # The server is healthy (STT was never loaded: health says so) and serving.
        assert http.get("/health").json()["models"]["tts"]["status"] == "ready"
        assert http.post("/tts", json={"text": "Still here."}).status_code == 200


def test_disconnect_mid_stream_leaves_the_server_serving(http: httpx.Client) -> None:
    body = {"prompt": "Tell me a story", "max_new_tokens": 300, "stream": True}
    with http.stream("POST", "/generate", json=body) as r:
        assert r.status_code == 200
        for n, _ in enumerate(r.iter_lines()):
            if n >= 6:
                break
    r = http.post("/generate", json={"prompt": "Hi", "max_new_tokens": 3})
    assert r.status_code == 200


def test_serve_command_answers_health(tiny_models: Path, tmp_path: Path) -> None:
    # Lazy: /health answers at once; the first /tts loads VITS inside the server.
    env = {**tiny_model_env(tiny_models, tmp_path), "MODEL_LOADING": "lazy"}
    with ServeProcess(env, capture=True) as serve:
        proc = serve.proc
        assert proc is not None
        seen: list[int] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"{serve.url}/health", timeout=60)
            except httpx.TransportError:
                time.sleep(0.3)
                continue
            seen.append(r.status_code)
            if r.status_code == 200:
                break
            assert r.status_code == 503 and r.json()["status"] == "loading"
            time.sleep(0.3)
        assert seen and seen[-1] == 200, (seen, proc.poll())
        r = httpx.post(f"{serve.url}/tts", json={"text": "Hello."}, timeout=60)
        assert r.status_code == 200 and r.content[:4] == b"RIFF"
        health = httpx.get(f"{serve.url}/health", timeout=60).json()
        assert health["models"]["tts"]["status"] == "ready"
        assert health["models"]["llm"]["status"] == "pending"
    assert "Traceback" not in serve.output, serve.output[-2000:]
