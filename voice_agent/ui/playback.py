"""The reply's voice, delivered to the page as it is made: one audio channel per tab.

Gradio's streamed audio output encodes every chunk to AAC with ffmpeg and serves
it as HLS, which the page's player polls for; that added whole seconds between
"speaking at" and the first sound (docs/agent.md, "What the listener hears").
Here a turn pushes each chunk, as 16-bit PCM, into its tab's `AudioChannel`;
the page holds one Server-Sent Events stream per tab (`GET /voice/audio/{id}`)
and plays each chunk with Web Audio the moment it arrives, back to back
(`PLAYER_HEAD`, the page's player). Nothing is encoded, polled or buffered.

A channel's id is a random secret handed to its own tab only (on page load);
the route sits behind the app's one credentials rule like every other door.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request  # FastAPI reads the route's annotations at runtime

log = logging.getLogger(__name__)

ROUTE = "/voice/audio/{channel_id}"
HEARD_ROUTE = "/voice/audio/{channel_id}/heard"  # the page: a turn's first sound plays now
MAX_WAIT_S = 10.0  # a page reporting its sound starts later than this is not believed
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
# Frames one listener may have waiting (a chunk is a phrase: seconds of audio). A page that
# stops reading (abandoned, or a hostile client) is dropped rather than holding the audio.
MAX_PENDING = 256
MAX_CHANNELS = 10_000  # one per open tab; a flood of page loads cannot grow this forever


@dataclass
class _Listener:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[bytes | None]
    dropped: bool = False


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One Server-Sent Event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def pcm16(samples: np.ndarray) -> bytes:
    """Mono float samples in [-1, 1] as little-endian 16-bit PCM."""
    x = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
    return (x * 32767.0).astype("<i2").tobytes()


class AudioChannel:
    """One tab's audio: chunks pushed by its turns (threads), read by its page (async).

    `turn` numbers the turns of the channel; the page drops chunks of a turn it
    was told to flush, so audio of a turn that was stopped never plays late.
    """

    def __init__(self, channel_id: str) -> None:
        self.id = channel_id
        self.turn = 0
        self._listeners: list[_Listener] = []
        self._lock = threading.Lock()
        self.closed = False
        # turn -> perf_counter() when the page said its first sound comes out, and who waits.
        self._heard: dict[int, float] = {}
        self._waiting: dict[int, Callable[[float], None]] = {}

    @property
    def listening(self) -> bool:
        """Whether a page is connected: only then is audio pushed here instead of the player."""
        with self._lock:
            return any(not listener.dropped for listener in self._listeners)

    def begin_turn(self) -> int:
        """A new turn: stop whatever the page still plays of earlier ones; its number."""
        self.turn += 1
        self._send(sse("flush", {"turn": self.turn - 1}))
        return self.turn

    def push(self, turn: int, sample_rate: int, samples: np.ndarray) -> None:
        """Send one chunk of `turn`'s speech to the page."""
        data = base64.b64encode(pcm16(samples)).decode("ascii")
        self._send(sse("audio", {"turn": turn, "rate": int(sample_rate), "pcm": data}))

    def flush(self) -> None:
        """Stop what the page plays now (Stop, barge-in), and whatever of this turn is still coming."""
        self._send(sse("flush", {"turn": self.turn}))

    def report_heard(self, turn: int, wait_s: float) -> None:
        """The page: `turn`'s first chunk arrived and will be heard in `wait_s` seconds.

        Stamped on arrival (one network hop after the page sent it: on loopback or a LAN,
        milliseconds), plus the page's own wait until the speaker plays it.
        """
        at = time.perf_counter() + wait_s
        with self._lock:
            if turn in self._heard or not 0 < turn <= self.turn:
                return
            self._heard[turn] = at
            for old in [t for t in self._heard if t < turn - 8]:
                del self._heard[old]
            callback = self._waiting.pop(turn, None)
        if callback is not None:
            callback(at)

    def when_heard(self, turn: int, callback: Callable[[float], None]) -> None:
        """Call `callback(perf_counter time)` once the page reports `turn`'s first sound
        (at once if it already has)."""
        with self._lock:
            at = self._heard.get(turn)
            if at is None:
                self._waiting = {t: c for t, c in self._waiting.items() if t > turn - 8}
                self._waiting[turn] = callback
                return
        callback(at)

    def close(self) -> None:
        """The tab went away: end every stream of this channel."""
        self.closed = True
        self._send(None)

    def _send(self, frame: bytes | None) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            if not listener.dropped:
                listener.loop.call_soon_threadsafe(self._deliver, listener, frame)

    @staticmethod
    def _deliver(listener: _Listener, frame: bytes | None) -> None:
        try:
            listener.queue.put_nowait(frame)
        except asyncio.QueueFull:
            log.warning("an audio stream stopped reading; it is closed")
            listener.dropped = True
            listener.queue.get_nowait()  # room for the end
            listener.queue.put_nowait(None)

    async def frames(self) -> AsyncIterator[bytes]:
        """What one connected page reads: a `ready` event, then the chunks as they come."""
        listener = _Listener(asyncio.get_running_loop(), asyncio.Queue(maxsize=MAX_PENDING))
        with self._lock:
            self._listeners.append(listener)
        try:
            yield b"retry: 1000\n\n" + sse("ready", {"turn": self.turn})
            while not self.closed:
                try:
                    frame = await asyncio.wait_for(listener.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if frame is None:
                    break
                yield frame
        finally:
            with self._lock:
                self._listeners.remove(listener)


class AudioChannels:
    """The open tabs' channels, by id."""

    def __init__(self) -> None:
        self._channels: dict[str, AudioChannel] = {}
        self._lock = threading.Lock()

    def open(self) -> AudioChannel | None:
        """A new channel with a fresh secret id; None when too many are open."""
        with self._lock:
            if len(self._channels) >= MAX_CHANNELS:
                log.warning(
                    "%d audio channels open: this tab plays each reply when complete", MAX_CHANNELS
                )
                return None
            channel = AudioChannel(secrets.token_urlsafe(24))
            self._channels[channel.id] = channel
            return channel

    def get(self, channel_id: str) -> AudioChannel | None:
        with self._lock:
            return self._channels.get(channel_id)

    def close(self, channel: AudioChannel | None) -> None:
        if channel is None:
            return
        with self._lock:
            self._channels.pop(channel.id, None)
        channel.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._channels)


