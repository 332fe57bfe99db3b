"""The app in a real browser: `python app.py` on tiny checkpoints, driven by headless Chromium.

Uses Debian's `/usr/bin/chromium` through Playwright for Python (browser
downloads are not possible everywhere), with a fake microphone playing
`assets/speech_pause_speech.wav` for hands-free mode. Screenshots go to
`test-artifacts/`.
Select with `pytest -k browser`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from voice_agent.testing.server import free_port

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
# The first row's cells under the named columns of the Diagnostics latency table.
LATENCY_CELL_JS = """(names) => {
  const table = document.querySelector('#latency-table');
  const heads = [...table.querySelectorAll('thead th')].map((h) => h.innerText.trim());
  const cells = [...table.querySelectorAll('[role=gridcell]')].map((c) => c.innerText.trim());
  return names.map((n) => cells[heads.findIndex((h) => h.includes(n))]);
}"""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    # A fake microphone that plays a recording: speech, a 1.2 s pause, speech.
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    f"--use-file-for-fake-audio-capture={REPO / 'assets' / 'speech_pause_speech.wav'}%noloop",
]
START_TIMEOUT_S = 180
TURN_TIMEOUT_MS = 90_000


def get_json(url: str) -> tuple[int, dict | None]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_for_models(base: str, proc: subprocess.Popen, log: Path) -> dict:
    """Poll /health until every model settled; return the snapshot."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            status, snap = get_json(f"{base}/health")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
            continue
        states = {c: (e or {}).get("status") for c, e in ((snap or {}).get("models") or {}).items()}
        if states and all(s in ("ready", "failed") for s in states.values()):
            assert status == 200, f"a model failed: {snap}"
            return snap
        time.sleep(0.5)
    pytest.fail(f"the models did not load in {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def start_app(tmp_path: Path, models: dict[str, str], log_name: str):
    """Start `python app.py` on a free loopback port; yields (base URL, process, log)."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        models,
        HF_HUB_OFFLINE="1",
        LLM_DEVICE="cpu",
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="2",
    )
    log = tmp_path / log_name
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        yield base, proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / log_name).write_text(log.read_text())


@pytest.fixture
def running_app(tiny_models: Path, tmp_path: Path):
    models = {
        "MODEL_SERVER_MODEL_NAME": str(tiny_models / "llm"),
        "STT_MODEL_NAME": str(tiny_models / "stt"),
        "TTS_BACKEND": "vits",
        "TTS_MODEL_NAME": str(tiny_models / "vits"),
    }
    yield from start_app(tmp_path, models, "browser-app.log")


def open_page(browser, base: str, proc: subprocess.Popen):
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.set_default_timeout(TURN_TIMEOUT_MS)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            page.goto(base, wait_until="domcontentloaded")
            return page
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.5)


@pytest.mark.browser
def test_browser_conversation_diagnostics_and_self_test(running_app):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (CI installs it)")
    from playwright.sync_api import expect, sync_playwright

    base, proc, log = running_app
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            expect.set_options(timeout=TURN_TIMEOUT_MS)
            # The page opens while the models are still loading and shows their progress.
            page = open_page(browser, base, proc)
            expect(page.locator("#va-header")).to_be_visible()
            expect(page.locator("#chat")).to_be_visible()
            page.screenshot(path=ARTIFACTS / "01-opened.png")
            snap = wait_for_models(base, proc, log)
            # Once every model is ready the loading banner goes away (polled each second).
            expect(page.get_by_text("Loading models")).to_have_count(0, timeout=15_000)

            # The tiny LLM has a 512-token context: keep replies short (Settings panel).
            page.locator("#settings").get_by_text("Settings", exact=True).click()
            max_tokens = page.locator("#max-tokens input[type=number]")
            max_tokens.fill("48")
            max_tokens.press("Enter")

            # A typed turn: the reply streams in, then its latency line; the voice plays.
            box = page.locator("#message textarea")
            box.fill("Hello there, how are you?")
            box.press("Enter")
            chat = page.locator("#chat")
            expect(chat).to_contain_text("Hello there, how are you?")
            expect(chat.locator(".turn-latency")).to_contain_text("first word")
            # The voice played in the page as it was made (ui.playback: the tab's audio stream
            # and Web Audio), and the player below keeps the whole reply to replay.
            page.wait_for_function(
                "window.vaPlayer && window.vaPlayer.ready && window.vaPlayer.stats.chunks > 0"
                " && window.vaPlayer.stats.firstAt !== null"
            )
            played = page.evaluate("JSON.parse(JSON.stringify(window.vaPlayer.stats))")
            assert played["audioS"] > 0 and played["turn"] >= 1, played
            # Each gap says where it came (the voice bench's `stall_after`).
            for gap in played["gaps"]:
                assert gap["s"] > 0 and 1 <= gap["chunks"] <= played["chunks"], played
                assert 0 < gap["audioS"] <= played["audioS"], played
            audio = page.locator("#reply-audio audio[src]")
            expect(audio.first).to_be_attached()
            assert audio.first.get_attribute("src"), "the reply player has the whole reply"
            assert page.evaluate(
                "[...document.querySelectorAll('#reply-audio audio')].every(a => a.paused)"
            ), "played once, by the page player, not a second time by the element"
            expect(page.locator("#turn-status")).to_contain_text("Ready")
            page.screenshot(path=ARTIFACTS / "02-conversation.png", full_page=True)

            # Diagnostics: the LLM's strategy and the bitsandbytes probe, as /health reports them.
            page.get_by_role("tab", name="Diagnostics").click()
            strategy = snap["models"]["llm"]["report"]["chosen"]["strategy"]
            expect(page.locator("#diag-models")).to_contain_text(strategy)
            expect(page.locator("#bnb-probe")).to_contain_text(snap["bitsandbytes"]["diagnosis"])
            expect(page.locator("#latency-summary")).to_contain_text("1 recent turn")
            # The page told the server when the turn was first heard: the latency table says.
            cell = page.evaluate(LATENCY_CELL_JS, ["speaking at", "heard in page"])
            assert cell and 0 < float(cell[0]) <= float(cell[1]) < float(cell[0]) + 5, cell
            page.screenshot(path=ARTIFACTS / "03-diagnostics.png", full_page=True)

            page.get_by_role("button", name="Run self-test").click()
            headline = page.locator("#self-test-headline")
            expect(headline).to_contain_text("stages", timeout=TURN_TIMEOUT_MS)
            table = page.locator("#self-test-table")
            for stage in ("stt", "llm", "tts", "pipeline"):
                expect(table).to_contain_text(stage)
            headline.scroll_into_view_if_needed()
            page.screenshot(path=ARTIFACTS / "04-self-test.png", full_page=True)

            # Record (push to talk, the page's own microphone): the fake microphone's speech,
            # its 1.2 s pause and more speech are one turn, sent by Stop recording.
            page.get_by_role("tab", name="Conversation").click()
            talk = page.locator("#talk-mic")
            talk.get_by_role("button", name="Record", exact=True).click()
            expect(talk).to_contain_text("Recording")
            page.wait_for_function("window.vaMic.on && window.vaMic.seconds >= 7.8")  # the clip
            talk.get_by_role("button", name="Stop recording", exact=True).click()
            expect(talk.get_by_role("button", name="Record", exact=True)).to_be_visible()
            expect(chat.locator(".via-voice")).to_have_count(1)
            expect(chat.locator(".turn-latency").last).to_contain_text("first word")
            expect(page.locator("#turn-status")).to_contain_text("Ready")
            assert page.evaluate("window.vaMic.mode") == "hold"

            # Hands-free: the fake microphone talks; a pause ends the turn and a reply comes.
            page.locator("#hands-free input[type=checkbox]").check()
            expect(talk).to_be_hidden()
            hf_mic = page.locator("#hands-free-mic")
            expect(hf_mic).to_be_visible()
            hf_mic.get_by_role("button", name="Start listening").click()
            expect(hf_mic.get_by_role("button", name="Stop listening")).to_be_visible()
            # The page asked the browser for echo cancellation (ui.blocks.ECHO_SAFE_MIC_HEAD).
            asked = page.evaluate("window.vaMicConstraints")
            assert asked and asked["echoCancellation"] is True, asked
            # The dot on the button follows the level it hears, set with each post; nothing on
            # the page animates while it listens (an endless animation redraws 60 times a
            # second, which the models' cores pay for).
            page.wait_for_function("window.vaMic.peak >= 0.7")
            assert hf_mic.evaluate("e => e.style.getPropertyValue('--va-level')")
            # While the user's turn is open the page posts every 0.1 s, as the server asks
            # (a post holds whole 21 ms blocks: 0.11-0.12 s).
            page.wait_for_function("window.vaMic.chunk === 0.1")
            page.wait_for_function("window.vaMic.lastPost > 0 && window.vaMic.lastPost < 0.2")
            endless = page.evaluate(
                "document.getAnimations().filter((a) => a.playState === 'running'"
                " && a.effect && a.effect.getTiming().iterations === Infinity).length"
            )
            assert endless == 0, f"{endless} endless animations run while listening"
            # Two utterances (the pause splits them); the second may barge in on the first
            # reply. At least one spoken turn is answered, with its full latency line.
            expect(chat.locator(".via-voice")).to_have_count(3)
            answered = chat.locator(".turn-latency").filter(has_text="heard in")
            expect(answered.filter(has_text="first word").first).to_be_visible()
            expect(page.locator("#turn-status")).to_contain_text("Ready")
            page.screenshot(path=ARTIFACTS / "05-hands-free.png", full_page=True)
            # The page's microphone posted its audio itself (ui.microphone), not Gradio's.
            assert page.evaluate("window.vaMic.posts") > 10
            # The clip has ended: the microphone hears silence, and the dot says so.
            page.wait_for_function("window.vaMic.level <= 0.4")
            page.wait_for_function("window.vaMic.chunk === 0.25")  # no turn open: slow again
            page.wait_for_function("window.vaMic.lastPost >= 0.25")
            level, shown = hf_mic.evaluate(
                "e => [e.style.getPropertyValue('--va-level'),"
                " getComputedStyle(e.querySelector('button'), '::before').opacity]"
            )
            assert float(shown) == float(level) <= 0.4, (level, shown)  # the dot shows it
            hf_mic.get_by_role("button", name="Stop listening").click()
            expect(hf_mic).to_contain_text("Microphone off.")
        finally:
            browser.close()


@pytest.mark.browser
def test_browser_degraded_mode_explains_what_is_missing(tmp_path: Path):
    """A fresh clone offline: no model can load, yet the page opens and says why."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (CI installs it)")
    from playwright.sync_api import expect, sync_playwright

    missing = tmp_path / "no-such-model"
    models = {
        "MODEL_SERVER_MODEL_NAME": str(missing / "llm"),
        "STT_MODEL_NAME": str(missing / "stt"),
        "TTS_BACKEND": "vits",
        "TTS_MODEL_NAME": str(missing / "vits"),
    }
    app = start_app(tmp_path, models, "browser-degraded-app.log")
    base, proc, _ = next(app)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                expect.set_options(timeout=60_000)
                page = open_page(browser, base, proc)
                banner = page.locator("#status-banner")
                expect(banner).to_contain_text("degraded mode")
                expect(banner).to_contain_text("Speech recognition is unavailable")
                page.screenshot(path=ARTIFACTS / "06-degraded.png")
                # Typing still gets a clear answer instead of a broken page.
                box = page.locator("#message textarea")
                box.fill("Anyone there?")
                box.press("Enter")
                expect(page.locator("#chat")).to_contain_text("language model is not available")
                page.get_by_role("button", name="Open Diagnostics →").click()
                expect(page.locator("#diag-models")).to_contain_text("does not exist")
                page.screenshot(path=ARTIFACTS / "07-degraded-diagnostics.png", full_page=True)
            finally:
                browser.close()
    finally:
        next(app, None)


