"""Real servers on free loopback ports, for tests and the `server` benchmark.

`LiveServer` runs an ASGI app in uvicorn on a background thread of this process;
`ServeProcess` runs `python -m voice_agent serve` in its own process (as in
production). `tiny_model_env` is the environment that points either at the tiny
checkpoints on the CPU, offline.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tiny_model_env(tiny: Path, home: Path) -> dict[str, str]:
    """Environment variables that load the tiny LLM, Whisper and VITS from `tiny` on the CPU,
    offline, with the Hugging Face cache and local models folder under `home`."""
    return {
        "MODEL_SERVER_MODEL_NAME": str(tiny / "llm"),
        "STT_MODEL_NAME": str(tiny / "stt"),
        "TTS_BACKEND": "vits",
        "TTS_MODEL_NAME": str(tiny / "vits"),
        "LLM_DEVICE": "cpu",
        "WHISPER_DEVICE": "cpu",
        "TTS_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(home / "hf"),
        "LOCAL_MODELS_DIR": str(home / "models"),
    }


def _app_settings(app: Any) -> Any:
    """The Settings of a REST app or of the app.py dispatcher around one; else the defaults."""
    from voice_agent.core.config import load_settings

    # Through wrapping middleware (`.app`) and the app.py dispatcher (`.rest`).
    candidates: list[Any] = [app]
    for candidate in candidates:
        state = getattr(getattr(candidate, "state", None), "voice_agent", None)
        if state is not None:
            return state.settings
        if len(candidates) < 16:
            candidates += [getattr(candidate, n) for n in ("app", "rest") if hasattr(candidate, n)]
    return load_settings({})


class LiveServer:
    """A real uvicorn server for `app` on a free 127.0.0.1 port, in a background thread."""

    def __init__(
        self, app: Any, *, lifespan: bool = False, settings: Any = None, port: int = 0
    ) -> None:
        """`lifespan=True` runs the app's startup events (Gradio's queue needs them).
        `port` 0 picks a free one.

        The connection limits (header time) are `settings`', else those of the REST app
        (`create_app`'s, or the one inside `app.py`'s dispatcher), else the defaults; the
        server is configured as `serve` and `app.py` configure theirs (`uvicorn_config`).
        """
        import uvicorn

        from voice_agent.server.connection import uvicorn_config

        config = uvicorn_config(
            app,
            settings or _app_settings(app),
            host=HOST,
            port=port,
            log_level="warning",
            lifespan="on" if lifespan else "off",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)
        self.url = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{HOST}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class ServeProcess:
    """`python -m voice_agent serve` on a free 127.0.0.1 port, stopped on exit.

    The port and host are passed through `MODEL_SERVER_PORT` / `MODEL_SERVER_HOST`
    on top of this process's environment and `env`. With `capture`, stdout and
    stderr are kept and available as `output` once stopped; otherwise discarded.
    """

    def __init__(self, env: Mapping[str, str], *, capture: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.env = {
            **os.environ,
            **env,
            "MODEL_SERVER_PORT": str(self.port),
            "MODEL_SERVER_HOST": HOST,
        }
        self.capture = capture
        self.output = ""
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServeProcess:
        out = subprocess.PIPE if self.capture else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "voice_agent", "serve"],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT if self.capture else subprocess.DEVNULL,
            text=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None:
            return
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        self.output = out or ""

    def wait_healthy(self, timeout_s: float) -> None:
        """Wait until `/health` answers 200.

        Raises:
            RuntimeError: the process exited, or it was not healthy within `timeout_s`.
        """
        import httpx

        assert self.proc is not None, "enter the ServeProcess first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with code {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=10).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError("serve did not become healthy in time")