_default: AudioChannels | None = None
_default_lock = threading.Lock()


def default_channels() -> AudioChannels:
    """The process's channels: the conversation pushes into them, the route reads them."""
    global _default
    with _default_lock:
        if _default is None:
            _default = AudioChannels()
        return _default


def add_route(app: Any, channels: AudioChannels | None = None) -> None:
    """Serve `GET /voice/audio/{id}` (the page's audio stream) on the FastAPI `app`."""
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    registry = channels if channels is not None else default_channels()

    async def audio_stream(channel_id: str) -> Any:
        channel = registry.get(channel_id)
        if channel is None:
            message = "no such audio channel (the page opens one when it loads)"
            return JSONResponse(error_json(message, "not_found", 404), status_code=404)
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(channel.frames(), media_type="text/event-stream", headers=headers)

    async def heard(channel_id: str, request: Request) -> Any:
        channel = registry.get(channel_id)
        if channel is None:
            return JSONResponse(error_json("no such audio channel", "not_found", 404), 404)
        try:
            body = json.loads(await request.body())
            turn, wait_s = body["turn"], float(body["wait_s"])
            if not isinstance(turn, int) or isinstance(turn, bool) or not 0 <= wait_s <= MAX_WAIT_S:
                raise ValueError
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            message = 'send {"turn": <int>, "wait_s": <seconds, 0 to 10>}'
            return JSONResponse(error_json(message, "invalid_request", 400), 400)
        channel.report_heard(turn, wait_s)
        return Response(status_code=204)

    app.add_api_route(ROUTE, audio_stream, methods=["GET"], include_in_schema=False)
    app.add_api_route(HEARD_ROUTE, heard, methods=["POST"], include_in_schema=False)


def error_json(message: str, kind: str, code: int) -> dict[str, Any]:
    """The REST API's error shape, for the page's own routes (here and `ui.microphone`)."""
    return {"error": {"message": message, "type": kind, "code": code}}


