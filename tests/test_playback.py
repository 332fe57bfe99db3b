"""The page player's audio stream (`voice_agent.ui.playback`): each chunk of a reply goes to
the tab's page the moment it is made, over a real server, and Stop / barge-in / a new turn
silence what is still playing."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("gradio")

from tests.fakes import FakeLLM, fake_models  # noqa: E402
from voice_agent.core.config import get_settings  # noqa: E402
from voice_agent.pipeline.agent import Agent  # noqa: E402
from voice_agent.testing.server import LiveServer  # noqa: E402
from voice_agent.ui import playback  # noqa: E402
from voice_agent.ui.blocks import PAGE_HEAD, build_ui  # noqa: E402
from voice_agent.ui.playback import AudioChannel, AudioChannels  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def parse(frame: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The events in a piece of an SSE stream (comments and `retry:` skipped)."""
    events = []
    for block in frame.decode().split("\n\n"):
        lines = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":"
        )
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def samples_of(event: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(event["pcm"]), dtype="<i2").astype(np.float32) / 32767


class Reader:
    """A page's stream of one channel, read on its own event loop in a thread."""

    def __init__(self, channel: AudioChannel) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.done = threading.Event()
        self._channel = channel
        self._loop = asyncio.new_event_loop()
        # A daemon: a reader whose channel a test forgot to close must not keep pytest alive.
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._read(),), daemon=True
        )
        self._thread.start()
        wait_for(lambda: channel.listening)

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """The page went away: end the stream and the reader's thread."""
        self._channel.close()
        self._thread.join(5)
        self._loop.close()

    async def _read(self) -> None:
        async for frame in self._channel.frames():
            self.events.extend(parse(frame))
        self.done.set()

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --- the channel ---------------------------------------------------------------------------


def test_chunks_reach_the_page_in_order_as_16_bit_pcm() -> None:
    channel = AudioChannels().open()
    assert channel is not None and not channel.listening
    reader = Reader(channel)
    turn = channel.begin_turn()
    tone = np.sin(np.linspace(0, 60, 2205)).astype(np.float32) * 0.5
    channel.push(turn, 22_050, tone)
    channel.push(turn, 22_050, np.zeros(100, np.float32))
    wait_for(lambda: reader.kinds().count("audio") == 2)
    assert reader.kinds() == ["ready", "flush", "audio", "audio"]
    first = reader.events[2][1]
    assert first["turn"] == turn and first["rate"] == 22_050
    assert np.allclose(samples_of(first), tone, atol=1e-4)
    # A new turn first tells the page to stop the one before, by number.
    assert channel.begin_turn() == turn + 1
    channel.flush()
    wait_for(lambda: len(reader.events) == 6)
    assert reader.events[4] == ("flush", {"turn": turn})
    assert reader.events[5] == ("flush", {"turn": turn + 1})
    channel.close()
    assert reader.done.wait(5) and not channel.listening


def test_a_page_that_stops_reading_is_dropped(monkeypatch) -> None:
    monkeypatch.setattr(playback, "MAX_PENDING", 4)
    channel = AudioChannel("x")
    loop = asyncio.new_event_loop()
    stream = channel.frames()
    assert b"ready" in loop.run_until_complete(stream.__anext__())  # connected, then silent
    assert channel.listening
    for _ in range(10):
        channel.push(1, 16_000, np.zeros(16_000, np.float32))
    loop.run_until_complete(asyncio.sleep(0.05))  # the pushes land on the page's loop
    assert not channel.listening, "a reader that fell behind holds no more audio"
    got = []
    while True:
        try:
            got.append(loop.run_until_complete(stream.__anext__()))
        except StopAsyncIteration:
            break
    assert len(got) < 4
    loop.close()


def test_channel_ids_are_secret_and_bounded(monkeypatch) -> None:
    channels = AudioChannels()
    a, b = channels.open(), channels.open()
    assert a is not None and b is not None and a.id != b.id and len(a.id) >= 32
    assert channels.get(a.id) is a
    channels.close(a)
    assert channels.get(a.id) is None and a.closed and len(channels) == 1
    monkeypatch.setattr(playback, "MAX_CHANNELS", 1)
    assert channels.open() is None


# --- a turn, over a real server ------------------------------------------------------------


@pytest.fixture
def live(monkeypatch) -> Iterator[tuple[LiveServer, Any, Agent]]:
    monkeypatch.syspath_prepend(str(REPO))
    import app as app_module

    get_settings.cache_clear()
    models = fake_models()
    agent = Agent(models)
    demo = build_ui(lambda: agent, models, pause_default=0.6)
    with LiveServer(app_module.build_app(models, get_settings(), demo), lifespan=True) as server:
        yield server, demo.voice_agent_handlers, agent


class SSE:
    """A page's EventSource on the real server: `GET /voice/audio/{id}`, read in a thread."""

    def __init__(self, url: str) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self._client = httpx.Client(timeout=30)
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()
        wait_for(lambda: self.status is not None)

    def _read(self, url: str) -> None:
        try:
            with self._client.stream("GET", url) as r:
                self.status, self.headers = r.status_code, dict(r.headers)
                buffer = b""
                for piece in r.iter_raw():
                    buffer += piece
                    *blocks, buffer = buffer.split(b"\n\n")
                    for block in blocks:
                        self.events.extend(parse(block + b"\n\n"))
        except httpx.HTTPError:
            pass

    def close(self) -> None:
        self._client.close()


def connected_turn(
    server: LiveServer, handlers: Any, text: str
) -> tuple[Any, SSE, threading.Thread]:
    """A tab whose page listens to its audio stream, and a typed turn running on a thread."""
    ui = handlers.on_load()[0]
    page = SSE(f"{server.url}/voice/audio/{ui.audio.id}")
    wait_for(lambda: ui.audio.listening)
    worker = threading.Thread(target=lambda: list(handlers.send_text(text, ui, "", 0.0, 64, "")))
    worker.start()
    return ui, page, worker


