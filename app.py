"""voice-agent: the Gradio app and the REST API in one process.

The entry point for `./launch.sh`, `python -m voice_agent app` and a Hugging
Face Space. It starts loading the models in the background (the UI shows the
progress), builds the UI, and serves it at `/` beside the REST routes of
`voice_agent.server.app.create_app` (`/health`, `/generate`, `/v1/...`) on the
same port and the same loaded models.

    python app.py [--host HOST] [--port PORT] [--share]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger("voice_agent.app")
# How often Gradio's queue looks for work while it has none (Gradio: every 1 ms), and for
# progress to send (every 10 ms; this app shows no progress bars).
QUEUE_IDLE_POLL_S = 0.02
QUEUE_PROGRESS_POLL_S = 0.1

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="app.py", description="Voice Agent: the Gradio app and the REST API in one process."
    )
    parser.add_argument(
        "--host",
        help="bind address (default GRADIO_SERVER_NAME, 127.0.0.1; 0.0.0.0 inside a Space)",
    )
    parser.add_argument("--port", type=int, help="port (default GRADIO_SERVER_PORT, 7860)")
    parser.add_argument(
        "--share",
        action="store_true",
        help="also open a temporary public gradio.live link (off by default)",
    )
    return parser.parse_args(argv)


def resolve_host(arg: str | None, settings: Any, env: MutableMapping[str, str]) -> str:
    """--host, else GRADIO_SERVER_NAME, else 0.0.0.0 inside a Space, else the 127.0.0.1 default."""
    from voice_agent.core.spaces import in_space

    if arg:
        return arg
    if env.get("GRADIO_SERVER_NAME", "").strip():
        return settings.gradio_host
    return "0.0.0.0" if in_space(env) else settings.gradio_host


class PathDispatcher:
    """One ASGI app: the REST routes go to the API, everything else to the Gradio UI.

    The REST app keeps its own middleware (API key, body limits) and error
    handlers, none of which then touch Gradio's uploads or queue. Lifespan
    events go to the UI app, which starts Gradio's queue; the REST app has none.

    Args:
        rest: the FastAPI app from `create_app`.
        ui: the FastAPI app the Gradio Blocks are mounted on.
    """

    def __init__(self, rest: Any, ui: Any) -> None:
        self.rest = rest
        self.ui = ui

    def is_rest(self, scope: Scope) -> bool:
        from starlette.routing import Match

        probe = dict(scope)
        probe.setdefault("method", "GET")
        return any(route.matches(probe)[0] != Match.NONE for route in self.rest.router.routes)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and self.is_rest(scope):
            await self.rest(scope, receive, send)
        elif scope["type"] == "http":
            await self.ui(scope, receive, _routing_errors_in_our_shape(scope, send))
        else:
            await self.ui(scope, receive, send)


# The bodies of the UI app's own "no such route" answers (Starlette's defaults).
_DEFAULT_ROUTING_ERRORS = {404: b'{"detail":"Not Found"}', 405: b'{"detail":"Method Not Allowed"}'}


def _routing_errors_in_our_shape(scope: Scope, send: Any) -> Any:
    """`send` for the UI app, with its bare 404 / 405 answered in the REST API's error shape.

    Only the router's default answers are replaced (same status, our JSON body); Gradio's
    own errors, with their own details, pass through untouched.
    """
    from voice_agent.server.admission import error_body
    from voice_agent.server.plumbing import shown

    held: dict[str, Any] | None = None

    async def wrapped(message: dict[str, Any]) -> None:
        nonlocal held
        if (
            message["type"] == "http.response.start"
            and message["status"] in _DEFAULT_ROUTING_ERRORS
        ):
            held = message
            return
        if held is None:
            await send(message)
            return
        start, held = held, None
        status = start["status"]
        body = message.get("body", b"")
        if message.get("more_body") or body != _DEFAULT_ROUTING_ERRORS[status]:
            await send(start)
            await send(message)
            return
        path = shown(scope.get("path", ""))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() == b"allow"]
        if status == 404:
            text, code = f"no route {path}; see GET /docs for the API", "not_found"
        else:
            allowed = b", ".join(v for _, v in headers).decode("latin-1") or "none"
            text = f"{scope.get('method')} is not allowed on {path}; allowed: {allowed}"
            code = "method_not_allowed"
        payload = json.dumps(error_body(text, code, status)).encode()
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    return wrapped


def build_app(models: Any, settings: Any, blocks: Any) -> ASGIApp:
    """The ASGI app serving `blocks` at / and the REST API on the same `models`.

    Every door answers to one credentials rule (`voice_agent.server.access`),
    checked before the request is routed to the UI or the API.
    """
    import gradio as gr
    from fastapi import FastAPI

    from voice_agent.server.access import AccessMiddleware, AccessRule
    from voice_agent.server.app import create_app
    from voice_agent.ui import microphone, playback
    from voice_agent.ui import style as ui_style
    from voice_agent.ui.blocks import PAGE_HEAD

    host = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    playback.add_route(host)  # the page's audio stream; before the mount at / takes the rest
    handlers = getattr(blocks, "voice_agent_handlers", None)
    if handlers is not None:  # the page's hands-free microphone posts here
        microphone.add_route(host, handlers)
    ui_app = gr.mount_gradio_app(
        host,
        blocks,
        path="/",
        theme=ui_style.theme(),
        css=ui_style.CSS,
        head=PAGE_HEAD,
        max_file_size=settings.max_upload_bytes,
        footer_links=["api", "settings"],
        run_history=False,
        # Our handlers report problems themselves (chat notes, gr.Warning); anything else
        # that fails, Gradio's own refusals included, must not echo paths or internals.
        show_error=False,
        # The app as an MCP server (/gradio_api/mcp/): its tools are the public API's
        # endpoints (transcribe, speak, chat), behind the same credentials as every door.
        mcp_server=settings.mcp_server and _mcp_available(),
    )
    if getattr(blocks, "mcp_error", None):
        log.warning("%s", blocks.mcp_error)
    # Gradio checks that a file-typed input names a file in its upload cache only once
    # `blocks.has_launched` is set, which `Blocks.launch()` does and `mount_gradio_app`
    # does not (gradio/processing_utils.py `_check_allowed` returns early). Without it a
    # client can hand the app any path on the server (`{"path": "/etc/passwd"}`), which
    # Gradio then copies into its cache and serves back. The handlers check it again
    # (`voice_agent.ui.uploads`).
    blocks.has_launched = True
    quiet_queue(blocks)
    dispatcher = PathDispatcher(create_app(models, settings), ui_app)
    return AccessMiddleware(dispatcher, AccessRule.from_settings(settings))


def quiet_queue(blocks: Any) -> None:
    """Gradio's queue looks for a new event every 1 ms while it has none, and for progress
    to send every 10 ms: 1,100 wake-ups a second of the event loop for as long as the app
    runs, 0.08 of a core on a 2-core machine, taken from the models (docs/agent.md). Every
    20 ms is still far below what anyone notices before a click's event starts, and the
    spoken turns start on the server without it (`ui.microphone`). Gradio's own
    attributes: should a release rename them, this says so and changes nothing."""
    queue = getattr(blocks, "_queue", None)
    if queue is None:
        return
    for name, seconds in (
        ("sleep_when_free", QUEUE_IDLE_POLL_S),
        ("progress_update_sleep_when_free", QUEUE_PROGRESS_POLL_S),
    ):
        if not isinstance(getattr(queue, name, None), int | float):
            log.warning("gradio's queue has no %s: it polls as often as it does", name)
            continue
        setattr(queue, name, max(getattr(queue, name), seconds))


def _mcp_available() -> bool:
    """Whether the `mcp` package Gradio's MCP server needs is installed (else: said, and off)."""
    import importlib.util

    if importlib.util.find_spec("mcp") is None:
        log.warning("MCP_SERVER=1 but the `mcp` package is missing (pip install mcp): MCP is off")
        return False
    return True


