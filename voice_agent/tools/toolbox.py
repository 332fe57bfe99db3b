"""The tools a conversation may use, and running one call safely.

`Toolbox.from_settings` gathers them: the built-in ones TOOLS names, every
function registered with `@tool` (in the modules TOOLS_MODULES imports, or by
any code before the agent starts) and the tools of the MCP servers MCP_SERVERS
lists. `Toolbox.start(call, context)` runs one call on a worker thread and
returns a `ToolRun`; whatever happens (a malformed call, an unknown tool, a tool
that acts without the user's consent, an exception, a time-out, a cancel) ends
as a `ToolRecord` whose result tells the model what went wrong. Nothing raises.

Adding a tool is one line, the decorator:

    from voice_agent.tools import tool

    @tool
    def weather(city: str) -> str:
        '''Today's weather in a city.

        Args:
            city: the city, e.g. "Paris".
        '''
        ...

(`@tool(acts=True)` for one that changes anything beyond its answer.)
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, overload

from voice_agent.core.cancel import CancelToken
from voice_agent.core.config import BUILTIN_TOOLS, Settings
from voice_agent.llm.base import ToolCall
from voice_agent.tools import calculator, clock, timers, units
from voice_agent.tools.base import Tool, ToolContext, ToolError, ToolRecord, ToolStatus
from voice_agent.tools.mcp_client import McpLoop, McpServer
from voice_agent.tools.schema import tool_from_function

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
_POLL_S = 0.05

# Functions registered with `@tool`, in registration order (name -> Tool).
REGISTERED: dict[str, Tool] = {}
# Serialises a run's end: the worker finishing and a time-out or stop may race.
_FINISH = threading.Lock()


@overload
def tool(fn: Callable[..., Any], /) -> Callable[..., Any]: ...


@overload
def tool(
    *, name: str | None = None, acts: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...


def tool(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None, acts: bool = False
) -> Any:
    """Register a typed, documented function as a tool (see the module docstring).

    Args:
        fn: the function; its hints are the parameters, its docstring the description.
        name: the tool's name (default the function's).
        acts: it does more than read or compute, so it runs only when the user allows
            tools that act (TOOLS_ALLOW_ACTIONS or the Settings panel).

    Returns the function unchanged, so it can still be called directly.
    """

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        source = f"user ({getattr(function, '__module__', '?')})"
        made = tool_from_function(function, name=name, source=source, acts=acts)
        REGISTERED[made.name] = made
        return function

    return register(fn) if fn is not None else register


def builtin_tools() -> list[Tool]:
    """Every built-in tool (clock, calculator, unit conversion, timers)."""
    made = [
        tool_from_function(clock.current_time, source="built-in"),
        tool_from_function(calculator.calculate, source="built-in"),
        tool_from_function(units.convert_units, source="built-in"),
        tool_from_function(timers.set_timer, source="built-in", acts=True),
        tool_from_function(timers.list_timers, source="built-in"),
        tool_from_function(timers.cancel_timer, source="built-in", acts=True),
    ]
    assert tuple(t.name for t in made) == BUILTIN_TOOLS  # the settings list the same names
    return made


def import_tool_module(ref: str) -> None:
    """Import a TOOLS_MODULES entry: a module name (`my_tools`) or a file (`./my_tools.py`)."""
    if ref.endswith(".py") or "/" in ref:
        path = Path(ref).expanduser().resolve()
        spec = importlib.util.spec_from_file_location(f"voice_agent_user_tools.{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        importlib.import_module(ref)


class ToolRun:
    """One call running on a worker thread; `record` is final once `wait` returns True."""

    def __init__(self, record: ToolRecord, timeout_s: float) -> None:
        self.record = record
        self.started = False  # False: refused before it ran (the record says why)
        self.cancel = CancelToken()  # the tool's own: set on a time-out or a turn's cancel
        self.done = threading.Event()
        self._deadline = time.monotonic() + timeout_s
        self._timeout_s = timeout_s
        self._t0 = time.perf_counter()

    def wait(self, timeout: float = 0.0) -> bool:
        """Wait up to `timeout` seconds; True once the call has ended (or timed out)."""
        if self.done.wait(timeout):
            return True
        if time.monotonic() >= self._deadline:
            self._end_early(
                f"{self.record.name} did not finish in {self._timeout_s:g} s.", "failed"
            )
            return True
        return False

    def stop(self) -> None:
        """The turn was cancelled: stop the tool and stop waiting for it."""
        self._end_early(f"{self.record.name} was stopped by the user.", "cancelled")

    def _end_early(self, why: str, status: ToolStatus) -> None:
        self.cancel.cancel(status)
        with _FINISH:
            if self.done.is_set():
                return
            self.record.fail(why, status)
            self.record.seconds = time.perf_counter() - self._t0
            self.done.set()

    def _finish(self, output: Any = None, error: str | None = None) -> None:
        with _FINISH:
            if self.done.is_set():  # timed out or stopped meanwhile: that stands
                return
            if error is None:
                self.record.finish(output)
            else:
                self.record.fail(error)
            self.record.seconds = time.perf_counter() - self._t0
            self.done.set()


class Toolbox:
    """The tools on offer, by name, and where each came from.

    Args:
        tools: built-in and user tools, in the order the model sees them.
        mcp_servers: MCP connections whose tools join the others once connected.
        timeout_s: the longest a call may run (TOOL_TIMEOUT_S).
    """

    def __init__(
        self,
        tools: Iterable[Tool] = (),
        mcp_servers: Iterable[McpServer] = (),
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        loop: McpLoop | None = None,
        notes: Iterable[str] = (),
    ) -> None:
        self._tools: dict[str, Tool] = {}
        for item in tools:
            if item.name in self._tools:
                log.warning(
                    "tool %s is defined twice; the later one (%s) is used", item.name, item.source
                )
            self._tools[item.name] = item
        self.mcp_servers = list(mcp_servers)
        self.timeout_s = timeout_s
        self.notes = list(notes)  # problems found while gathering the tools, for Diagnostics
        self._loop = loop

    @classmethod
    def from_settings(cls, settings: Settings) -> Toolbox:
        """Built-in tools per TOOLS, TOOLS_MODULES' `@tool` functions, MCP_SERVERS' tools."""
        notes: list[str] = []
        for ref in settings.tools_modules:
            try:
                import_tool_module(ref)
            except Exception as exc:  # a broken user module must not stop the app
                log.exception("TOOLS_MODULES: importing %s failed", ref)
                notes.append(f"TOOLS_MODULES: importing {ref} failed: {type(exc).__name__}: {exc}")
        chosen = [t for t in builtin_tools() if t.name in settings.tools]
        tools = [*chosen, *REGISTERED.values()]
        loop = McpLoop() if settings.mcp_servers else None
        servers: list[McpServer] = []
        if loop is not None:
            taken = {t.name for t in tools}
            servers = [McpServer(s, loop, taken) for s in settings.mcp_servers]
            for server in servers:
                server.start()
        box = cls(tools, servers, timeout_s=settings.tool_timeout_s, loop=loop, notes=notes)
        if servers:
            atexit.register(box.close)
        return box

    # --- what is on offer ---------------------------------------------------------------------

    def tools(self) -> list[Tool]:
        """Every tool available now: built-in and user tools, then connected MCP servers'."""
        out = list(self._tools.values())
        for server in self.mcp_servers:
            server.retry_if_due()
            if server.status == "ready":
                out.extend(server.tools)
        return out

    def get(self, name: str) -> Tool | None:
        return next((t for t in self.tools() if t.name == name), None)

    def specs(self) -> list[dict[str, Any]]:
        return [t.spec() for t in self.tools()]

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until every MCP server has connected or failed; True if all are settled."""
        deadline = time.monotonic() + timeout_s
        return all(s.ready.wait(max(0.0, deadline - time.monotonic())) for s in self.mcp_servers)

    def describe(self) -> dict[str, Any]:
        """For the Diagnostics tab and /health: each tool and where it came from."""
        return {
            "tools": [t.describe() for t in self.tools()],
            "mcp_servers": [s.describe() for s in self.mcp_servers],
            "timeout_s": self.timeout_s,
            "notes": list(self.notes),
        }

    def close(self) -> None:
        for server in self.mcp_servers:
            server.close()
        if self._loop is not None:
            self._loop.stop()
            self._loop = None

    # --- running a call -----------------------------------------------------------------------

    def start(self, call: ToolCall, context: ToolContext) -> ToolRun:
        """Start `call`; the returned run ends with a record whatever happens."""
        found = self.get(call.name) if not call.error else None
        record = ToolRecord(call.id, call.name, dict(call.arguments), found.source if found else "")
        run = ToolRun(record, self.timeout_s)
        problem = self._refusal(call, found, context)
        if problem is not None:
            refused = found is not None and not call.error
            record.fail(problem, "refused" if refused else "failed")
            run.done.set()
            return run
        assert found is not None
        own = ToolContext(
            session_id=context.session_id,
            cancel=run.cancel,
            allow_actions=context.allow_actions,
            timers=context.timers,
            time_zone=context.time_zone,
        )
        worker = threading.Thread(
            target=self._work, args=(found, call, own, run), name=f"tool-{call.name}", daemon=True
        )
        run.started = True
        worker.start()
        return run

    def run(self, call: ToolCall, context: ToolContext) -> ToolRecord:
        """Run `call` to its end (or its time-out, or the context's cancel)."""
        running = self.start(call, context)
        while not running.wait(_POLL_S):
            if context.cancel.cancelled:
                running.stop()
        return running.record

    def _refusal(self, call: ToolCall, found: Tool | None, context: ToolContext) -> str | None:
        if call.error:
            return (
                f"your tool call could not be read: {call.error}. Write it as "
                '{"name": <function-name>, "arguments": {...}}.'
            )
        if found is None:
            names = ", ".join(t.name for t in self.tools()) or "none"
            return f"there is no tool {call.name!r}; the tools are: {names}."
        if found.acts and not context.allow_actions:
            return (
                f"{call.name} acts beyond reading the clock or computing, and the user's "
                "settings do not allow such tools; tell the user they can allow them in "
                "the Settings panel."
            )
        return None

    @staticmethod
    def _work(found: Tool, call: ToolCall, context: ToolContext, run: ToolRun) -> None:
        try:
            output = found.run(dict(call.arguments), context)
        except ToolError as exc:
            run._finish(error=str(exc))
        except Exception as exc:  # a tool's bug is reported to the model, not the turn
            log.exception("tool %s failed", call.name)
            run._finish(error=f"{call.name} failed: {type(exc).__name__}: {exc}")
        else:
            run._finish(output)
