"""Admission control for the REST API: one request per engine, a bounded queue, deadlines.

Each engine (LLM, STT, TTS) sits behind an `EngineGate`
(`voice_agent.pipeline.admission`, the same gates the conversation's turns pass
through, held by the `LoadedModels`): one request runs at a time, at most `queue_size` more wait, and anything beyond that is refused at
once with `BusyError` (503 + Retry-After) instead of piling up. The work itself
runs in a worker thread (`pump`) that hands results to the event loop through
a small bounded buffer, so a slow reader slows the engine instead of filling
memory, and a reader that goes away (client disconnect, timeout) cancels it
through a `CancelToken`.

Bodies are bounded by `BodyLimitMiddleware` before any route reads them, in size
and in the time they may take to arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from voice_agent.core.cancel import CancelToken
from voice_agent.core.errors import BusyError, InputError, InputTooLargeError, VoiceAgentError
from voice_agent.pipeline.admission import EngineGate

log = logging.getLogger(__name__)

# Items a worker may run ahead of a slow reader (tokens or audio chunks).
PUMP_BUFFER = 8
# How often a blocked worker re-checks its cancel token (seconds).
POLL_S = 0.05


class RequestTimeoutError(VoiceAgentError):
    """The request ran past the server's per-request time limit (HTTP 504)."""


class BodyTimeoutError(InputError):
    """The request's body did not arrive within MODEL_SERVER_BODY_TIMEOUT_S (HTTP 408)."""

    status_code = 408
    code = "request_timeout"


# Longest error message sent; callers quote inputs cut short, this is the backstop.
MAX_ERROR_MESSAGE_CHARS = 1_000


class _End:
    """Marks the end of a worker's output."""


_END = _End()


async def pump(
    gate: EngineGate,
    produce: Callable[[CancelToken], Iterator[Any]],
    *,
    token: CancelToken,
    timeout_s: float,
) -> AsyncIterator[Any]:
    """Run `produce(token)` on a worker thread under `gate` and yield what it yields.

    Admission happens when iteration starts, before anything waits, so a full
    queue raises `BusyError` at once. A deadline passed while still waiting for
    the engine raises `BusyError` (retry later); one passed while running
    cancels the token and raises `RequestTimeoutError`. When the consumer stops early
    (closed, cancelled, disconnected) the token is cancelled and the engine is
    released as soon as the producer checks it.
    """
    gate.admit()
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[Any] = asyncio.Queue()
    room = threading.Semaphore(PUMP_BUFFER)
    running = threading.Event()  # the worker holds the engine
    deadline = time.monotonic() + timeout_s

    def deliver(item: Any) -> bool:
        while not room.acquire(timeout=POLL_S):
            if token.cancelled:
                return False
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            token.cancel("server stopped")
            return False
        return True

    def finish() -> None:
        # Unconditional last word, so a consumer never waits out the deadline for a worker
        # that stopped early (cancelled while queued or while its buffer was full).
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(items.put_nowait, _END)

    def work() -> None:
        try:
            # In line with the turns (first come, first served); `position(token)` finds it.
            while not gate.take(token, POLL_S):
                if token.cancelled:
                    return  # nobody is waiting any more
                if time.monotonic() > deadline:
                    # Say "busy" here too: when this check beats the consumer's own timer,
                    # a bare end would read as an empty result (504, or an empty 200 stream).
                    deliver(
                        BusyError(
                            f"the {gate.name} engine stayed busy for {timeout_s:g} s; retry later",
                            retry_after_s=gate.retry_after_s(),
                        )
                    )
                    return
            running.set()
            started = time.monotonic()
            try:
                if token.cancelled:
                    return
                items_in = produce(token)
                try:
                    for item in items_in:
                        if not deliver(item) or token.cancelled:
                            return
                finally:
                    # Close generators now, so the engine's own cleanup runs under the lock.
                    close = getattr(items_in, "close", None)
                    if callable(close):
                        close()
                deliver(_END)
            except BaseException as exc:  # handed to the request, which maps it to a status
                deliver(exc)
            finally:
                gate.record(time.monotonic() - started)
                gate.lock.release()
        finally:
            gate.step_out(token)
            gate.leave()
            finish()

    threading.Thread(target=work, name=f"engine-{gate.name}", daemon=True).start()
    try:
        while True:
            remaining = deadline - time.monotonic()
            try:
                item = await asyncio.wait_for(items.get(), timeout=max(remaining, 0.001))
            except TimeoutError:
                token.cancel("timeout")
                if not running.is_set():
                    raise BusyError(
                        f"the {gate.name} engine stayed busy for {timeout_s:g} s; retry later",
                        retry_after_s=gate.retry_after_s(),
                    ) from None
                raise RequestTimeoutError(
                    f"the request took longer than the server's limit of {timeout_s:g} s"
                ) from None
            room.release()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # Normal end, error, consumer closed or cancelled: the worker must stop.
        token.cancel("request ended")


