"""The page's own microphone: its capture, posted to the server as raw PCM.

Gradio's `gr.Audio` records with a `MediaRecorder`, draws a live waveform for as
long as it listens, and hands the server nothing until the recording ends (one
WAV, encoded in the page and uploaded at Stop); streaming, it sends every 0.25 s
chunk as an uploaded file through its queue. On a 2-core machine that work took
the cores from the turn it was listening to (docs/agent.md).

Here the page (`MIC_HEAD`) taps the microphone with an `AudioWorklet`, and every
0.25 s posts what it heard as 16-bit PCM to `POST /voice/mic/{tab}?rate=R`, one
request at a time (what piles up while one is in flight goes with the next). The
server feeds it to the tab's turn detector (`Handlers.hear`) and answers with JSON:
the status line to show, the number of an utterance that just ended (the page then
clicks the hidden trigger that shows the turn, which the server has already started),
whether the user barged in (the page silences its player at once) and how much audio
to gather before the next post (`next_s`): 0.1 s while the user's turn is open, so
the pause that ends it, and the shorter one at which it is answered ahead, are heard
when they happen rather than up to a post later.
`?end=1` says the microphone stopped: speech still open ends the turn.

Two widgets share that microphone:

- **Record** (`#talk-mic`, push to talk; `?hold=1`): a pause does not end the turn,
  Stop does. The server hears the words while the user talks, so at a breath it
  already transcribes and answers (`VAD_EARLY_PAUSE_SECONDS`, `VAD_ANSWER_AHEAD`),
  and Stop finds the turn under way instead of starting an upload. The first post of
  a recording says `&start=1`: the user took the floor, a reply still playing stops.
- **Hands-free** (`#hands-free-mic`): a pause ends the turn (`VAD_PAUSE_SECONDS`).

The tab id is the secret the page got on load (the same as its audio channel's);
the route sits behind the app's one credentials rule like every other door.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from starlette.requests import Request  # FastAPI reads the route's annotations at runtime

from voice_agent.ui.playback import error_json

log = logging.getLogger(__name__)

ROUTE = "/voice/mic/{tab_id}"
CHUNK_S = 0.25  # how often the page posts (the detector works in 32 ms frames)
# How often it posts while the user's turn is open (from the first word to the pause that
# ends it). The detector can only see a pause in the audio it has: at 0.25 s a post, the
# 0.2 s pause at which a turn is answered ahead came 0.2 s late on the bench clip
# (`hello.wav` fed to the detector: 3.50 s in 0.25 s posts, 3.30 s in 0.1 s posts, 3.30 s
# frame by frame), and in the browser 0.3-0.6 s after the speech instead of 0.26 s.
QUICK_CHUNK_S = 0.1
MIN_RATE, MAX_RATE = 8_000, 192_000
# One post holds what piled up while the one before was in flight; more than this many
# seconds of audio in one request is not a microphone.
MAX_POST_S = 4.0
MAX_BYTES = int(MAX_RATE * MAX_POST_S) * 2
# The status line of each widget while it hears nothing yet (the page's and the server's).
LISTENING = "Listening — just talk; a pause ends your turn."
RECORDING = "Recording — press Stop recording when you are done."


class ChunkError(ValueError):
    """A post the microphone route refuses (HTTP 4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def parse_rate(raw: str | None) -> int:
    """The `rate` query parameter: the page's capture rate in Hz."""
    try:
        rate = int(raw or "")
    except ValueError:
        raise ChunkError(f"rate must be the sample rate in Hz ({MIN_RATE}-{MAX_RATE})") from None
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ChunkError(f"rate must be the sample rate in Hz ({MIN_RATE}-{MAX_RATE})")
    return rate


def parse_pcm(body: bytes) -> np.ndarray:
    """The body: mono little-endian 16-bit PCM."""
    if len(body) % 2:
        raise ChunkError("the body must be 16-bit PCM (an even number of bytes)")
    return np.frombuffer(body, dtype="<i2")


async def read_capped(request: Request, limit: int = MAX_BYTES) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ChunkError(f"at most {MAX_POST_S:.0f} s of audio per post", 413)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise ChunkError(f"at most {MAX_POST_S:.0f} s of audio per post", 413)
    return bytes(body)


def add_route(app: Any, handlers: Any) -> None:
    """Serve `POST /voice/mic/{tab}` (the page's microphone) on the FastAPI `app`."""
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    conversation = handlers.conversation

    async def mic(tab_id: str, request: Request) -> Any:
        ui = conversation.tab(tab_id)
        if ui is None:
            message = "no such tab (the page gets its id when it loads)"
            return JSONResponse(error_json(message, "not_found", 404), status_code=404)
        try:
            rate = parse_rate(request.query_params.get("rate"))
            samples = parse_pcm(await read_capped(request))
        except ChunkError as exc:
            kind = "payload_too_large" if exc.status == 413 else "invalid_request"
            return JSONResponse(error_json(str(exc), kind, exc.status), status_code=exc.status)
        flags = {k: request.query_params.get(k) in ("1", "true") for k in ("end", "hold", "start")}
        # The detector and the turns it starts are plain threads' work: off the event loop.
        reply = await run_in_threadpool(handlers.hear, ui, (rate, samples), **flags)
        return JSONResponse(reply, headers={"Cache-Control": "no-store"})

    app.add_api_route(ROUTE, mic, methods=["POST"], include_in_schema=False)


# The page's microphone. `window.vaMic.start(mode)` / `.stop()`; each widget's button calls
# them in its mode ("hold": `#talk-mic`, "listen": `#hands-free-mic`), which shows its
# state. The tab id is the one the page player got
# (`window.vaTab`, set on load). Each post waits for the one before: the detector hears
# the audio in order, and a slow server gets fewer, longer posts instead of a queue.
MIC_HEAD = (
    """<script>
(() => {
  if (window.vaMic) return;
  const CHUNK_S = CHUNK_SECONDS;
  // The audio thread hands over ~21 ms blocks (128-sample quanta would be 375 messages/s).
  const TAP = `class VaTap extends AudioWorkletProcessor {
    constructor() { super(); this.parts = []; this.n = 0; }
    process(inputs) {
      const ch = inputs[0] && inputs[0][0];
      if (ch) {
        this.parts.push(ch.slice(0)); this.n += ch.length;
        if (this.n >= 1024) {
          const out = new Float32Array(this.n); let o = 0;
          for (const p of this.parts) { out.set(p, o); o += p.length; }
          this.port.postMessage(out, [out.buffer]); this.parts = []; this.n = 0;
        }
      }
      return true;
    }
  }
  registerProcessor('va-tap', VaTap);`;
  const m = {on: false, starting: false, stream: null, ctx: null, rate: 0, parts: [], n: 0,
             busy: false, ending: [], posts: 0, mode: 'listen', first: false, level: 0, peak: 0,
             chunk: CHUNK_S, sent: 0, lastPost: 0, recording: 0};
  const WIDGET = {listen: '#hands-free-mic', hold: '#talk-mic'};
  const LABEL = {listen: ['Start listening', 'Stop listening'], hold: ['Record', 'Stop recording']};
  const HEARING = {listen: LISTENING_TEXT, hold: RECORDING_TEXT};
  const root = () => document.querySelector(WIDGET[m.mode]);
  const show = (text, on) => {
    const el = root();
    if (!el) return;
    const status = el.querySelector('.va-mic-status');
    if (status && typeof text === 'string') status.textContent = text;
    if (typeof on === 'boolean') {
      el.dataset.state = on ? 'on' : 'off';
      const button = el.querySelector('button');
      if (button) button.textContent = LABEL[m.mode][on ? 1 : 0];
    }
  };
  // The dot on the button follows the level of each post (4-10 times a second): it shows the
  // microphone hears, and costs a repaint per change instead of an animation's 60 frames a
  // second (a tenth of a core in a browser that draws without a GPU, docs/agent.md).
  const level = (sum, n) => {
    const db = 20 * Math.log10(Math.sqrt(sum / Math.max(n, 1)) + 1e-9);
    const shown = Math.round((0.3 + 0.7 * Math.max(0, Math.min(1, (db + 60) / 45))) * 10) / 10;
    m.level = shown; m.peak = Math.max(m.peak, shown);
    const el = root();
    if (el && el.style.getPropertyValue('--va-level') !== String(shown)) {
      el.style.setProperty('--va-level', String(shown));
    }
  };
  const take = () => {
    const pcm = new Int16Array(m.n);
    let o = 0, sum = 0;
    for (const p of m.parts) {
      for (let i = 0; i < p.length; i++) {
        const v = Math.max(-1, Math.min(1, p[i]));
        sum += v * v;
        pcm[o++] = v < 0 ? v * 32768 : v * 32767;
      }
    }
    if (m.on) level(sum, m.n);
    m.parts = []; m.n = 0;
    return pcm;
  };
  const answer = (reply, recording) => {
    // The server says how much to gather before the next post: less while a turn is open
    // (a late reply to an earlier recording's post says nothing about this one).
    if (typeof reply.next_s === 'number' && recording === m.recording) {
      m.chunk = Math.min(1, Math.max(0.05, reply.next_s));
    }
    if (reply.interrupted) {
      document.querySelectorAll('#reply-audio audio').forEach((a) => a.pause());
      if (window.vaPlayer) window.vaPlayer.flush();
    }
    if (reply.utterance !== null && reply.utterance !== undefined) {
      // The server already runs the turn; this shows it (and runs it on ZeroGPU).
      const trigger = document.querySelector('#utterance-trigger');
      if (trigger) trigger.click();
    }
    if (m.on || reply.utterance) show(reply.status);
  };
  // What one post sends: taken when it is made, so an end post that waits for the one in
  // flight still carries its own recording's audio and mode, whatever starts meanwhile.
  const job = (end) => {
    const j = {body: take(), rate: m.rate, mode: m.mode, first: m.first, end,
               recording: m.recording};
    m.first = false;
    m.lastPost = j.body.length / j.rate;
    m.sent += m.lastPost;
    return j;
  };
  const post = async (end, queued) => {
    if (m.busy) { if (end) m.ending.push(job(true)); return; }
    if (!queued && !m.n && !end) return;
    m.busy = true;
    const j = queued || job(end);
    const base = window.location.pathname.replace(/[^/]*$/, '');
    const url = base + 'voice/mic/' + encodeURIComponent(window.vaTab || '') + '?rate=' + j.rate +
      (j.end ? '&end=1' : '') + (j.mode === 'hold' ? '&hold=1' : '') + (j.first ? '&start=1' : '');
    try {
      const r = await fetch(url, {method: 'POST', body: j.body,
                                  headers: {'Content-Type': 'application/octet-stream'}});
      const reply = await r.json().catch(() => ({}));
      m.posts += 1;
      if (r.ok) answer(reply, j.recording);
      else {
        show((reply.error && reply.error.message) || ('The server refused the microphone (' +
             r.status + ').'));
        if (r.status === 404 || r.status === 401 || r.status === 403) stop(false);
      }
    } catch (e) {
      show('The microphone cannot reach the server; still trying.');
    } finally {
      m.busy = false;
    }
    if (m.ending.length) post(true, m.ending.shift());
    else if (m.on && m.n >= m.rate * m.chunk) post(false);
  };
  const start = async (mode) => {
    if (m.on || m.starting) return;
    if (mode in WIDGET) m.mode = mode;
    if (!window.vaTab) { show('The page is still loading; try again in a moment.'); return; }
    const AC = window.AudioContext || window.webkitAudioContext;
    if (!AC || !navigator.mediaDevices || !window.AudioWorkletNode) {
      show('This browser cannot stream the microphone (it needs https or localhost).');
      return;
    }
    m.starting = true;
    show('Opening the microphone…');
    try {
      const stream = await navigator.mediaDevices.getUserMedia({audio: true});
      const ctx = new AC({latencyHint: 'interactive'});
      const url = URL.createObjectURL(new Blob([TAP], {type: 'application/javascript'}));
      await ctx.audioWorklet.addModule(url);
      URL.revokeObjectURL(url);
      const tap = new AudioWorkletNode(ctx, 'va-tap', {numberOfOutputs: 1});
      const mute = ctx.createGain();
      mute.gain.value = 0;  // pulled by the graph, heard by nobody
      ctx.createMediaStreamSource(stream).connect(tap);
      tap.connect(mute).connect(ctx.destination);
      if (ctx.state === 'suspended') await ctx.resume();
      Object.assign(m, {stream, ctx, rate: ctx.sampleRate, parts: [], n: 0, on: true,
                        first: m.mode === 'hold', level: 0, peak: 0, chunk: CHUNK_S, sent: 0,
                        recording: m.recording + 1});
      if (root()) root().style.removeProperty('--va-level');  // full until the first post
      // Pressing Record takes the floor: a reply still playing stops now (the server
      // stops making it at the first post).
      if (m.mode === 'hold') {
        if (window.vaPlayer) window.vaPlayer.flush();
        document.querySelectorAll('#reply-audio audio').forEach((a) => a.pause());
      }
      tap.port.onmessage = (e) => {
        if (!m.on) return;
        m.parts.push(e.data); m.n += e.data.length;
        if (m.n >= m.rate * m.chunk) post(false);
      };
      show(HEARING[m.mode], true);
    } catch (e) {
      show('Could not open the microphone: ' + ((e && e.message) || e), false);
    } finally {
      m.starting = false;
    }
  };
  const stop = (send = true) => {
    if (!m.on) return;
    m.on = false;
    if (m.stream) m.stream.getTracks().forEach((t) => t.stop());
    if (m.ctx) m.ctx.close().catch(() => {});
    m.stream = m.ctx = null;
    show('Microphone off.', false);
    if (send) post(true); else { m.parts = []; m.n = 0; }
  };
  document.addEventListener('click', (e) => {
    if (!e.target || !e.target.closest) return;
    for (const mode of Object.keys(WIDGET)) {
      if (!e.target.closest(WIDGET[mode] + ' button')) continue;
      if (m.on && m.mode === mode) stop();
      else { stop(); start(mode); }  // the other widget's recording ends first
    }
  });
  window.vaMic = {start, stop, get on() { return m.on; }, get posts() { return m.posts; },
                  get mode() { return m.mode; }, get level() { return m.level; },
                  get peak() { return m.peak; }, get chunk() { return m.chunk; },
                  get seconds() { return m.sent; }, get lastPost() { return m.lastPost; }};
})();
</script>""".replace("CHUNK_SECONDS", str(CHUNK_S))
    .replace("LISTENING_TEXT", json.dumps(LISTENING))
    .replace("RECORDING_TEXT", json.dumps(RECORDING))
)

# The widgets: a button and the detector's status line (updated by `MIC_HEAD`).
TALK_HTML = (
    '<div id="talk-mic" class="va-mic" data-state="off">'
    '<button type="button" class="va-mic-button">Record</button>'
    '<span class="va-mic-status" id="talk-status" role="status" aria-live="polite">'
    "Press <b>Record</b>, speak, then <b>Stop recording</b>.</span></div>"
)
MIC_HTML = (
    '<div id="hands-free-mic" class="va-mic" data-state="off">'
    '<button type="button" class="va-mic-button">Start listening</button>'
    '<span class="va-mic-status" id="hands-free-status" role="status" aria-live="polite">'
    "Press <b>Start listening</b>, then just talk.</span></div>"
)
