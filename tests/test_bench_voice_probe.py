"""The voice bench's probe (`bench.voice.PROBE_JS`) in headless Chromium, on a page of its own.

The page has the app's turn status line and a stand-in for the page player's record
(`window.vaPlayer.stats`, as `ui.playback` keeps it). The probe must time what it
measures without taking the cores the measured turn runs on: no timer, no animation
frame while the page has its player. Select with `pytest -k browser`.
"""

from __future__ import annotations

import base64
import io
import wave
from pathlib import Path

import numpy as np
import pytest

from voice_agent.bench.voice import PROBE_JS, STALL_MIN_MS

CHROMIUM = Path("/usr/bin/chromium")

PAGE = """<div id="turn-status"><p>Ready</p></div>
<script>
window.vaPlayer = {ready: true,  // connected to the tab's audio stream
                   stats: {turn: 3, firstAt: null, gaps: [], audioS: 0, endAt: null, chunks: 0}};
</script>"""

# Counts the page's timers and animation frames, from before the probe is installed.
COUNT_TIMERS = """
window.__timers = {interval: 0, timeout: 0, raf: 0};
for (const [name, key] of [['setInterval', 'interval'], ['setTimeout', 'timeout'],
                           ['requestAnimationFrame', 'raf']]) {
  const original = window[name].bind(window);
  window[name] = (...args) => { window.__timers[key] += 1; return original(...args); };
}
"""

SAY = """(text) => { document.querySelector('#turn-status').innerHTML = '<p>' + text + '</p>';
                return performance.now(); }"""


def tone_wav(seconds: float = 1.0, rate: int = 8_000) -> str:
    """A 440 Hz tone as a WAV data URL."""
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes())
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode()


# The app's page with its player, and one whose player never connected (no streamed audio:
# the reply plays in Gradio's <audio>).
WITH_PLAYER = PAGE
NOT_CONNECTED = f"""<div id="turn-status"><p>Ready</p></div>
<div id="reply-audio"><audio src="{tone_wav()}"></audio></div>
<script>
window.vaPlayer = {{ready: false, stats: {{turn: -1, firstAt: null, gaps: [], audioS: 0,
                                          endAt: null, chunks: 0}}}};
</script>"""


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (CI installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        args = ["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, html: str):
    page = browser.new_page()
    page.add_init_script(COUNT_TIMERS)
    page.add_init_script(PROBE_JS)
    # Served (a navigation runs the init scripts; `set_content` would not).
    page.route(
        "http://probe.test/", lambda route: route.fulfill(body=html, content_type="text/html")
    )
    page.goto("http://probe.test/")
    return page


@pytest.fixture
def page(browser):
    return open_page(browser, WITH_PLAYER)


@pytest.mark.browser
def test_the_probe_times_the_status_line_as_it_changes_without_polling(page) -> None:
    page.evaluate("window.__va.reset()")
    thinking = page.evaluate(SAY, "Thinking…")
    page.wait_for_timeout(30)
    answering = page.evaluate(SAY, "Answering…")
    page.wait_for_timeout(30)
    ready = page.evaluate(SAY, "Ready")
    status = page.evaluate("window.__va.snapshot()")["status"]
    # Each stage's time is when the line changed, before the next change.
    assert thinking <= status["Thinking"] < answering, (thinking, status, answering)
    assert answering <= status["Answering"] < ready, status
    assert ready <= status["Ready"], status
    assert page.evaluate("window.__va.has('Ready')")
    # A turn answered ahead may go from its microphone's status straight to "Answering":
    # the transcript was shown then too, and its "Ready" still ends the turn.
    page.evaluate("window.__va.reset()")
    page.evaluate(SAY, "Listening")
    answering = page.evaluate(SAY, "Answering…")
    page.evaluate(SAY, "Ready")
    status = page.evaluate("window.__va.snapshot()")["status"]
    assert status["Thinking"] == status["Answering"] >= answering, status
    assert page.evaluate("window.__va.has('Ready')")
    # "Ready" before anything was heard is the page at rest, not the end of a turn.
    page.evaluate("window.__va.reset()")
    page.evaluate(SAY, "Ready")
    assert not page.evaluate("window.__va.has('Ready')")
    assert page.evaluate("window.__timers") == {"interval": 0, "timeout": 0, "raf": 0}


@pytest.mark.browser
def test_the_probe_reads_the_players_record_of_this_turn(page) -> None:
    page.evaluate("window.__va.reset()")
    # The player's record of an earlier turn is not this one's.
    page.evaluate("window.vaPlayer.stats.firstAt = performance.now() - 500")
    assert page.evaluate("window.__va.snapshot()")["first"] is None
    # This turn's first chunk, scheduled 10 s ahead, is not heard yet.
    page.evaluate("window.vaPlayer.stats.turn = 4")
    page.evaluate("window.vaPlayer.stats.firstAt = performance.now() + 10000")
    assert page.evaluate("window.__va.snapshot()")["first"] is None
    # Heard: its time, the gaps long enough to hear and where they came, what played.
    gap = STALL_MIN_MS / 1000
    heard = page.evaluate(
        """([short, long]) => { const st = window.vaPlayer.stats;
             st.firstAt = performance.now() - 2000;
             st.gaps = [{s: short, chunks: 1, audioS: 0.5}, {s: long, chunks: 2, audioS: 1.1}];
             st.audioS = 1.6; st.chunks = 3; st.endAt = performance.now() - 100;
             return st.firstAt; }""",
        [gap / 2, gap * 5],
    )
    probe = page.evaluate("window.__va.snapshot()")
    assert probe["via"] == "player" and probe["first"] == heard, probe
    assert probe["stalls"] == [gap * 5] and probe["stallAt"] == [[2, 1.1]], probe
    assert probe["played"] == 1.6
    # Played out 0.1 s ago: settled for 50 ms, not yet for 1 s.
    assert page.evaluate("window.__va.settled(50)")
    assert not page.evaluate("window.__va.settled(1000)")
    assert page.evaluate("window.__timers") == {"interval": 0, "timeout": 0, "raf": 0}


@pytest.mark.browser
def test_without_a_connected_player_the_probe_follows_the_audio_elements_clock(browser) -> None:
    page = open_page(browser, NOT_CONNECTED)
    page.evaluate("window.__va.reset()")
    assert page.evaluate("window.__va.snapshot()")["first"] is None
    page.evaluate("document.querySelector('#reply-audio audio').play()")
    page.wait_for_function("window.__va.first !== null", polling=100, timeout=10_000)
    page.wait_for_function("window.__va.settled(300)", polling=100, timeout=10_000)
    probe = page.evaluate("window.__va.snapshot()")
    assert probe["via"] == "audio" and 0.5 < probe["played"] <= 1.05, probe
    assert page.evaluate("window.__timers")["interval"] == 1  # polling its clock, only here
