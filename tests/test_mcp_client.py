"""Tools from MCP servers (MCP_SERVERS), against a real MCP server started in the test: over
stdio (a child process) and over streamable HTTP (a live server on loopback)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from voice_agent.core.cancel import CancelToken
from voice_agent.core.config import load_settings
from voice_agent.llm.base import ToolCall
from voice_agent.testing.server import LiveServer, free_port
from voice_agent.tools import Toolbox, ToolContext

SERVER = Path(__file__).with_name("mcp_fixture_server.py")
ALLOWED = ToolContext(allow_actions=True)


def toolbox(servers: str) -> Toolbox:
    box = Toolbox.from_settings(load_settings({"MCP_SERVERS": servers, "TOOLS": "all"}))
    assert box.wait_ready(60)
    return box


@pytest.fixture(scope="module")
def http_server():
    from tests import mcp_fixture_server

    with LiveServer(mcp_fixture_server.http_app(), lifespan=True) as live:
        yield live


def check_server_tools(box: Toolbox, name: str) -> None:
    described = {s["name"]: s for s in box.describe()["mcp_servers"]}
    assert described[name]["status"] == "ready", described
    tools = {t.name: t for t in box.tools()}
    # The built-in tools come first; the server's clashing name gets the server's in front.
    assert tools["current_time"].source == "built-in"
    assert {"add", "fail", "wait", f"{name}_current_time"} <= set(tools)
    assert tools["add"].source == f"mcp: {name}" and tools["add"].acts
    assert tools["add"].parameters["properties"].keys() == {"a", "b"}
    assert tools["add"].description == "Add two whole numbers."

    assert box.run(ToolCall("c1", "add", {"a": 2, "b": 3}), ALLOWED).result == "5"
    clash = box.run(ToolCall("c2", f"{name}_current_time", {}), ALLOWED)
    assert clash.result == "fixture time"
    failed = box.run(ToolCall("c3", "fail", {}), ALLOWED)
    assert failed.status == "failed" and "broken on purpose" in failed.error
    # MCP tools are untrusted: they act, so they need the user's consent.
    refused = box.run(ToolCall("c4", "add", {"a": 1, "b": 1}), ToolContext(allow_actions=False))
    assert refused.status == "refused"
    # Cancel stops waiting for a slow call at once.
    token = CancelToken()
    threading.Timer(0.3, token.cancel).start()
    t0 = time.perf_counter()
    record = box.run(
        ToolCall("c5", "wait", {"seconds": 10}), ToolContext(allow_actions=True, cancel=token)
    )
    assert record.status == "cancelled" and time.perf_counter() - t0 < 3


def test_tools_from_a_stdio_server() -> None:
    """Guards the stdio transport: the listed command is started, its tools join the built-in
    ones, calls, errors, consent and cancel all work."""
    box = toolbox(f"fixture={sys.executable} {SERVER}")
    try:
        check_server_tools(box, "fixture")
    finally:
        box.close()


def test_tools_from_an_http_server(http_server: LiveServer) -> None:
    """Guards the streamable-HTTP transport, against the same server on a live port."""
    box = toolbox(f"web={http_server.url}/mcp")
    try:
        check_server_tools(box, "web")
    finally:
        box.close()


def test_a_server_that_cannot_be_reached_is_reported_and_the_rest_works() -> None:
    box = toolbox(f"gone=http://127.0.0.1:{free_port()}/mcp; broken=/nonexistent/mcp-server")
    try:
        servers = {s["name"]: s for s in box.describe()["mcp_servers"]}
        assert servers["gone"]["status"] == "failed" and servers["gone"]["error"]
        assert servers["broken"]["status"] == "failed" and servers["broken"]["error"]
        assert [t.source for t in box.tools()] == ["built-in"] * 6
        record = box.run(ToolCall("c1", "calculate", {"expression": "2+2"}), ToolContext())
        assert record.status == "done"
    finally:
        box.close()
