"""A small real MCP server for the tests (the official `mcp` package's FastMCP).

Run as a script it serves over stdio; `http_app()` is the same server over
streamable HTTP, for a `LiveServer`.
"""

from __future__ import annotations

import asyncio

from mcp.server.fastmcp import FastMCP

server = FastMCP("fixture")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


@server.tool()
def fail() -> str:
    """Always fails."""
    raise ValueError("broken on purpose")


@server.tool()
async def wait(seconds: float) -> str:
    """Wait, then say so."""
    await asyncio.sleep(seconds)
    return "waited"


@server.tool(name="current_time")
def fixture_time() -> str:
    """A tool whose name clashes with a built-in one."""
    return "fixture time"


def http_app():
    """The server over streamable HTTP (at /mcp), an ASGI app with its own lifespan."""
    return server.streamable_http_app()


if __name__ == "__main__":
    server.run()
