"""`VoiceAgentClient` and the remote engine adapters against a real server on fake engines:
every call, the typed errors, and the adapters standing in for local engines."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.server_fakes import API_KEY, FakeLLM, FakeModels, FakeTTS, settings_with
from voice_agent.client.http import (
    AuthError,
    ClientInputError,
    RemoteModelUnavailableError,
    ServerBusyError,
    ServerTimeoutError,
    ServerUnreachableError,
    VoiceAgentClient,
    read_wav,
)
from voice_agent.client.remote import RemoteLLM, RemoteSTT, RemoteTTS, remote_loaders
from voice_agent.core.cancel import CancelToken
from voice_agent.core.errors import BusyError, InputError, ModelLoadError, ModelUnavailableError
from voice_agent.llm.base import GenerationSettings, Reply
from voice_agent.server.app import create_app
from voice_agent.testing.server import LiveServer, free_port


@pytest.fixture
def client(keyed_server: LiveServer) -> Iterator[VoiceAgentClient]:
    with VoiceAgentClient(keyed_server.url, api_key=API_KEY, timeout=30) as c:
        yield c


# --- calls -----------------------------------------------------------------------------------------


def test_health_models_and_voices(client: VoiceAgentClient) -> None:
    health = client.health()
    assert health["ok"] is True and health["models"]["tts"]["model_id"] == "fake-tts"
    assert client.models() == ["fake-llm", "fake-whisper", "fake-tts"]
    assert [v.id for v in client.voices()] == ["default", "narrator"]


def test_generate_and_stream_reply(client: VoiceAgentClient, keyed_fakes: FakeModels) -> None:
    reply = client.generate_reply("one two", temperature=0.1, max_new_tokens=5, stop=("x",))
    assert isinstance(reply, Reply)
    assert reply.text == "echo: one two " and reply.finish_reason == "stop"
    assert keyed_fakes.llm.last_settings.stop == ("x",)
    messages = [{"role": "user", "content": "a b"}]
    reply = client.generate_reply(messages, system_prompt="terse")  # type: ignore[arg-type]
    assert reply.text == "echo: a b " and keyed_fakes.llm.last_system_prompt == "terse"
    assert list(client.stream_reply("a b")) == ["echo: ", "a ", "b "]
    events = list(client.reply_events("a"))
    assert events[:-1] == ["echo: ", "a "] and isinstance(events[-1], Reply)


def test_transcribe_path_and_bytes(client: VoiceAgentClient, assets_dir: Path) -> None:
    transcript = client.transcribe(assets_dir / "hello.wav", language="en")
    assert transcript.text == "fake transcript" and transcript.language == "en"
    assert transcript.duration_s == pytest.approx(3.4, abs=0.1)
    transcript = client.transcribe((assets_dir / "hello.wav").read_bytes())
    assert transcript.text == "fake transcript"


def test_synthesize_and_stream_speech(client: VoiceAgentClient, tmp_path: Path) -> None:
    out = client.synthesize("hello", tmp_path / "out.wav", voice="narrator")
    samples, rate = sf.read(out, dtype="float32")
    assert rate == 16_000 and len(samples) == 3 * 1600
    data = b"".join(client.stream_speech("hello"))
    assert data[:4] == b"RIFF" and len(data) == 44 + 3 * 3200
    pcm = b"".join(client.stream_speech("hello", response_format="pcm"))
    assert len(pcm) == 3 * 3200
    rate, samples = read_wav(client.synthesize_wav("hello"))
    assert rate == 16_000 and samples.dtype == np.float32 and len(samples) == 4800


# --- typed errors ----------------------------------------------------------------------------------


def test_input_errors_carry_the_servers_message_and_status(client: VoiceAgentClient) -> None:
    with pytest.raises(ClientInputError) as info:
        client.synthesize_wav("   ")
    assert info.value.status_code == 400 and "empty" in str(info.value)
    assert isinstance(info.value, InputError)  # CLIs print it as bad input (exit 2)
    with pytest.raises(ClientInputError) as info:
        client.generate_reply("x" * 60_001)
    assert info.value.status_code == 413 and "MAX_TEXT_CHARS" in str(info.value)
    with pytest.raises(ClientInputError) as info:
        client.generate_reply("hi", temperature="hot")
    assert "temperature" in str(info.value)
    with pytest.raises(ClientInputError) as info:
        client.transcribe(b"not audio" * 40)
    assert info.value.code
    with pytest.raises(ClientInputError, match="gandalf"):
        list(client.stream_speech("hi", voice="gandalf"))


def test_auth_error(keyed_server: LiveServer) -> None:
    with VoiceAgentClient(keyed_server.url, api_key="wrong") as c:
        with pytest.raises(AuthError):
            c.models()
        assert c.health()["ok"] is True  # /health needs no key


def test_unreachable_server_is_named() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with VoiceAgentClient(url, api_key="", timeout=5) as c:
        with pytest.raises(ServerUnreachableError, match=url):
            c.health()
        with pytest.raises(ServerUnreachableError):
            list(c.stream_reply("hi"))


def test_busy_and_unavailable_and_timeout() -> None:
    tts = FakeTTS(delay_s=0.3, chunks=3)
    models = FakeModels(
        settings_with(MODEL_SERVER_QUEUE_SIZE="0"),
        tts=tts,
        llm=FakeLLM(delay_s=0.1, words=50),
        status={"llm": "ready", "stt": "failed", "tts": "ready"},
        errors={"stt": "weights are corrupt"},
    )
    with LiveServer(create_app(models)) as live, VoiceAgentClient(live.url, api_key="") as c:
        speech = c.stream_speech("first")
        next(speech)  # the first request holds the TTS now
        with pytest.raises(ServerBusyError) as info:
            c.synthesize_wav("second")
        assert info.value.retry_after >= 1 and isinstance(info.value, BusyError)
        speech.close()
        with pytest.raises(RemoteModelUnavailableError, match="corrupt"):
            c.transcribe(b"RIFF....")
        assert isinstance(info.value, BusyError)
        assert c.health()["status"] == "failed"
        with VoiceAgentClient(live.url, api_key="", timeout=0.3) as impatient:
            with pytest.raises(ServerTimeoutError):
                impatient.generate_reply("x")


def test_settings_give_the_defaults(
    monkeypatch: pytest.MonkeyPatch, keyed_server: LiveServer
) -> None:
    from voice_agent.core.config import get_settings

    monkeypatch.setenv("MODEL_SERVER_URL", keyed_server.url + "/")
    monkeypatch.setenv("MODEL_SERVER_API_KEY", API_KEY)
    get_settings.cache_clear()
    with VoiceAgentClient() as c:
        assert c.base_url == keyed_server.url
        assert c.models()  # the key came from the environment too


# --- remote engine adapters ------------------------------------------------------------------------


def test_remote_llm(client: VoiceAgentClient) -> None:
    llm = RemoteLLM(client)
    assert llm.model_id == "fake-llm" and llm.context_length == 512
    assert llm.report.chosen is not None and llm.report.chosen.strategy == "remote"
    assert llm.report.chosen.device == "remote:cpu"
    reply = llm.generate_reply("a b", GenerationSettings(max_new_tokens=2))
    assert reply.text == "echo: a " and reply.finish_reason == "length"
    stream = llm.stream_reply([{"role": "user", "content": "c"}], system_prompt="s")
    assert list(stream) == ["echo: ", "c "]
    assert stream.reply is not None and stream.reply.text == "echo: c "


def test_remote_llm_cancel_stops_the_server() -> None:
    slow = FakeLLM(delay_s=0.02, words=1000)
    with LiveServer(create_app(FakeModels(llm=slow))) as live:
        with VoiceAgentClient(live.url, api_key="") as c:
            token = CancelToken()
            stream = RemoteLLM(c).stream_reply("x", cancel=token)
            pieces = []
            for piece in stream:
                pieces.append(piece)
                if len(pieces) == 3:
                    token.cancel()
            assert 3 <= len(pieces) < 50
            assert stream.reply is not None and stream.reply.finish_reason == "cancelled"
            deadline = time.monotonic() + 5
            while slow.cancelled == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert slow.cancelled == 1


def test_remote_stt(client: VoiceAgentClient, assets_dir: Path) -> None:
    stt = RemoteSTT(client)
    assert stt.model_id == "fake-whisper" and stt.sample_rate == 16_000
    assert stt.transcribe(assets_dir / "hello.wav").text == "fake transcript"
    tone = (0.2 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    transcript = stt.transcribe((8000, tone), language="fr")
    assert transcript.language == "fr" and transcript.duration_s == pytest.approx(1.0, abs=0.01)


def test_remote_tts(client: VoiceAgentClient) -> None:
    tts = RemoteTTS(client)
    assert (tts.backend, tts.model_id, tts.sample_rate) == ("fake", "fake-tts", 16_000)
    rate, samples = tts.synthesize("hello")
    assert rate == 16_000 and len(samples) == 4800
    chunks = list(tts.stream("hello"))
    assert sum(len(c.samples) for c in chunks) == 4800
    assert all(c.sample_rate == 16_000 and c.samples.dtype == np.float32 for c in chunks)
    # Streamed text is spoken sentence by sentence: two sentences, two requests.
    chunks = list(tts.stream(iter(["Hello there. ", "How are", " you?"])))
    assert sum(len(c.samples) for c in chunks) == 2 * 4800
    assert [v.id for v in tts.voices()] == ["default", "narrator"]
    recorded = sf.read(io.BytesIO(client.synthesize_wav("x")))[0]
    assert np.allclose(recorded, samples, atol=1e-3)


def test_remote_adapters_refuse_a_failed_model() -> None:
    models = FakeModels(
        status={"llm": "failed", "stt": "ready", "tts": "ready"}, errors={"llm": "no GPU memory"}
    )
    with LiveServer(create_app(models)) as live, VoiceAgentClient(live.url, api_key="") as c:
        with pytest.raises(ModelLoadError, match="no GPU memory") as info:
            RemoteLLM(c)
        assert info.value.report.chosen is None  # type: ignore[union-attr]
        with pytest.raises(ModelUnavailableError):
            c.generate_reply("hi")


def test_remote_adapters_plug_into_the_cached_loader(keyed_server: LiveServer) -> None:
    from voice_agent.pipeline.models import LoadedModels

    settings = settings_with(MODEL_SERVER_URL=keyed_server.url, MODEL_SERVER_API_KEY=API_KEY)
    models = LoadedModels(settings, loaders=remote_loaders(), warmup=False).load_all()
    assert models.ready(), models.errors
    assert models.reports["llm"].source == f"remote {keyed_server.url}"
    assert models.require("llm").generate_reply("hi").text == "echo: hi "
    assert isinstance(models.require("tts"), RemoteTTS)


def test_remote_loaders_record_an_unreachable_server() -> None:
    from voice_agent.pipeline.models import LoadedModels

    url = f"http://127.0.0.1:{free_port()}"
    models = LoadedModels(settings_with(), loaders=remote_loaders(url, wait_s=0), warmup=False)
    models.load("llm")
    assert models.status["llm"] == "failed"
    assert url in models.errors["llm"] or "reach" in models.errors["llm"]


def test_a_failed_remote_load_closes_its_client(monkeypatch) -> None:
    """Regression: a remote loader whose server model had failed (or was unreachable)
    dropped its `VoiceAgentClient` without closing it, leaking its open connections."""
    from voice_agent.client import http as client_mod
    from voice_agent.pipeline.models import LoadedModels

    closed: list[VoiceAgentClient] = []
    real_close = VoiceAgentClient.close

    def recording_close(self: VoiceAgentClient) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(client_mod.VoiceAgentClient, "close", recording_close)
    models = FakeModels(status={"llm": "failed", "stt": "ready", "tts": "ready"})
    with LiveServer(create_app(models)) as live:
        loaded = LoadedModels(
            settings_with(), loaders=remote_loaders(live.url, api_key="", wait_s=0), warmup=False
        )
        loaded.load("llm")
        loaded.load("stt")
    assert loaded.status["llm"] == "failed" and loaded.status["stt"] == "ready"
    assert len(closed) == 1  # the failed one only; the ready adapter keeps its client
