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
import openai
import pytest
import soundfile as sf

from tests.server_fakes import tone_wav, wait_for
from tests.token_probe import count_generated_tokens
from voice_agent.audio.io import encode_wav, load_audio
from voice_agent.client.http import VoiceAgentClient
from voice_agent.core.config import Settings, load_settings
from voice_agent.server.app import create_app
from voice_agent.testing.server import LiveServer, ServeProcess, tiny_model_env

pytestmark = pytest.mark.slow


def tiny_settings(tiny_models: Path, home: Path, **extra: str) -> Settings:
    return load_settings({**tiny_model_env(tiny_models, home), **extra})


@pytest.fixture(scope="module")
def http(tiny_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as client:
        yield client


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
    """Guards `stream_reply` losing or garbling text (the old check, `"".join(...) is not
    None`, held for any stream, even an empty one): greedy, the streamed deltas must add up
    to exactly the text of the same request answered whole."""
    with VoiceAgentClient(tiny_server.url, api_key="") as client:
        reply = client.generate_reply("Hello", max_new_tokens=4, temperature=0)
        assert 1 <= reply.completion_tokens <= 4 and reply.text.strip(), reply
        streamed = list(client.stream_reply("Hello", max_new_tokens=4, temperature=0))
        assert streamed and all(isinstance(piece, str) and piece for piece in streamed)
        assert "".join(streamed) == reply.text
        out = client.synthesize("Hello there.", tmp_path / "hello.wav")
        assert sf.info(out).samplerate == 16_000
        assert client.transcribe(tone_wav()).speech_detected is False
        assert [v.id for v in client.voices()] == ["default"]


def test_twenty_parallel_requests_with_a_queue_of_four(tiny_models: Path, tmp_path: Path) -> None:
    """Guards admission that never refuses (`EngineGate.admit` letting every request queue
    up): with both real engines busy, exactly one running + four queued requests per engine
    get in and every request beyond that answers 503 + Retry-After at once, not after
    waiting in line."""
    from voice_agent.pipeline.models import LoadedModels

    settings = tiny_settings(tiny_models, tmp_path, MODEL_SERVER_QUEUE_SIZE="4")
    models = LoadedModels(settings, warmup=False)
    models.load("tts")
    models.load("llm")
    app = create_app(models)
    gates = app.state.voice_agent.gates
    limits = httpx.Limits(max_connections=20)
    with (
        LiveServer(app) as server,
        httpx.Client(base_url=server.url, timeout=60, limits=limits) as http,
    ):

        def call(i: int) -> tuple[int, httpx.Response]:
            if i % 5 == 4:
                return i, http.post("/tts", json={"text": "x" * 70_000})  # over MAX_TEXT_CHARS
            if i % 2:
                return i, http.post("/generate", json={"prompt": "Hi", "max_new_tokens": 24})
            return i, http.post("/tts", json={"text": f"Sentence number {i} is spoken here."})

        # 8 /generate, 8 /tts and 4 oversized requests. Both engines are held busy (as by a
        # long request) while they arrive, so all 16 good ones compete for 2 x (1 + 4) places.
        with ThreadPoolExecutor(max_workers=20) as pool:
            for gate in (gates["llm"], gates["tts"]):
                gate.lock.acquire()
            try:
                futures = [pool.submit(call, i) for i in range(20)]
                # The 4 oversized and the 2 x 3 refused answer while the engines are still busy.
                answered = wait_for(lambda: sum(f.done() for f in futures) >= 10, timeout=30)
                early = {f.result()[0] for f in futures if f.done()}
                admitted = {name: gates[name].admitted for name in ("llm", "tts")}
            finally:
                for gate in (gates["llm"], gates["tts"]):
                    gate.lock.release()
            results = [f.result() for f in futures]
        assert answered, f"only {len(early)} of 20 answered while the engines were busy"
        assert admitted == {"llm": 5, "tts": 5}, admitted
        assert all("Traceback" not in r.text for _, r in results)
        assert sorted(i for i, r in results if r.status_code == 413) == [4, 9, 14, 19]
        for route, odd in (("/generate", 1), ("/tts", 0)):
            mine = [(i, r) for i, r in results if i % 5 != 4 and i % 2 == odd]
            statuses = sorted(r.status_code for _, r in mine)
            assert statuses == [200] * 5 + [503] * 3, (route, statuses)
            for i, r in mine:
                if r.status_code == 503:
                    assert i in early, f"{route} request {i} was refused only after waiting"
                    assert int(r.headers["Retry-After"]) >= 1
                    assert r.json()["error"]["code"] == "busy"
                else:
                    assert i not in early  # it waited for the engine, then ran
        # The server is healthy (STT was never loaded: health says so) and serving.
        assert http.get("/health").json()["models"]["tts"]["status"] == "ready"
        assert http.post("/tts", json={"text": "Still here."}).status_code == 200


def test_disconnect_mid_stream_leaves_the_server_serving(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards a disconnect leaving the LLM generating for nobody (the engine's cancel check,
    its StoppingCriteria, never firing): the server answers the same either way, so the
    tokens the engine really generated are counted against the same request read to the
    end."""
    generated = count_generated_tokens(monkeypatch)
    body = {"prompt": "Tell me a story", "max_new_tokens": 300, "temperature": 0}
    whole = http.post("/generate", json=body)
    assert whole.status_code == 200, whole.text
    uncancelled = whole.json()["completion_tokens"]
    assert generated == [uncancelled] and uncancelled >= 150  # else nothing is proved below
    with http.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        for n, _ in enumerate(r.iter_lines()):
            if n >= 6:
                break
    r = http.post("/generate", json={"prompt": "Hi", "max_new_tokens": 3})
    assert r.status_code == 200
    # That request waited for the engine, so the disconnected generation has ended: it
    # stopped soon after the client left instead of running on to max_new_tokens.
    assert len(generated) == 3, generated
    assert generated[1] < uncancelled / 2, generated


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
