"""The turn's stages and their seams: audio decoded and gated once, declared engine
capabilities, and one admission gate per engine shared by the conversation and the REST API."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.fakes import REPLY, FakeLLM, FakeTTS, fake_models
from voice_agent.core.cancel import CancelToken
from voice_agent.core.config import load_settings
from voice_agent.core.errors import BusyError
from voice_agent.pipeline.admission import EngineGate
from voice_agent.pipeline.agent import Agent, TurnEvent
from voice_agent.server.app import create_app
from voice_agent.testing import tiny_whisper
from voice_agent.testing.server import LiveServer


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory):
    """The real Whisper engine on the tiny multilingual checkpoint."""
    import torch

    from voice_agent.stt.whisper import WhisperSTT

    torch.set_num_threads(1)  # the CI machine has 2 cores, shared with other tests
    path = tiny_whisper.build(tmp_path_factory.mktemp("stages") / "stt")
    return WhisperSTT(str(path), load_settings({"HF_HUB_OFFLINE": "1"}), warmup=False)


def wait_until(condition, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


# --- hear: decode and gate once ------------------------------------------------------------------


def test_a_spoken_turn_decodes_and_gates_its_audio_once(whisper, monkeypatch, assets_dir: Path):
    """Regression: the agent decoded the recording and ran the speech gate, then Whisper
    decoded and gated the same audio again; twice the work before the first word."""
    from voice_agent.audio import gate, io

    counts = {"decode": 0, "gate": 0}
    decode_audio, speech_seconds = io.decode_audio, gate.speech_seconds

    def counted_decode(*args, **kwargs):
        counts["decode"] += 1
        return decode_audio(*args, **kwargs)

    def counted_gate(*args, **kwargs):
        counts["gate"] += 1
        return speech_seconds(*args, **kwargs)

    monkeypatch.setattr(io, "decode_audio", counted_decode)
    monkeypatch.setattr(gate, "speech_seconds", counted_gate)
    agent = Agent(fake_models(stt=whisper))
    clip = str(assets_dir / "hello.wav")
    events = list(agent.run_turn(agent.new_session(), audio=clip))
    assert events[-1].kind == "done", [e.text for e in events]
    assert events[-1].timings.stt_s is not None  # Whisper ran
    assert counts == {"decode": 1, "gate": 1}
    # Given a recording of its own, the engine still decodes and gates it.
    whisper.transcribe(clip)
    assert counts == {"decode": 2, "gate": 2}


def test_silence_is_turned_away_before_the_engine(whisper, assets_dir: Path):
    agent = Agent(fake_models(stt=whisper))
    events = list(agent.run_turn(agent.new_session(), audio=str(assets_dir / "silence.wav")))
    assert [e.kind for e in events] == ["notice", "done"] and events[0].code == "no_speech"
    assert events[-1].timings.stt_s is None


# --- declared capabilities -----------------------------------------------------------------------


def test_engines_declare_what_they_can_do(whisper, tiny_models: Path):
    from voice_agent.tts.engine import Dia2TTS, LocalTTS

    assert whisper.capabilities.timestamps
    assert {"en", "de", "ja"} <= set(whisper.capabilities.languages)
    assert Dia2TTS is LocalTTS  # the seed's name stays an alias
    vits = LocalTTS(
        backend="vits",
        model_name=str(tiny_models / "vits"),
        settings=load_settings({"HF_HUB_OFFLINE": "1", "TTS_DEVICE": "cpu"}),
    )
    caps = vits.capabilities
    assert caps.sample_rate == vits.sample_rate
    assert not (caps.streaming_text_in or caps.voices or caps.word_timer)
    assert caps.phrasing.mode == "sentence"


# --- one admission gate per engine ---------------------------------------------------------------


def test_gate_pass_is_released_once_and_a_cancelled_wait_gives_its_place_back():
    gate = EngineGate("llm", queue_size=1)
    held = gate.enter(timeout_s=1)
    assert held is not None and gate.admitted == 1
    token = CancelToken()
    waiter: list[object] = []
    thread = threading.Thread(target=lambda: waiter.append(gate.enter(timeout_s=5, cancel=token)))
    thread.start()
    assert wait_until(lambda: gate.admitted == 2)
    with pytest.raises(BusyError):  # one running and one waiting: the queue of 1 is full
        gate.enter(timeout_s=1)
    token.cancel()
    thread.join(3)
    assert waiter == [None] and gate.admitted == 1
    held.release()
    held.release()
    assert gate.admitted == 0 and not gate.lock.locked()


def test_the_server_uses_the_models_gates():
    models = fake_models()
    assert create_app(models).state.voice_agent.gates is models.gates


def test_a_conversation_turn_in_flight_holds_the_rest_gates(monkeypatch):
    """Regression: conversation (UI) turns bypassed the REST admission gates, so /health
    showed idle engines during a reply and a REST request ran beside the turn instead of
    queueing, or being refused with 503 when the queue was full."""
    monkeypatch.setenv("MODEL_SERVER_QUEUE_SIZE", "0")
    llm = FakeLLM(wait_for_cancel=True)  # holds the reply mid-way until cancelled
    models = fake_models(llm=llm, tts=FakeTTS())
    agent = Agent(models)
    session = agent.new_session()
    events: list[TurnEvent] = []
    turn = threading.Thread(target=lambda: events.extend(agent.run_turn(session, text="hi")))
    with LiveServer(create_app(models)) as server, httpx.Client(base_url=server.url) as http:
        turn.start()
        assert llm.started.wait(3)
        assert wait_until(lambda: models.gates["tts"].admitted == 1)
        queues = {c: e["queue"] for c, e in http.get("/health").json()["models"].items()}
        busy = {"in_flight": 1, "waiting": 0, "slots": 1, "queue_size": 0}
        assert queues["llm"] == busy and queues["tts"] == busy
        assert queues["stt"] == {**busy, "in_flight": 0}
        for route, body in (("/generate", {"prompt": "hi"}), ("/tts", {"text": "Hello."})):
            r = http.post(route, json=body)
            assert r.status_code == 503, (route, r.text)
            assert int(r.headers["retry-after"]) >= 1
        llm.wait_for_cancel = False
        agent.cancel(session)
        turn.join(5)
        assert events[-1].kind == "done" and events[-1].interrupted
        assert all(g.admitted == 0 for g in models.gates.values())
        assert http.post("/generate", json={"prompt": "hi"}).status_code == 200


def test_a_rest_request_queues_behind_a_conversation_turn(monkeypatch):
    monkeypatch.setenv("MODEL_SERVER_QUEUE_SIZE", "1")
    llm = FakeLLM(wait_for_cancel=True)
    models = fake_models(llm=llm)
    agent = Agent(models)
    session = agent.new_session()
    events: list[TurnEvent] = []
    turn = threading.Thread(target=lambda: events.extend(agent.run_turn(session, text="hi")))
    with LiveServer(create_app(models)) as server, ThreadPoolExecutor(1) as pool:
        turn.start()
        assert llm.started.wait(3)
        rest = pool.submit(httpx.post, server.url + "/generate", json={"prompt": "hi"}, timeout=30)
        assert wait_until(lambda: models.gates["llm"].admitted == 2)  # the turn + the request
        assert not rest.done()
        llm.wait_for_cancel = False
        agent.cancel(session)
        turn.join(5)
        r = rest.result(timeout=10)
        assert r.status_code == 200 and r.json()["text"] == REPLY
