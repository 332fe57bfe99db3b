"""The app as an MCP server (Gradio's, at /gradio_api/mcp/), with the official `mcp` client:
three tidy, documented tools (transcribe, speak, chat), nothing internal, and the same
credentials rule as every other door."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes import FakeLLM, fake_models
from voice_agent.core.config import get_settings
from voice_agent.pipeline.agent import Agent
from voice_agent.testing.server import LiveServer
from voice_agent.tools import Toolbox
from voice_agent.tools.toolbox import builtin_tools
from voice_agent.ui.blocks import build_ui

REPO = Path(__file__).resolve().parents[1]
KEY = "mcp-test-key-0123456789"
SCRIPT = [
    '<tool_call>\n{"name": "calculate", "arguments": {"expression": "24*37"}}\n</tool_call>',
    "24 times 37 is 888.",
]


@pytest.fixture(scope="module")
def keyed_app() -> Iterator[LiveServer]:
    import sys

    sys.path.insert(0, str(REPO))
    import app as app_module

    mp = pytest.MonkeyPatch()
    mp.setenv("MODEL_SERVER_API_KEY", KEY)
    get_settings.cache_clear()
    try:
        models = fake_models(llm=FakeLLM(script=SCRIPT))
        agent = Agent(models, tools=Toolbox(builtin_tools()))
        demo = build_ui(lambda: agent, models, pause_default=0.6, stream_audio=False)
        with LiveServer(app_module.build_app(models, get_settings(), demo), lifespan=True) as live:
            yield live
    finally:
        mp.undo()
        get_settings.cache_clear()


def mcp_session(url: str, headers: dict[str, str], work):
    """Run `work(session)` in an initialised official MCP client session; returns its result."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def main():
        async with httpx.AsyncClient(headers=headers, timeout=60) as http:
            async with streamable_http_client(url, http_client=http) as (read, write, _):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    return await work(session)

    return asyncio.run(main())


def test_the_mcp_server_offers_three_documented_tools(keyed_app: LiveServer) -> None:
    """Guards the tidy API: the MCP tools (and /gradio_api/info) are transcribe, speak and chat,
    each with its docstring; no internal event (refresh_1, transcript_4, lambda...) leaks."""
    auth = {"Authorization": f"Bearer {KEY}"}

    async def listing(session):
        return (await session.list_tools()).tools

    tools = {t.name: t for t in mcp_session(keyed_app.url + "/gradio_api/mcp/", auth, listing)}
    assert set(tools) == {"transcribe", "speak", "chat"}
    assert tools["chat"].description.startswith("Ask the voice assistant something")
    assert tools["chat"].inputSchema["required"] == ["message"]
    assert "recording" in tools["transcribe"].inputSchema["properties"]["audio"]["description"]
    assert tools["speak"].inputSchema["required"] == ["text"]
    info = httpx.get(keyed_app.url + "/gradio_api/info", headers=auth, timeout=30).json()
    assert set(info["named_endpoints"]) == {"/transcribe", "/speak", "/chat"}
    assert info["unnamed_endpoints"] == {}


def test_mcp_tools_answer(keyed_app: LiveServer) -> None:
    """chat goes through the agent and its tools; transcribe takes audio as base64 data (the
    MCP way); speak returns a WAV served behind the same credential."""
    auth = {"Authorization": f"Bearer {KEY}"}
    wav = base64.b64encode((REPO / "assets" / "hello.wav").read_bytes()).decode()

    async def calls(session):
        chat = await session.call_tool("chat", {"message": "What is 24 times 37?"})
        heard = await session.call_tool("transcribe", {"audio": "data:audio/wav;base64," + wav})
        spoken = await session.call_tool("speak", {"text": "Hello there."})
        empty = await session.call_tool("speak", {"text": "   "})
        return chat, heard, spoken, empty

    chat, heard, spoken, empty = mcp_session(keyed_app.url + "/gradio_api/mcp/", auth, calls)
    assert not chat.isError and chat.content[0].text == "24 times 37 is 888."
    assert not heard.isError and heard.content[0].text == "What is the weather like?"
    assert not spoken.isError
    url = spoken.content[0].text
    assert url.startswith(keyed_app.url) and url.endswith(".wav")
    assert httpx.get(url, timeout=30).status_code == 401  # the file needs the key too
    audio = httpx.get(url, headers=auth, timeout=30)
    assert audio.status_code == 200 and audio.content[:4] == b"RIFF"
    assert empty.isError and "empty" in json.dumps(empty.model_dump()).lower()


def test_the_mcp_server_needs_the_credential(keyed_app: LiveServer) -> None:
    """Guards "same credentials rule": without the key the official client cannot connect."""

    async def listing(session):
        return await session.list_tools()

    with pytest.raises(BaseException) as caught:  # the client raises an exception group
        mcp_session(keyed_app.url + "/gradio_api/mcp/", {}, listing)
    assert "401" in repr(caught.value), repr(caught.value)
    r = httpx.post(keyed_app.url + "/gradio_api/mcp/", json={}, timeout=30)
    assert r.status_code == 401
