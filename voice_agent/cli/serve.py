"""`serve`: the REST API alone (no UI) on MODEL_SERVER_HOST:MODEL_SERVER_PORT.

Models load in the background through the cached loader, so `GET /health`
answers at once (503 with progress until every model is ready).
"""

from __future__ import annotations

import argparse
import socket
import sys

from voice_agent.core.config import Settings, get_settings


def bind_problem(host: str, settings: Settings) -> str | None:
    """Why listening on `host` is refused, or None when it is allowed.

    A non-loopback address without a credential would hand the models to anyone
    who can reach the machine (`voice_agent.server.access` states the rule).
    """
    from voice_agent.server.access import AccessRule, exposure_problem

    return exposure_problem(host, share=False, rule=AccessRule.from_settings(settings), space=False)


def port_problem(host: str, port: int) -> str | None:
    """Why `host:port` cannot be bound (in use, no such address), or None.

    Checked before the models start loading, so a taken port fails in a moment.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot use host {host!r}: {exc}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port"
    return None


def run(settings: Settings, host: str, port: int) -> int:
    """Start loading, then serve until interrupted; returns the exit code."""
    import uvicorn

    from voice_agent.pipeline.models import get_models
    from voice_agent.server.app import create_app
    from voice_agent.server.connection import uvicorn_config

    models = get_models(settings, background=True)
    app = create_app(models, settings)
    from voice_agent.server.access import AccessRule, exposure_banner

    rule = AccessRule.from_settings(settings)
    print(f"voice-agent REST API on http://{host}:{port} (docs at /docs, health at /health)")
    print(f"* Access: {exposure_banner(host, share=False, rule=rule, space=False)}", flush=True)
    config = uvicorn_config(
        app,
        settings,
        host=host,
        port=port,
        log_config=None,  # keep the entry point's logging format
        access_log=True,  # method, path and status only: never bodies or headers
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        return int(exc.code or 1)
    return 0 if server.started else 1


def main(argv: list[str]) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(
        prog="python -m voice_agent serve",
        description="Serve the REST API (seed routes and OpenAI-compatible /v1) without the UI.",
    )
    parser.add_argument(
        "--host", default=settings.server_host, help="bind address (MODEL_SERVER_HOST)"
    )
    parser.add_argument(
        "--port", type=int, default=settings.server_port, help="port (MODEL_SERVER_PORT)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"error: --port {args.port} is not a port number (0 to 65535)", file=sys.stderr)
        return 2
    if settings.remote_models:
        print(
            "error: MODEL_SERVER_REMOTE=1 tells the app to use a separate model server; "
            "`serve` is that server and loads the models itself: unset MODEL_SERVER_REMOTE here.",
            file=sys.stderr,
        )
        return 2
    problem = bind_problem(args.host, settings)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    problem = port_problem(args.host, args.port)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return run(settings, args.host, args.port)
