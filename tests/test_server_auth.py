"""API key on and off, `serve` refusing a non-loopback address without a key, and logs that
never hold request bodies or keys."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.server_fakes import API_KEY, FakeModels, settings_with
from voice_agent.cli import serve
from voice_agent.server.app import create_app
from voice_agent.testing.server import LiveServer

PROTECTED = [
    ("POST", "/generate", {"prompt": "hi"}),
    ("POST", "/tts", {"text": "hi"}),
    ("POST", "/stt", None),
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/audio/speech", {"input": "hi"}),
    ("POST", "/v1/audio/transcriptions", None),
    ("GET", "/v1/audio/voices", None),
    ("GET", "/docs", None),
    ("GET", "/no-such-route", None),
]


def test_health_needs_no_key(keyed_server: LiveServer) -> None:
    r = httpx.get(keyed_server.url + "/health", timeout=30)
    assert r.status_code == 200
    assert API_KEY not in r.text  # settings are shown with the key masked
    assert r.json()["settings"]["api_key"] == "***"


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize(
    "header", [None, "Bearer wrong-key", f"Basic {API_KEY}", "Bearer", f"Bearer {API_KEY}x"]
)
def test_every_other_route_needs_the_key(
    keyed_server: LiveServer, method: str, path: str, body: dict | None, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    r = httpx.request(method, keyed_server.url + path, json=body, headers=headers, timeout=60)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert API_KEY not in r.text


def test_the_right_key_is_accepted(keyed_server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=keyed_server.url, headers=headers, timeout=60) as http:
        assert http.post("/generate", json={"prompt": "hi"}).status_code == 200
        assert http.get("/v1/models").status_code == 200
        assert http.post("/tts", json={"text": "hi"}).status_code == 200
        # Lower-case scheme is fine (RFC 7235: the scheme is case-insensitive).
        r = http.get("/v1/models", headers={"Authorization": f"bearer {API_KEY}"})
        assert r.status_code == 200


def test_without_a_key_no_header_is_needed() -> None:
    with LiveServer(create_app(FakeModels())) as server:
        r = httpx.post(server.url + "/generate", json={"prompt": "hi"}, timeout=60)
        assert r.status_code == 200
        r = httpx.post(
            server.url + "/generate",
            json={"prompt": "hi"},
            headers={"Authorization": "Bearer anything"},
            timeout=60,
        )
        assert r.status_code == 200


def test_logs_hold_no_bodies_and_no_keys(
    keyed_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret_text = "my-private-prompt-text"
    caplog.set_level(logging.DEBUG)
    good = {"Authorization": f"Bearer {API_KEY}"}
    httpx.post(keyed_server.url + "/generate", json={"prompt": secret_text}, headers=good)
    httpx.post(
        keyed_server.url + "/generate",
        json={"prompt": secret_text, "temperature": "hot"},
        headers=good,
    )
    httpx.post(keyed_server.url + "/tts", json={"text": secret_text, "voice": "x"}, headers=good)
    httpx.post(
        keyed_server.url + "/generate",
        json={"prompt": secret_text},
        headers={"Authorization": f"Bearer {API_KEY}-wrong"},
    )
    messages = [r for r in caplog.records if r.name.startswith("voice_agent")]
    assert any("401" in r.getMessage() for r in messages)
    assert any("400" in r.getMessage() for r in messages)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert API_KEY not in text
    assert secret_text not in text


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.com"])
def test_serve_refuses_a_public_address_without_a_key(
    host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve.main(["--host", host, "--port", "8123"]) == 2
    err = capsys.readouterr().err
    assert "MODEL_SERVER_API_KEY" in err and host in err


def test_bind_rules() -> None:
    bare = settings_with()
    assert serve.bind_problem("127.0.0.1", bare) is None
    assert serve.bind_problem("localhost", bare) is None
    assert serve.bind_problem("::1", bare) is None
    assert serve.bind_problem("0.0.0.0", settings_with(MODEL_SERVER_API_KEY=API_KEY)) is None
    assert serve.bind_problem("0.0.0.0", settings_with(GRADIO_AUTH="ada:pw")) is None
    assert "refusing" in (serve.bind_problem("0.0.0.0", bare) or "")


def test_serve_refuses_a_public_host_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from voice_agent.core.config import get_settings

    monkeypatch.setenv("MODEL_SERVER_HOST", "0.0.0.0")
    get_settings.cache_clear()
    assert serve.main([]) == 2
    assert "refusing to serve on 0.0.0.0" in capsys.readouterr().err


@pytest.mark.parametrize("mount_at", ["/ui", "/"])
def test_a_mounted_ui_needs_the_key_too_and_keeps_its_upload_limits(mount_at: str) -> None:
    """Regression: a UI mounted inside the API app was left to its own access control, so
    with a key set the Gradio API stayed open. One rule now covers every door; the mounted
    app keeps its own upload limits."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"ui got {len(await request.body())} bytes")

    ui = Starlette(routes=[Route("/{rest:path}", page, methods=["GET", "POST"])])
    app = create_app(FakeModels(settings_with(MODEL_SERVER_API_KEY=API_KEY)))
    app.mount(mount_at, ui)
    prefix = mount_at.rstrip("/")
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.post(prefix + "/upload", content=b"\0" * 10).status_code == 401
        keyed = {"Authorization": f"Bearer {API_KEY}"}
        r = http.post(prefix + "/upload", content=b"\0" * 2_000_000, headers=keyed)
        assert r.status_code == 200 and r.text == "ui got 2000000 bytes"
        assert http.post("/generate", json={"prompt": "hi"}).status_code == 401
        assert http.get("/v1/models").status_code == 401
        assert http.get("/health").status_code == 200
        headers = {"Authorization": f"Bearer {API_KEY}"}
        assert http.get("/v1/models", headers=headers).status_code == 200


def test_serve_names_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve.main(["--port", str(port)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