def _open_share_link(host: str, port: int) -> None:
    """Best effort: a temporary public link through Gradio's tunnel service."""
    import secrets

    from gradio import networking

    local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    try:
        url = networking.setup_tunnel(local, port, secrets.token_urlsafe(32), None, None)
    except Exception as exc:  # no network, blocked tunnel: the local app keeps running
        log.error("could not open a share link: %s", exc)
        return
    log.info("public share link (temporary): %s", url)
    print(f"* Public URL: {url}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Start the app; returns the exit code (2 for bad settings or arguments)."""
    args = parse_args(argv)
    from voice_agent.__main__ import configure_logging
    from voice_agent.core.config import (
        SettingsError,
        apply_process_defaults,
        get_settings,
    )

    configure_logging()
    apply_process_defaults()
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from voice_agent.core.spaces import in_space
    from voice_agent.pipeline.agent import get_agent
    from voice_agent.pipeline.models import get_models
    from voice_agent.server.access import AccessRule, exposure_banner, exposure_problem
    from voice_agent.server.connection import uvicorn_config
    from voice_agent.ui.blocks import build_ui

    host = resolve_host(args.host, settings, os.environ)
    port = args.port if args.port is not None else settings.gradio_port
    share = args.share
    if share and in_space():
        log.warning("--share is ignored inside a Hugging Face Space (the Space is the link)")
        share = False
    rule = AccessRule.from_settings(settings)
    space = in_space()
    problem = exposure_problem(host, share=share, rule=rule, space=space)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    # Loading runs on a thread so the page opens at once and shows the progress.
    models = get_models(settings, background=True)
    agent = get_agent()

    # Gather the tools now (MCP servers connect in the background), not at the first turn,
    # then prefill the prompt every conversation starts with (system prompt and tools).
    def prepare() -> None:
        agent.toolbox  # noqa: B018 (built on first use)
        agent.prime()

    threading.Thread(target=prepare, name="prime", daemon=True).start()
    blocks = build_ui(lambda: agent, models)
    app = build_app(models, settings, blocks)

    # The guarded HTTP protocol: request headers get MODEL_SERVER_HEADER_TIMEOUT_S.
    config = uvicorn_config(
        app, settings, host=host, port=port, log_config=None, timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    print(f"* Voice Agent on http://{shown}:{port} (REST API at /health, /v1)", flush=True)
    if settings.mcp_server:
        print(f"* MCP server: http://{shown}:{port}/gradio_api/mcp/", flush=True)
    print(f"* Access: {exposure_banner(host, share=share, rule=rule, space=space)}", flush=True)
    if share:

        def share_when_up() -> None:
            while not server.started and not server.should_exit:
                threading.Event().wait(0.2)
            if server.started:
                _open_share_link(host, port)

        threading.Thread(target=share_when_up, name="share-link", daemon=True).start()
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
