"""The page's hands-free microphone (`voice_agent.ui.microphone`): raw PCM posted to
`POST /voice/mic/{tab}` on a real server ends turns the server answers, barges in on a
reply, and refuses what is not a microphone's audio with a specific 4xx."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("gradio")

from tests.fakes import FakeLLM, FakeTTS, fake_models  # noqa: E402
from tests.test_playback import Reader, wait_for  # noqa: E402
from tests.test_ui import speech_clip  # noqa: E402
from voice_agent.core.cancel import CancelToken  # noqa: E402
from voice_agent.core.config import get_settings  # noqa: E402
from voice_agent.pipeline.agent import Agent  # noqa: E402
from voice_agent.testing.server import LiveServer  # noqa: E402
from voice_agent.ui import microphone  # noqa: E402
from voice_agent.ui.blocks import build_ui  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PANEL = (0.6, "Be brief.", 0.0, 64, "")  # pause, system prompt, temperature, tokens, voice


@contextlib.contextmanager
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LiveServer, Any, Agent]]:
    """The app as `app.build_app` makes it, on fake models, on loopback: (server, blocks, agent)."""
    monkeypatch.syspath_prepend(str(REPO))
    import app as app_module

    get_settings.cache_clear()
    models = fake_models(llm=FakeLLM("Sunny all day."), tts=FakeTTS())
    agent = Agent(models)
    demo = build_ui(lambda: agent, models, pause_default=0.6)
    with LiveServer(app_module.build_app(models, get_settings(), demo), lifespan=True) as server:
        yield server, demo, agent


@pytest.fixture
def live(monkeypatch) -> Iterator[tuple[LiveServer, Any, Agent]]:
    with serve(monkeypatch) as (server, demo, agent):
        yield server, demo.voice_agent_handlers, agent


def post(server: LiveServer, tab: str, samples: np.ndarray, rate: int, **query: Any) -> Any:
    params = {"rate": rate, **query}
    body = np.asarray(samples, dtype="<i2").tobytes()
    return httpx.post(f"{server.url}/voice/mic/{tab}", params=params, content=body, timeout=30)


def stream(
    server: LiveServer, tab: str, samples: np.ndarray, rate: int, **query: Any
) -> list[dict[str, Any]]:
    """Post `samples` in 0.25 s pieces, one after the other, as the page does (the Record
    button's first post says `start=1`)."""
    replies = []
    step = rate // 4
    for start in range(0, len(samples), step):
        first = {"start": 1} if start == 0 and query.get("hold") else {}
        r = post(server, tab, samples[start : start + step], rate, **query, **first)
        assert r.status_code == 200, r.text
        replies.append(r.json())
    return replies


def voice(seconds: float, rate: int = 48_000) -> np.ndarray:
    return (np.clip(speech_clip(seconds, rate), -1, 1) * 32767).astype(np.int16)


def test_posts_of_the_pages_microphone_end_a_turn_the_server_answers(live, assets_dir) -> None:
    import soundfile as sf

    server, handlers, agent = live
    ui = handlers.on_load()[0]
    with Reader(ui.audio) as page:
        handlers.toggle_hands_free(True, ui, *PANEL)  # the page sends its settings panel
        samples, rate = sf.read(assets_dir / "hello.wav", dtype="int16")
        audio = np.concatenate((samples, np.zeros(rate, np.int16)))
        replies = stream(server, ui.tab_id, audio, rate)
        ended = [r["utterance"] for r in replies if r["utterance"] is not None]
        assert ended == [1], replies
        assert any(r["status"] == "Hearing you…" for r in replies)
        # From the first word to the pause that ends the turn the page posts more often.
        began = next(i for i, r in enumerate(replies) if r["status"] == "Hearing you…")
        over = next(i for i, r in enumerate(replies) if r["utterance"] is not None)
        quick, slow = microphone.QUICK_CHUNK_S, microphone.CHUNK_S
        expected = [slow] * began + [quick] * (over - began) + [slow] * (len(replies) - over)
        assert [r["next_s"] for r in replies] == expected, replies
        assert not any(r["interrupted"] for r in replies)
        # The server runs the turn itself; the page's trigger only shows it.
        wait_for(lambda: len(ui.session.history) == 2)
        assert ui.session.history[1]["content"].startswith("Sunny all day.")
        assert agent.models.llm.calls[-1]["system_prompt"] == "Be brief."
        wait_for(lambda: "audio" in page.kinds())
    assert ui.detector_pause == 0.6


def test_the_pause_slider_sets_how_long_a_pause_ends_the_turn(live, assets_dir) -> None:
    """speech_pause_speech.wav pauses 1.2 s: with a 0.6 s pause it is two turns, with 2 s one."""
    import soundfile as sf

    server, handlers, _ = live
    samples, rate = sf.read(assets_dir / "speech_pause_speech.wav", dtype="int16")
    audio = np.concatenate((samples, np.zeros(rate * 5 // 2, np.int16)))
    counts = []
    for pause in (0.6, 2.0):
        ui = handlers.on_load()[0]
        handlers.toggle_hands_free(True, ui, pause, *PANEL[1:])
        replies = stream(server, ui.tab_id, audio, rate)
        counts.append(sum(r["utterance"] is not None for r in replies))
    assert counts == [2, 1]


def test_speaking_over_the_reply_silences_it(live) -> None:
    server, handlers, _ = live
    ui = handlers.on_load()[0]
    with Reader(ui.audio) as page:
        handlers.toggle_hands_free(True, ui, *PANEL)
        running = CancelToken()
        ui.cancel = running  # a reply is being spoken
        audio = np.concatenate((np.zeros(48_000, np.int16), voice(1.5)))
        replies = stream(server, ui.tab_id, audio, 48_000)
        assert [r["interrupted"] for r in replies].count(True) == 1
        assert running.cancelled and running.reason == "barge-in"
        wait_for(lambda: "flush" in page.kinds())  # the page's player stops at once


def test_stopping_the_microphone_ends_the_turn_it_was_hearing(live, assets_dir) -> None:
    import soundfile as sf

    server, handlers, _ = live
    ui = handlers.on_load()[0]
    handlers.toggle_hands_free(True, ui, *PANEL)
    samples, rate = sf.read(assets_dir / "hello.wav", dtype="int16")
    replies = stream(server, ui.tab_id, samples, rate)  # no pause after the words
    assert all(r["utterance"] is None for r in replies)
    last = post(server, ui.tab_id, np.zeros(0, np.int16), rate, end=1).json()
    assert last == {
        "status": "Microphone off.",
        "utterance": 1,
        "interrupted": False,
        "next_s": microphone.CHUNK_S,
    }
    wait_for(lambda: len(ui.session.history) == 2)


def test_record_sends_the_turn_at_stop_not_at_a_pause(live, assets_dir) -> None:
    """Push to talk (`hold=1`): speech, a 1.2 s pause and more speech stay one turn until
    the microphone stops; the turn takes the panel the page showed on load."""
    import soundfile as sf

    server, handlers, agent = live
    ui = handlers.on_load()[0]  # no settings sent: the panel's first values
    heard: list[float] = []  # seconds of audio the recogniser got, call by call
    stt = agent.models.stt
    real = stt.transcribe

    def transcribe(audio: Any, language: str | None = None) -> Any:
        audio_rate, audio_samples = audio  # a Speech: (16000, samples)
        heard.append(len(audio_samples) / audio_rate)
        return real(audio, language)

    stt.transcribe = transcribe
    samples, rate = sf.read(assets_dir / "speech_pause_speech.wav", dtype="int16")
    audio = np.concatenate((samples, np.zeros(rate, np.int16)))
    with Reader(ui.audio) as page:
        replies = stream(server, ui.tab_id, audio, rate, hold=1)
        assert all(r["utterance"] is None for r in replies), replies
        assert not any("pause ends" in r["status"] for r in replies), replies
        last = post(server, ui.tab_id, np.zeros(0, np.int16), rate, hold=1, end=1).json()
        assert last["utterance"] == 1, last
        wait_for(lambda: len(ui.session.history) == 2)  # the server ran the turn
        wait_for(lambda: "audio" in page.kinds())
    assert ui.session.history[1]["content"].startswith("Sunny all day.")
    # Both stretches of speech are the turn's words, each heard once: the words before
    # a pause are kept and only what follows is transcribed (`EarlyHearing`).
    assert len(samples) / rate - 1.0 < sum(heard) <= len(samples) / rate + 0.5, heard


def test_record_answers_ahead_at_the_pause_before_stop(live, assets_dir) -> None:
    """The words before a pause are heard and answered while the user still holds the
    floor: Stop finds the turn made, and nothing is transcribed or written twice."""
    import soundfile as sf

    server, handlers, agent = live
    ui = handlers.on_load()[0]
    samples, rate = sf.read(assets_dir / "hello.wav", dtype="int16")
    audio = np.concatenate((samples, np.zeros(rate, np.int16)))  # then a second of quiet
    stream(server, ui.tab_id, audio, rate, hold=1)
    stt, llm = agent.models.stt, agent.models.llm
    wait_for(lambda: ui.ahead is not None and len(llm.calls) >= 1)  # before Stop
    assert ui.utterances == [] and ui.session.history == []  # nothing kept yet
    heard, written = stt.calls, len(llm.calls)
    last = post(server, ui.tab_id, np.zeros(0, np.int16), rate, hold=1, end=1).json()
    assert last["utterance"] == 1, last
    wait_for(lambda: len(ui.session.history) == 2)
    assert (stt.calls, len(llm.calls)) == (heard, written), "started again at Stop"
    assert agent.recent_timings()["turns"][-1]["ahead"] is True


def test_pressing_record_over_a_reply_stops_it(live) -> None:
    server, handlers, _ = live
    ui = handlers.on_load()[0]
    with Reader(ui.audio) as page:
        running = CancelToken()
        ui.cancel = running  # a reply is being spoken
        first = post(server, ui.tab_id, np.zeros(4_000, np.int16), 16_000, hold=1, start=1)
        assert first.json()["interrupted"] is True
        assert running.cancelled and running.reason == "barge-in"
        wait_for(lambda: "flush" in page.kinds())
        # Later posts of the same recording do not cut the next reply.
        ui.cancel = later = CancelToken()
        more = post(server, ui.tab_id, np.zeros(4_000, np.int16), 16_000, hold=1)
        assert more.json()["interrupted"] is False and not later.cancelled
        ui.cancel = None


def test_clear_keeps_the_microphone_and_closing_the_tab_ends_it(live) -> None:
    server, handlers, _ = live
    conversation = handlers.conversation
    ui = handlers.on_load()[0]
    handlers.toggle_hands_free(True, ui, *PANEL)
    fresh = handlers.clear(ui)[0]
    assert conversation.tab(ui.tab_id) is fresh and fresh.tab_id == ui.tab_id
    assert fresh.controls == ui.controls and fresh.pause == 0.6  # the panel is the page's
    assert post(server, fresh.tab_id, np.zeros(4_000, np.int16), 16_000).status_code == 200
    conversation.close(fresh)
    r = post(server, fresh.tab_id, np.zeros(4_000, np.int16), 16_000)
    assert r.status_code == 404 and "tab" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("query", "body", "status", "words"),
    [
        ("", b"\0\0", 400, "rate"),
        ("?rate=fast", b"\0\0", 400, "rate"),
        ("?rate=100", b"\0\0", 400, "rate"),
        ("?rate=10000000", b"\0\0", 400, "rate"),
        ("?rate=16000", b"\0\0\0", 400, "16-bit"),
        ("?rate=16000", b"", 200, "Listening"),
        ("?rate=16000&end=1", b"", 200, "Microphone off"),
        ("?rate=16000&hold=1&start=1&end=1", b"\0\0" * 8000, 200, "Nothing was heard"),
    ],
)
def test_posts_are_checked(live, query: str, body: bytes, status: int, words: str) -> None:
    server, handlers, _ = live
    ui = handlers.on_load()[0]
    r = httpx.post(f"{server.url}/voice/mic/{ui.tab_id}{query}", content=body, timeout=30)
    assert r.status_code == status, r.text
    text = r.json()["error"]["message"] if status >= 400 else r.json()["status"]
    assert words in text, text


def test_hostile_posts_are_refused_without_reading_them_whole(live) -> None:
    server, handlers, _ = live
    ui = handlers.on_load()[0]
    url = f"{server.url}/voice/mic/{ui.tab_id}?rate=16000"
    too_big = b"\0" * (microphone.MAX_BYTES + 2)
    r = httpx.post(url, content=too_big, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"

    def endless() -> Iterator[bytes]:  # chunked, no length: refused once past the limit
        piece = b"\0" * 65_536
        for _ in range(microphone.MAX_BYTES // len(piece) + 50):
            yield piece

    r = httpx.post(url, content=endless(), timeout=30)
    assert r.status_code == 413
    for tab in ("nope", "%ff%fe", "x" * 300):
        r = httpx.post(f"{server.url}/voice/mic/{tab}?rate=16000", content=b"", timeout=30)
        assert r.status_code == 404, (tab, r.text)
    # The tab still works: nothing of the refused posts reached its detector.
    assert post(server, ui.tab_id, np.zeros(4_000, np.int16), 16_000).status_code == 200
    assert ui.detector is not None and not ui.utterances


def test_the_page_carries_the_microphone() -> None:
    from voice_agent.ui.blocks import PAGE_HEAD

    assert "window.vaMic" in PAGE_HEAD and "voice/mic/" in PAGE_HEAD
    assert "const CHUNK_S = 0.25;" in PAGE_HEAD  # the post interval reached the page
    assert "m.chunk = Math.min(1, Math.max(0.05, reply.next_s))" in PAGE_HEAD  # and the quick one
    assert 'id="hands-free-mic"' in microphone.MIC_HTML
    assert 'id="talk-mic"' in microphone.TALK_HTML and "&hold=1" in PAGE_HEAD
