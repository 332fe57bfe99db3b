"""Admission control for the REST API: one request per engine, a bounded queue, deadlines.

Each engine (LLM, STT, TTS) sits behind an `EngineGate`: one request runs at
a time, at most `queue_size` more wait, and anything beyond that is refused at
once with `BusyError` (503 + Retry-After) instead of piling up. The work itself
runs in a worker thread (`pump`) that hands results to the event loop through
a small bounded buffer, so a slow reader slows the engine instead of filling
memory, and a reader that goes away (client disconnect, timeout) cancels it
through a `CancelToken`.

Bodies are bounded by `BodyLimitMiddleware` before any route reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .cancel import CancelToken
from .errors import BusyError, InputTooLargeError, VoiceAgentError

log = logging.getLogger(__name__)

# Items a worker may run ahead of a slow reader (tokens or audio chunks).
PUMP_BUFFER = 8
# How often a blocked worker re-checks its cancel token (seconds).
POLL_S = 0.05


class RequestTimeoutError(VoiceAgentError):
    """The request ran past the server's per-request time limit (HTTP 504)."""


class EngineGate:
    """One request at a time on one engine, at most `queue_size` waiting.

    Args:
        name: the component ("llm", "stt", "tts"), used in messages.
        queue_size: requests allowed to wait behind the running one.
    """

    def __init__(self, name: str, queue_size: int) -> None:
        self.name = name
        self.queue_size = queue_size
        # A plain Lock (not RLock): the worker thread that acquires it releases it.
        self.lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._admitted = 0  # running + waiting
        self._mean_s = 1.0  # moving average of a request's engine time, for Retry-After

    @property
    def admitted(self) -> int:
        return self._admitted

    def admit(self) -> None:
        """Take a place in the queue, or raise `BusyError` at once when it is full."""
        with self._count_lock:
            if self._admitted > self.queue_size:
                raise BusyError(
                    f"the {self.name} engine is busy ({self._admitted - 1} requests waiting, "
                    f"queue size {self.queue_size}); retry later",
                    retry_after_s=self.retry_after_s(),
                )
            self._admitted += 1

    def leave(self) -> None:
        with self._count_lock:
            self._admitted -= 1

    def record(self, seconds: float) -> None:
        self._mean_s = 0.8 * self._mean_s + 0.2 * seconds

    def retry_after_s(self) -> int:
        """A whole number of seconds after which a place is likely free."""
        return max(1, math.ceil(self._mean_s * max(1, self._admitted)))


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
            while not gate.lock.acquire(timeout=POLL_S):
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
    """Refuse request bodies over a per-path limit with a 413 JSON error (pure ASGI).

    A declared Content-Length over the limit is refused before reading; a
    chunked body is counted as it arrives and refused when it crosses the limit.

    Args:
        app: the wrapped ASGI app.
        limit_for: maps a request path to (limit in bytes, what the limit is called).
        skip: requests it returns True for pass unchecked (apps with their own limits).
    """

    def __init__(
        self,
        app: Any,
        limit_for: Callable[[str], tuple[int, str]],
        skip: Callable[[dict], bool] | None = None,
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.skip = skip

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
        exceeded = False
        replaced = False

        async def limited_receive() -> dict:
            nonlocal seen, exceeded
            received = await receive()
            if received["type"] == "http.request":
                seen += len(received.get("body", b""))
                if seen > limit:
                    exceeded = True
                    raise InputTooLargeError(message)
            return received

        async def guarded_send(sent: dict) -> None:
            nonlocal replaced
            if exceeded:
                # Whatever the route made of the aborted read, the answer is 413.
                if not replaced and sent["type"] == "http.response.start":
                    replaced = True
                    await send_json_error(send, 413, message, InputTooLargeError.code)
                return
            await send(sent)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except InputTooLargeError:
            if not replaced:
                await send_json_error(send, 413, message, InputTooLargeError.code)


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


def error_body(message: str, code: str, status: int) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "code", "param"}}."""
    if status == 401:
        kind = "authentication_error"
    elif status < 500:
        kind = "invalid_request_error"
    elif status == 503:
        kind = "server_busy" if code == "busy" else "server_error"
    else:
        kind = "server_error"
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