# The page's player: one EventSource per tab, each chunk decoded to a Web Audio buffer
# and started at the end of the one before (or at once). `window.vaPlayer.stats` says,
# for the latest turn, when its first sound was heard (performance.now() time) and each
# gap between chunks the listener heard: what `bench --only voice` and the browser test read.
PLAYER_HEAD = """<script>
(() => {
  if (window.vaPlayer) return;
  const AC = window.AudioContext || window.webkitAudioContext;
  // gaps: each silence between chunks (s), after how many chunks and seconds of audio.
  const fresh = (turn) => ({turn, chunks: 0, firstAt: null, endAt: null, gaps: [], audioS: 0});
  const s = {ctx: null, source: null, id: null, nextAt: 0, nodes: new Set(), dropTo: -1,
             stats: fresh(-1)};
  const context = () => {
    if (!AC) return null;
    if (!s.ctx) s.ctx = new AC({latencyHint: 'interactive'});
    if (s.ctx.state === 'suspended') s.ctx.resume().catch(() => {});
    return s.ctx;
  };
  // A page may start sound only after a gesture: the first click or key press unlocks it.
  for (const ev of ['pointerdown', 'keydown', 'touchstart']) {
    window.addEventListener(ev, () => { context(); }, {capture: true, passive: true});
  }
  // performance.now() at which the sound at context time t comes out of the speaker.
  const heardAt = (ctx, t) => {
    const ts = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
    if (ts && ts.performanceTime) return ts.performanceTime + (t - ts.contextTime) * 1000;
    const latency = (ctx.baseLatency || 0) + (ctx.outputLatency || 0);
    return performance.now() + (t - ctx.currentTime + latency) * 1000;
  };
  const flush = (turn) => {
    for (const node of s.nodes) { try { node.stop(); } catch (e) { /* not started */ } }
    s.nodes.clear();
    s.nextAt = 0;
    if (typeof turn === 'number') s.dropTo = Math.max(s.dropTo, turn);
  };
  const play = (m) => {
    if (m.turn <= s.dropTo) return;
    const ctx = context();
    if (!ctx) return;
    const raw = atob(m.pcm);
    const n = raw.length >> 1;
    if (!n) return;
    const buffer = ctx.createBuffer(1, n, m.rate);
    const out = buffer.getChannelData(0);
    for (let i = 0; i < n; i++) {
      const v = raw.charCodeAt(2 * i) | (raw.charCodeAt(2 * i + 1) << 8);
      out[i] = (v >= 32768 ? v - 65536 : v) / 32768;
    }
    if (m.turn !== s.stats.turn) { s.stats = fresh(m.turn); s.nextAt = 0; }
    const st = s.stats;
    const soonest = ctx.currentTime + 0.005;
    if (st.chunks > 0 && soonest > s.nextAt) {
      st.gaps.push({s: soonest - s.nextAt, chunks: st.chunks, audioS: st.audioS});
    }
    const at = Math.max(s.nextAt, soonest);
    const node = ctx.createBufferSource();
    node.buffer = buffer;
    node.connect(ctx.destination);
    node.onended = () => s.nodes.delete(node);
    node.start(at);
    s.nodes.add(node);
    if (st.firstAt === null) {
      st.firstAt = heardAt(ctx, at);
      // Tell the server when this turn is first heard (Diagnostics: "heard in page").
      const wait = Math.max(0, st.firstAt - performance.now()) / 1000;
      fetch(s.base + 'voice/audio/' + encodeURIComponent(s.id) + '/heard', {
        method: 'POST', headers: {'Content-Type': 'application/json'}, keepalive: true,
        body: JSON.stringify({turn: m.turn, wait_s: Math.min(wait, 10)}),
      }).catch(() => {});
    }
    s.nextAt = at + buffer.duration;
    st.chunks += 1;
    st.audioS += buffer.duration;
    st.endAt = heardAt(ctx, s.nextAt);
  };
  const connect = (id) => {
    if (!id || id === s.id) return;
    if (s.source) s.source.close();
    flush();
    s.id = id;
    s.dropTo = -1;
    s.stats = fresh(-1);
    s.base = window.location.pathname.replace(/[^/]*$/, '');
    const es = new EventSource(s.base + 'voice/audio/' + encodeURIComponent(id));
    es.addEventListener('audio', (e) => play(JSON.parse(e.data)));
    es.addEventListener('flush', (e) => flush(JSON.parse(e.data).turn));
    es.addEventListener('ready', () => { s.ready = true; });
    es.onerror = () => { s.ready = false; };
    s.source = es;
  };
  window.vaPlayer = {
    connect,
    flush: () => flush(s.stats.turn),
    get stats() { return s.stats; },
    get ready() { return !!s.ready; },
  };
})();
</script>"""
