"""Who may use the app: one credentials rule for every door (page, Gradio API, MCP, REST).

The rule: when a credential is configured (`MODEL_SERVER_API_KEY`, `GRADIO_AUTH`),
every request needs one, on loopback too; off loopback one must be configured,
or the process refuses to start (a Hugging Face Space excepted: a public Space
is public by its owner's choice). `/health` stays open for load balancers; it
holds no secret (keys are masked).

A request proves itself with `Authorization: Bearer <MODEL_SERVER_API_KEY>`
(API clients: `openai`, `gradio_client(headers=...)`, our client) or with HTTP
Basic credentials (a `GRADIO_AUTH` login, or any user name with the key as the
password). A browser asked for a page gets a Basic challenge, so it shows its
own login prompt and then sends the credentials with every request the page
makes (fetch, server-sent events, uploads, audio streams) — which is what makes
the rule hold for every Gradio route, including the ones Gradio itself leaves
without a login check. The check is done in pure ASGI, before any routing.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers

from voice_agent.core.config import Settings, is_loopback
from voice_agent.server.admission import send_json_error

log = logging.getLogger(__name__)

# Readable without a credential: read-only and free of secrets.
OPEN_PATHS = ("/health",)
REALM = "Voice Agent"


@dataclass(frozen=True)
class AccessRule:
    """The credentials the process accepts; none configured means open."""

    api_key: str | None = None
    logins: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessRule:
        return cls(api_key=settings.api_key, logins=settings.gradio_auth)

    @property
    def required(self) -> bool:
        return bool(self.api_key or self.logins)

    def allows(self, authorization: str) -> bool:
        """Whether an `Authorization` header value carries an accepted credential."""
        if not self.required:
            return True
        scheme, _, value = authorization.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer":
            return bool(self.api_key) and _same(value, self.api_key or "")
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            user, sep, password = decoded.partition(":")
            if not sep:
                return False
            # Every comparison runs, so timing does not tell which part was wrong.
            ok = bool(self.api_key) and _same(password, self.api_key or "")
            for known_user, known_password in self.logins:
                ok |= _same(user, known_user) & _same(password, known_password)
            return ok
        return False

    def describe(self) -> str:
        """What a client must send, for the start-up banner and 401 answers."""
        ways = []
        if self.api_key:
            ways.append("`Authorization: Bearer <MODEL_SERVER_API_KEY>` (or the key as a password)")
        if self.logins:
            ways.append("a GRADIO_AUTH login")
        return " or ".join(ways) if ways else "nothing"


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def exposure_problem(host: str, *, share: bool, rule: AccessRule, space: bool) -> str | None:
    """Why serving on `host` is refused (one line), or None when it is allowed."""
    if rule.required or space or (is_loopback(host) and not share):
        return None
    where = "a public share link" if share else f"{host} (reachable beyond this machine)"
    return (
        f"refusing to serve on {where} without a credential: set MODEL_SERVER_API_KEY "
        "or GRADIO_AUTH=user:password, or bind to 127.0.0.1"
    )


def exposure_banner(host: str, *, share: bool, rule: AccessRule, space: bool) -> str:
    """One line saying what is open to whom."""
    if rule.required:
        return f"every door (page, Gradio API, REST) needs {rule.describe()}; /health is open"
    if space and not (is_loopback(host) and not share):
        return (
            "no credential set: the page, the Gradio API and the REST API are open to anyone "
            "who can reach this Space (set MODEL_SERVER_API_KEY to close them)"
        )
    return "no credential set: open to programs on this machine only (loopback)"


class AccessMiddleware:
    """Refuse every request without an accepted credential (pure ASGI, before routing).

    Args:
        app: the ASGI app to guard (the whole app: UI, Gradio API and REST).
        rule: the accepted credentials; an open rule lets everything through.
        open_paths: paths served without a credential.
    """

    def __init__(
        self, app: Any, rule: AccessRule, open_paths: tuple[str, ...] = OPEN_PATHS
    ) -> None:
        self.app = app
        self.rule = rule
        self.open_paths = open_paths

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket") or not self.rule.required:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope.get("path", "") in self.open_paths and scope["type"] == "http":
            await self.app(scope, receive, send)
            return
        if self.rule.allows(headers.get("authorization", "")):
            await self.app(scope, receive, send)
            return
        log.warning(
            "%s %s -> 401 (no accepted credential)", scope.get("method", "WS"), scope["path"]
        )
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        # A browser navigating to a page gets a Basic challenge, so it shows a login prompt;
        # API clients get the Bearer challenge they expect.
        wants_page = "text/html" in headers.get("accept", "")
        challenge = f'Basic realm="{REALM}", charset="UTF-8"' if wants_page else "Bearer"
        await send_json_error(
            send,
            401,
            f"missing or invalid credentials: send {self.rule.describe()}",
            "invalid_api_key",
            headers=[(b"www-authenticate", challenge.encode())],
        )
