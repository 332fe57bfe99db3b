"""Tools from MCP servers (MCP_SERVERS), through the official `mcp` client.

Each listed server is one `McpServer`: a stdio command (started as a child
process, with the `mcp` package's minimal environment, so none of this process's
secrets reach it) or a streamable-HTTP URL. Connections live on one background
event loop (`McpLoop`); each server's session is opened, initialised and its tools
listed there, and stays open until `close`. A server that cannot be reached is
recorded as failed, with the reason, and tried again at most every `RETRY_S`; the
app works on without its tools.

What an MCP server says is untrusted: its tools' descriptions reach the model's
prompt and their results the model's context. So every MCP tool counts as one
that acts (it runs only when the user allows tools that act), descriptions are
cut to `MAX_DESCRIPTION_CHARS`, and results to `base.MAX_RESULT_CHARS`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Literal, TypeVar

from voice_agent.core.config import McpServerSetting
from voice_agent.tools.base import Tool, ToolContext, ToolError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 20.0
RETRY_S = 60.0
MAX_DESCRIPTION_CHARS = 500
_POLL_S = 0.05
T = TypeVar("T")
Status = Literal["connecting", "ready", "failed", "closed"]


class McpLoop:
    """One asyncio event loop on a daemon thread, shared by every MCP connection."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="mcp-client", daemon=True
        )
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


def _reason(exc: BaseException) -> str:
    """The innermost error of an exception group, as one line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _tool_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "tool"


class McpServer:
    """One MCP server: its connection, its status and its tools (named uniquely in `taken`).

    Args:
        setting: the server as MCP_SERVERS lists it.
        loop: the background loop the connection runs on.
        taken: tool names already used (built-in ones first); clashing names get the
            server's name in front.
    """

    def __init__(self, setting: McpServerSetting, loop: McpLoop, taken: set[str]) -> None:
        self.setting = setting
        self.name = setting.name
        self._loop = loop
        self._taken = taken
        self.status: Status = "connecting"
        self.error: str | None = None
        self.tools: list[Tool] = []
        self.connected_at: float | None = None
        self._tried_at = 0.0
        self._session: Any = None
        self._stop: asyncio.Event | None = None
        self.ready = threading.Event()
        self._task: concurrent.futures.Future[None] | None = None

    # --- connection -------------------------------------------------------------------------

    def start(self) -> None:
        self._taken.difference_update(t.name for t in self.tools)
        self.tools = []
        self._tried_at = time.monotonic()
        self.status, self.error = "connecting", None
        self.ready.clear()
        self._task = self._loop.submit(self._serve())

    def retry_if_due(self) -> None:
        if self.status == "failed" and time.monotonic() - self._tried_at >= RETRY_S:
            log.info("MCP server %s: trying again", self.name)
            self.start()

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[tuple[Any, Any]]:
        if self.setting.url:
            from mcp.client import streamable_http

            # `streamable_http_client` since mcp 1.24; the older name is deprecated there.
            client = getattr(streamable_http, "streamable_http_client", None)
            client = client or streamable_http.streamablehttp_client
            async with client(self.setting.url) as (read, write, _):
                yield read, write
        else:
            from mcp.client.stdio import StdioServerParameters, stdio_client

            command, *args = self.setting.command
            params = StdioServerParameters(command=command, args=args)
            async with stdio_client(params) as (read, write):
                yield read, write

    async def _serve(self) -> None:
        from mcp import ClientSession

        self._stop = asyncio.Event()
        try:
            async with self._transport() as (read, write):
                async with ClientSession(read, write) as session:
                    await asyncio.wait_for(session.initialize(), CONNECT_TIMEOUT_S)
                    listed = await asyncio.wait_for(self._list(session), CONNECT_TIMEOUT_S)
                    self._session, self.tools = session, listed
                    self.status, self.connected_at = "ready", time.time()
                    log.info("MCP server %s: %d tools", self.name, len(listed))
                    self.ready.set()
                    await self._stop.wait()
        except (Exception, asyncio.CancelledError) as exc:
            if self.status != "closed":
                self.status, self.error = "failed", _reason(exc)
                log.warning(
                    "MCP server %s (%s) failed: %s", self.name, self.setting.target, self.error
                )
        finally:
            self._session = None
            if self.status == "ready":
                self.status = "closed"
            self.ready.set()

    async def _list(self, session: Any) -> list[Tool]:
        tools: list[Tool] = []
        cursor = None
        while True:
            result = await session.list_tools(cursor) if cursor else await session.list_tools()
            for listed in result.tools:
                tools.append(self._tool(listed))
            cursor = getattr(result, "nextCursor", None)
            if not cursor:
                return tools

    def _tool(self, listed: Any) -> Tool:
        name = _tool_name(listed.name)
        if name in self._taken:
            name = _tool_name(f"{self.name}_{listed.name}")
        self._taken.add(name)
        schema = dict(listed.inputSchema or {})
        if schema.get("type") != "object":
            schema = {"type": "object", "properties": {}}
        remote_name = listed.name

        def run(arguments: dict[str, Any], context: ToolContext) -> Any:
            return self.call(remote_name, arguments, context)

        description = (listed.description or "").strip()[:MAX_DESCRIPTION_CHARS]
        return Tool(
            name=name,
            description=description or remote_name,
            parameters=schema,
            run=run,
            source=f"mcp: {self.name}",
            acts=True,  # nothing an MCP server says about its tools can be verified
        )

    def close(self) -> None:
        self.status = "closed"
        stop = self._stop
        if stop is not None:
            self._loop.loop.call_soon_threadsafe(stop.set)
        if self._task is not None:
            with contextlib.suppress(Exception):
                self._task.result(timeout=5)

    # --- calls ------------------------------------------------------------------------------

    def call(self, name: str, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Call a tool of this server; stops waiting (and cancels the request) on cancel.

        Raises:
            ToolError: the server is not connected, the call was cancelled, or the tool
                reported an error (its text is the message).
        """
        session = self._session
        if session is None or self.status != "ready":
            raise ToolError(
                f"the MCP server {self.name} is not connected ({self.error or self.status})."
            )
        future = self._loop.submit(session.call_tool(name, arguments))
        while True:
            try:
                result = future.result(timeout=_POLL_S)
                break
            except concurrent.futures.TimeoutError:
                if context.cancel.cancelled:
                    future.cancel()
                    raise ToolError(f"{name} was stopped.") from None
        texts = []
        for block in result.content:
            kind = getattr(block, "type", "")
            texts.append(block.text if kind == "text" else f"[{kind} content not shown]")
        text = "\n".join(texts).strip()
        if result.isError:
            raise ToolError(f"{name} reported an error: {text or 'no details'}")
        if not text and result.structuredContent is not None:
            return result.structuredContent
        return text

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.setting.target,
            "transport": "http" if self.setting.url else "stdio",
            "status": self.status,
            "error": self.error,
            "tools": [t.name for t in self.tools],
        }