def audio_update(step: Any) -> Any:
    """The reply player's update from a handler's step (gr.Audio or a skip)."""
    return step[1]


def test_a_turn_plays_through_the_page_player_as_it_is_made(live) -> None:
    server, handlers, _ = live
    ui = handlers.on_load()[0]
    channel_id = ui.audio.id
    assert handlers.on_load()[-1] != channel_id, "each tab its own channel"
    page = SSE(f"{server.url}/voice/audio/{channel_id}")
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/event-stream")
    assert page.headers["cache-control"] == "no-store"
    wait_for(lambda: ui.audio.listening and page.events)
    steps = list(handlers.send_text("Hello there, how are you?", ui, "", 0.0, 64, ""))
    wait_for(lambda: any(kind == "audio" for kind, _ in page.events))
    audio = [e for kind, e in page.events if kind == "audio"]
    assert audio and all(e["rate"] == 16_000 and samples_of(e).size for e in audio)
    assert {e["turn"] for e in audio} == {1}
    # The chunks went to the page, not through Gradio: the player gets the whole reply
    # at the end, to replay, and must not play it a second time.
    final = audio_update(steps[-1])
    assert final.constructor_args["autoplay"] is False
    assert Path(final.constructor_args["value"]).stat().st_size > 44
    assert ui.played_live
    page.close()


def test_without_a_page_player_the_whole_reply_autoplays_at_the_end(live) -> None:
    _, handlers, _ = live
    ui = handlers.on_load()[0]
    assert not ui.audio.listening
    steps = list(handlers.send_text("Hello there", ui, "", 0.0, 64, ""))
    final = audio_update(steps[-1])
    assert final.constructor_args["autoplay"] is True and not ui.played_live


def test_stop_silences_the_page_at_once(live) -> None:
    server, handlers, agent = live
    agent.models.llm = FakeLLM(wait_for_cancel=True)
    ui, page, worker = connected_turn(server, handlers, "Tell me")
    assert agent.models.llm.started.wait(5)
    handlers.stop(ui)
    worker.join(10)
    wait_for(lambda: ("flush", {"turn": 1}) in page.events)
    page.close()


def test_an_unknown_channel_is_404_and_the_page_loads_the_player(live) -> None:
    server, _, _ = live
    r = httpx.get(f"{server.url}/voice/audio/nope", timeout=30)
    assert r.status_code == 404 and "audio channel" in r.json()["error"]["message"]
    page = httpx.get(server.url + "/", timeout=30).text
    assert "window.vaPlayer" in page and PAGE_HEAD.count("<script>") == 3


# --- when the page heard it ---------------------------------------------------------------


def test_the_pages_report_of_its_first_sound_reaches_whoever_waits() -> None:
    channel = AudioChannel("x")
    first, second = channel.begin_turn(), channel.begin_turn()
    got: list[tuple[int, float]] = []
    channel.when_heard(second, lambda at: got.append((second, at)))
    before = time.perf_counter()
    channel.report_heard(second, 0.5)
    assert got and got[0][0] == second and before + 0.5 <= got[0][1] <= time.perf_counter() + 0.5
    channel.report_heard(second, 3.0)  # only the first report of a turn counts
    channel.when_heard(second, lambda at: got.append((second, at)))
    assert got[1] == got[0]
    channel.report_heard(first + 5, 0.1)  # a turn that has not begun: ignored
    channel.when_heard(first + 5, lambda at: got.append((0, at)))
    assert len(got) == 2


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"turn": 1, "wait_s": 0.01}', 204),
        (b"not json", 400),
        (b'{"turn": 1}', 400),
        (b'{"turn": true, "wait_s": 0}', 400),
        (b'{"turn": 1, "wait_s": -1}', 400),
        (b'{"turn": 1, "wait_s": 1e9}', 400),
        (b'{"turn": "1", "wait_s": 0}', 400),
        (b'{"turn": 1, "wait_s": "soon"}', 400),
        (b"\xff\xfe", 400),
        (b'{"turn": 1, "wait_s": 0, "x": "\\ud800"}', 204),
    ],
)
def test_heard_reports_are_checked(live, body: bytes, status: int) -> None:
    server, handlers, _ = live
    ui = handlers.on_load()[0]
    ui.audio.begin_turn()
    url = f"{server.url}/voice/audio/{ui.audio.id}/heard"
    r = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    if status == 400:
        assert "turn" in r.json()["error"]["message"]
    missing = httpx.post(f"{server.url}/voice/audio/nope/heard", content=body, timeout=30)
    assert missing.status_code == 404


def test_diagnostics_shows_when_the_page_heard_the_turn(live) -> None:
    server, handlers, agent = live
    ui, page, worker = connected_turn(server, handlers, "Hello there")
    wait_for(lambda: any(kind == "audio" for kind, _ in page.events))
    # The page player, on its first chunk: "this turn is heard in 0.2 s".
    r = httpx.post(
        f"{server.url}/voice/audio/{ui.audio.id}/heard",
        json={"turn": 1, "wait_s": 0.2},
        timeout=30,
    )
    assert r.status_code == 204
    worker.join(30)
    turn = agent.recent_timings()["turns"][-1]
    assert turn["first_audio"] is not None
    assert turn["first_audio_heard"] >= turn["first_audio"] + 0.2
    assert turn["first_audio_heard"] < turn["first_audio"] + 10
    snapshot_rows = handlers.refresh()[5]
    assert snapshot_rows[-1][5] == round(turn["first_audio_heard"], 2)
    page.close()