@pytest.mark.browser
def test_browser_login_guards_the_page_and_the_page_still_works(tmp_path: Path):
    """With a key set, the browser gets a login prompt (HTTP Basic); once logged in, every
    request the page makes (config, queue, server-sent events) carries the login, so the
    page works; without it nothing but a 401 comes back."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (CI installs it)")
    from playwright.sync_api import expect, sync_playwright

    missing = tmp_path / "no-such-model"  # nothing loads: quick, and typing still answers
    env = {
        "MODEL_SERVER_MODEL_NAME": str(missing / "llm"),
        "STT_MODEL_NAME": str(missing / "stt"),
        "TTS_BACKEND": "vits",
        "TTS_MODEL_NAME": str(missing / "vits"),
        "MODEL_SERVER_API_KEY": "browser-test-key",
        "GRADIO_AUTH": "ada:lovelace",
    }
    app = start_app(tmp_path, env, "browser-login-app.log")
    base, proc, _ = next(app)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                expect.set_options(timeout=60_000)
                deadline = time.monotonic() + START_TIMEOUT_S
                while True:  # up once /health answers (it needs no login)
                    try:
                        get_json(f"{base}/health")
                        break
                    except (urllib.error.URLError, ConnectionError, TimeoutError):
                        if time.monotonic() > deadline or proc.poll() is not None:
                            raise
                        time.sleep(0.5)
                stranger = browser.new_page()
                # Headless Chromium has no prompt to show: the navigation fails on the challenge.
                with pytest.raises(Exception, match="AUTH"):
                    stranger.goto(base, wait_until="domcontentloaded")

                context = browser.new_context(
                    http_credentials={"username": "ada", "password": "lovelace"}
                )
                page = context.new_page()
                page.goto(base, wait_until="domcontentloaded")
                expect(page.locator("#status-banner")).to_contain_text("degraded mode")
                box = page.locator("#message textarea")
                box.fill("Anyone there?")
                box.press("Enter")
                expect(page.locator("#chat")).to_contain_text("language model is not available")
                page.screenshot(path=ARTIFACTS / "08-logged-in.png")
            finally:
                browser.close()
    finally:
        next(app, None)
