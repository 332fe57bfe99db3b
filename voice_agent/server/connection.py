"""The HTTP connection layer under our ASGI apps: uvicorn's h11 protocol, guarded.

uvicorn's h11 protocol waits for a request's headers for as long as the client
likes (its keep-alive timer only runs between requests), so a client that sends
half a request line, or a byte every few seconds, holds a connection for good;
a few thousand of them hold the server. `GuardedH11Protocol` gives every
request's headers `MODEL_SERVER_HEADER_TIMEOUT_S` from the connection's first
byte (or from the first byte of the next request on a kept-alive connection),
not reset by further bytes; a connection still without complete headers then
gets a 408 and is closed. Requests h11 cannot parse get our JSON error shape
instead of uvicorn's plain-text "Invalid HTTP request received.". The body's
time limit is the REST app's (`BodyLimitMiddleware`), which knows the routes.

`uvicorn_config` is the one place the project's servers (`serve`, `app.py`, the
test `LiveServer`) get their uvicorn settings from.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
from typing import Any

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol

from voice_agent.core.config import Settings
from voice_agent.server.admission import error_body

log = logging.getLogger(__name__)

# Longest part of h11's description of a broken request that is sent back.
PROTOCOL_ERROR_CHARS = 120


class _RecordingConnection(h11.Connection):
    """h11's server connection, keeping the last protocol error so the answer can name it."""

    last_error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.last_error = exc
            raise


def raw_json_response(status: int, reason: str, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 response carrying our JSON error, closing the connection."""
    body = json.dumps(error_body(message, code, status)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a time limit on request headers and JSON protocol errors.

    `header_timeout_s` is set per server by `uvicorn_config` (a subclass per setting).
    """

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        size = self.config.h11_max_incomplete_event_size
        self.conn = _RecordingConnection(
            h11.SERVER, DEFAULT_MAX_INCOMPLETE_EVENT_SIZE if size is None else size
        )
        self._header_timer: asyncio.TimerHandle | None = None

    # -- the header deadline --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # a connection that says nothing is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self._watch_headers()

    def _watch_headers(self) -> None:
        """Run the header timer exactly while a request's headers are incomplete."""
        conn = self.conn
        between_requests = conn.their_state is h11.IDLE and conn.our_state is h11.IDLE
        if not between_requests:  # headers are in (or the connection is done with)
            self._cancel_header_timer()
            return
        if conn.trailing_data[0]:  # part of the next request has arrived
            self._arm_header_timer()
        elif self.cycle is not None:
            # Idle between requests: uvicorn's keep-alive timer closes it in its time.
            self._cancel_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        conn = self.conn
        if self.transport.is_closing():
            return
        if not (conn.their_state is h11.IDLE and conn.our_state is h11.IDLE):
            return
        if conn.trailing_data[0]:
            log.info("request headers incomplete after %g s: closing", self.header_timeout_s)
            self.transport.write(
                raw_json_response(
                    408,
                    "Request Timeout",
                    f"the request headers did not arrive within {self.header_timeout_s:g} s "
                    "(MODEL_SERVER_HEADER_TIMEOUT_S); send the whole request at once",
                    "request_timeout",
                )
            )
        self.transport.close()

    # -- requests h11 cannot parse --------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        error = self.conn.last_error
        # h11 hints 501 for a transfer coding it does not do; the client sent it: a 4xx.
        status = getattr(error, "error_status_hint", 400) or 400
        status = status if 400 <= status < 500 else 400
        detail = str(error or "").strip()[:PROTOCOL_ERROR_CHARS] or "it could not be parsed"
        body = json.dumps(
            error_body(f"malformed HTTP request: {detail}", "bad_http_request", status)
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        try:
            reason = http.HTTPStatus(status).phrase.encode()
            for event in (
                h11.Response(status_code=status, headers=headers, reason=reason),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # a response had already started: just close
            pass
        self.transport.close()


def uvicorn_config(app: Any, settings: Settings, **kwargs: Any) -> Any:
    """uvicorn's `Config` for `app` with our guarded HTTP protocol and the settings' limits.

    `kwargs` go to `uvicorn.Config` (host, port, log settings, ...).
    """
    import uvicorn

    protocol = type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout_s": settings.server_header_timeout_s},
    )
    return uvicorn.Config(app, http=protocol, **kwargs)
