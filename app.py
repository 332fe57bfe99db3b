"""voice-agent: the Gradio app and the REST API in one process.

The entry point for `./launch.sh`, `python -m voice_agent app` and a Hugging
Face Space. It starts loading the models in the background (the UI shows the
progress), builds the UI, and serves it at `/` beside the REST routes of
`voice_agent.server.create_app` (`/health`, `/generate`, `/v1/...`) on the
same port and the same loaded models.

    python app.py [--host HOST] [--port PORT] [--share]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

log = logging.getLogger("voice_agent.app")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Any]
# REST routes still served when the app listens beyond loopback without an API key:
# read-only and free of secrets (the key is masked in the snapshot).
OPEN_REST_PATHS = ("/health",)


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
    from voice_agent.spaces_compat import in_space

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
        rest_open: serve every REST route; when False only `OPEN_REST_PATHS`.
    """

    def __init__(self, rest: Any, ui: Any, *, rest_open: bool = True) -> None:
        self.rest = rest
        self.ui = ui
        self.rest_open = rest_open

    def is_rest(self, scope: Scope) -> bool:
        from starlette.routing import Match

        path = scope.get("path", "")
        if not self.rest_open:
            return path in OPEN_REST_PATHS
        probe = dict(scope)
        probe.setdefault("method", "GET")
        return any(route.matches(probe)[0] != Match.NONE for route in self.rest.router.routes)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and self.is_rest(scope):
            await self.rest(scope, receive, send)
        else:
            await self.ui(scope, receive, send)


def build_app(models: Any, settings: Any, blocks: Any, *, rest_open: bool = True) -> PathDispatcher:
    """The ASGI app serving `blocks` at / and the REST API on the same `models`."""
    import gradio as gr
    from fastapi import FastAPI

    from voice_agent import ui_style
    from voice_agent.server import create_app

    ui_app = gr.mount_gradio_app(
        FastAPI(docs_url=None, redoc_url=None, openapi_url=None),
        blocks,
        path="/",
        theme=ui_style.theme(),
        css=ui_style.CSS,
        max_file_size=settings.max_upload_bytes,
        footer_links=["api", "settings"],
        run_history=False,
        show_error=True,
    )
    return PathDispatcher(create_app(models, settings), ui_app, rest_open=rest_open)


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
    from voice_agent.config import SettingsError, apply_process_defaults, get_settings, is_loopback

    configure_logging()
    apply_process_defaults()
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from voice_agent.agent import get_agent
    from voice_agent.models import get_models
    from voice_agent.spaces_compat import in_space
    from voice_agent.ui import build_ui

    host = resolve_host(args.host, settings, os.environ)
    port = args.port if args.port is not None else settings.gradio_port
    share = args.share
    if share and in_space():
        log.warning("--share is ignored inside a Hugging Face Space (the Space is the link)")
        share = False
    exposed = share or not is_loopback(host)
    rest_open = not exposed or bool(settings.api_key)
    if not rest_open:
        log.warning(
            "the app is reachable beyond this machine (%s) and MODEL_SERVER_API_KEY is unset: "
            "the REST API serves only %s; set the key to open the rest of it",
            "share link" if share else host,
            ", ".join(OPEN_REST_PATHS),
        )

    # Loading runs on a thread so the page opens at once and shows the progress.
    models = get_models(settings, background=True)
    agent = get_agent()
    blocks = build_ui(lambda: agent, models)
    app = build_app(models, settings, blocks, rest_open=rest_open)

    config = uvicorn.Config(app, host=host, port=port, log_config=None, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    print(f"* Voice Agent on http://{shown}:{port} (REST API at /health, /v1)", flush=True)
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