async def run_gated(
    gate: EngineGate,
    fn: Callable[[CancelToken], Any],
    *,
    token: CancelToken,
    timeout_s: float,
) -> Any:
    """Run `fn(token)` on a worker thread under `gate`; see `pump` for the rules."""

    def once(tok: CancelToken) -> Iterator[Any]:
        yield fn(tok)

    stream = pump(gate, once, token=token, timeout_s=timeout_s)
    try:
        async for result in stream:
            return result
        raise RequestTimeoutError("the request was cancelled (client gone or server stopping)")
    finally:
        await stream.aclose()


class BodyLimitMiddleware:
    """Bound request bodies in size (413) and in the time they take to arrive (408); pure ASGI.

    A declared Content-Length over the limit is refused before reading; a
    chunked body is counted as it arrives and refused when it crosses the limit.
    A body that is not complete `body_timeout_s` after its headers (a client that
    declares more than it sends, or trickles it) is answered 408 and the
    connection closed, so it cannot hold a connection and a worker for good.

    Args:
        app: the wrapped ASGI app.
        limit_for: maps a request path to (limit in bytes, what the limit is called).
        skip: requests it returns True for pass unchecked (apps with their own limits).
        body_timeout_s: time allowed for the whole body (None: no limit).
    """

    def __init__(
        self,
        app: Any,
        limit_for: Callable[[str], tuple[int, str]],
        skip: Callable[[dict], bool] | None = None,
        body_timeout_s: float | None = None,
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.skip = skip
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or (self.skip is not None and self.skip(scope)):
            await self.app(scope, receive, send)
            return
        limit, name = self.limit_for(route_path(scope))
        message = f"request body is larger than the {name} of {limit / 1e6:g} MB"
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await send_json_error(send, 413, message, InputTooLargeError.code)
            return
        seen = 0
        failure: InputError | None = None
        replaced = False
        complete = False
        loop = asyncio.get_running_loop()
        timeout_s = self.body_timeout_s
        deadline = None if timeout_s is None else loop.time() + timeout_s

        async def limited_receive() -> dict:
            nonlocal seen, failure, complete
            if complete or deadline is None:
                received = await receive()
            else:
                try:
                    received = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
                except TimeoutError:
                    failure = BodyTimeoutError(
                        f"the request body did not arrive within {timeout_s:g} s "
                        f"(MODEL_SERVER_BODY_TIMEOUT_S): {seen:,} bytes came in time; "
                        "send the whole body at once"
                    )
                    raise failure from None
            if received["type"] == "http.request":
                seen += len(received.get("body", b""))
                if seen > limit:
                    failure = InputTooLargeError(message)
                    raise failure
                complete = not received.get("more_body", False)
            else:  # the client went away: nothing more will come
                complete = True
            return received

        async def send_failure() -> None:
            nonlocal replaced
            assert failure is not None
            replaced = True
            # A body cut short leaves the connection unusable for another request.
            close = [(b"connection", b"close")] if failure.status_code == 408 else None
            await send_json_error(send, failure.status_code, str(failure), failure.code, close)

        async def guarded_send(sent: dict) -> None:
            if failure is not None:
                # Whatever the route made of the aborted read, the answer is 413 / 408.
                if not replaced and sent["type"] == "http.response.start":
                    await send_failure()
                return
            await send(sent)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except InputError as exc:
            if exc is not failure:
                raise
            if not replaced:
                await send_failure()


def route_path(scope: dict) -> str:
    """The request path relative to where the app is mounted."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def _content_length(scope: dict) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


@functools.cache
def _server_path_pattern() -> re.Pattern[str]:
    """Absolute paths under this machine's own folders: temp, home, cwd, the install."""
    roots = {
        tempfile.gettempdir(),
        str(Path.home()),
        os.getcwd(),
        sys.prefix,
        sys.base_prefix,
        str(Path(__file__).resolve().parents[2]),
        os.environ.get("HF_HOME", ""),
    }
    roots = {r.rstrip("/") for r in roots if r and r.startswith("/") and r.rstrip("/")}
    alternatives = "|".join(re.escape(r) for r in sorted(roots, key=len, reverse=True))
    stop = r"\s'\",;:)\]"  # what ends a path in a message
    return re.compile(rf"(?:{alternatives})(?:/[^{stop}]*|(?![^{stop}]))")


def without_server_paths(message: str) -> str:
    """`message` with absolute paths on this server cut to their last part ("…/model.bin").

    Error messages from deep inside (a model that failed to load, a decoder) may name
    files; where they live on the server is nobody else's business.
    """
    return _server_path_pattern().sub(lambda m: "…/" + Path(m.group()).name, message)


def error_body(message: str, code: str, status: int) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "code", "param"}}.

    The message is cut to `MAX_ERROR_MESSAGE_CHARS` and holds no server path.
    """
    if status == 401:
        kind = "authentication_error"
    elif status < 500:
        kind = "invalid_request_error"
    elif status == 503:
        kind = "server_busy" if code == "busy" else "server_error"
    else:
        kind = "server_error"
    message = without_server_paths(message)
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[:MAX_ERROR_MESSAGE_CHARS] + "… (message cut)"
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}


async def send_json_error(
    send: Callable,
    status: int,
    message: str,
    code: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a complete JSON error response from ASGI middleware."""
    body = json.dumps(error_body(message, code, status)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
