"""Safe to expose: file inputs only from the upload cache, one credentials rule for every door.

Everything runs against the real app (`app.build_app`: Gradio mounted beside the
REST API) in a real uvicorn server on loopback, over fake engines for speed.
"""

from __future__ import annotations

import base64
import json
import sys
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.fakes import fake_models
from voice_agent.core.config import get_settings, load_settings
from voice_agent.pipeline.agent import Agent
from voice_agent.server.access import AccessRule, exposure_banner, exposure_problem
from voice_agent.testing.server import LiveServer
from voice_agent.ui.blocks import build_ui
from voice_agent.ui.uploads import upload_root

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key-0123456789"
SECRET_FILE_MARK = "voice-agent-secret-0451"


@pytest.fixture
def app_module(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    import app as app_module

    return app_module


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """A file on the server that no client uploaded (stands in for /etc/passwd)."""
    # A fresh name each run: Gradio's cache outlives the test process.
    path = tmp_path / f"passwd-{uuid.uuid4().hex}"
    path.write_text(f"root:x:0:0:{SECRET_FILE_MARK}:/root:/bin/bash\n")
    return path


def serve_app(app_module, monkeypatch, **env: str) -> LiveServer:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    models = fake_models()
    agent = Agent(models)
    demo = build_ui(lambda: agent, models, pause_default=0.6, stream_audio=False)
    return LiveServer(app_module.build_app(models, get_settings(), demo), lifespan=True)


@pytest.fixture
def open_app(app_module, monkeypatch) -> Iterator[LiveServer]:
    with serve_app(app_module, monkeypatch) as live:
        yield live


@pytest.fixture
def keyed_app(app_module, monkeypatch) -> Iterator[LiveServer]:
    with serve_app(
        app_module, monkeypatch, MODEL_SERVER_API_KEY=KEY, GRADIO_AUTH="ada:lovelace"
    ) as live:
        yield live


def api_info(live: LiveServer, headers: dict[str, str] | None = None) -> dict:
    r = httpx.get(live.url + "/gradio_api/info", headers=headers or {}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["named_endpoints"]


def is_file_param(param: dict) -> bool:
    kind = str(param.get("component", "")).lower()
    return "FileData" in json.dumps(param.get("type", {})) or kind in ("audio", "file")


def every_endpoint(live: LiveServer) -> dict[str, list[dict]]:
    """Every named event with its parameters, the ones kept out of the API included: they are
    still callable by name (`/gradio_api/call/NAME`), so each must refuse a server path too."""
    config = httpx.get(live.url + "/config", timeout=30).json()
    components = {c["id"]: c for c in config["components"]}
    endpoints = {}
    for dep in config["dependencies"]:
        if not dep.get("api_name") or dep.get("js") and not dep.get("backend_fn", True):
            continue
        params = []
        for block_id in dep["inputs"]:
            component = components[block_id]
            if component["type"] == "state":
                continue  # the call API leaves State inputs out
            params.append(
                {
                    "component": component["type"],
                    "parameter_default": component["props"].get("value"),
                }
            )
        endpoints[f"/{dep['api_name']}"] = params
    return endpoints


def hostile_call(live: LiveServer, name: str, params: list[dict], path: Path) -> str:
    """Call endpoint `name` with `path` in every file-typed parameter; the whole SSE answer."""
    data = []
    for param in params:
        if is_file_param(param):
            data.append({"path": str(path), "meta": {"_type": "gradio.FileData"}})
        else:
            data.append(param.get("parameter_default", param.get("example_input")))
    with httpx.Client(base_url=live.url, timeout=60) as http:
        r = http.post(f"/gradio_api/call{name}", json={"data": data})
        if r.status_code != 200:
            return r.text
        event_id = r.json()["event_id"]
        return http.get(f"/gradio_api/call{name}/{event_id}").text


def copies_in_cache(name: str) -> list[Path]:
    root = upload_root()
    return [p for p in root.rglob(name) if p.is_file()] if root.is_dir() else []


def test_every_file_input_refuses_a_server_path(open_app: LiveServer, secret_file: Path) -> None:
    """Regression: `POST /gradio_api/call/send_audio {"data":[{"path":"/etc/passwd",...}]}`
    made Gradio copy the file into its cache, the error note named the copy, and
    `GET /gradio_api/file=<copy>` served it: any file on the server was readable.
    Gradio's own check was off because `mount_gradio_app` never sets `has_launched`."""
    endpoints = every_endpoint(open_app)
    with_files = {n: params for n, params in endpoints.items() if any(map(is_file_param, params))}
    assert {"/send_audio", "/send_audio_1", "/transcribe"} <= set(with_files), sorted(endpoints)
    for name, params in with_files.items():
        answer = hostile_call(open_app, name, params, secret_file)
        assert SECRET_FILE_MARK not in answer, name
        assert str(secret_file.parent) not in answer, name
        assert str(upload_root()) not in answer, name
    # Nothing of the file reached Gradio's cache, so nothing can be fetched from it.
    assert copies_in_cache(secret_file.name) == []
    r = httpx.get(f"{open_app.url}/gradio_api/file={secret_file}", timeout=30)
    assert SECRET_FILE_MARK not in r.text and r.status_code >= 400


def test_gradio_client_cannot_hand_over_a_server_path(
    open_app: LiveServer, secret_file: Path, tmp_path: Path, monkeypatch
) -> None:
    """The same attack through the official `gradio_client`, next to a real upload that works.

    gradio_client uploads a local file itself; a remote attacker's client sends the path
    as it is, which is what `_upload_file` is made to do here."""
    from gradio_client import Client, handle_file
    from gradio_client.client import Endpoint

    client = Client(open_app.url, verbose=False, download_files=False)
    hostile = {"path": str(secret_file), "meta": {"_type": "gradio.FileData"}}
    real_upload = Endpoint._upload_file
    monkeypatch.setattr(Endpoint, "_upload_file", lambda self, f, data_index: f)
    try:
        result = client.predict(hostile, "", 0.0, 16, "", api_name="/send_audio")
        answer = json.dumps(result, default=str)
    except Exception as exc:  # gradio_client raises AppError when the event fails
        answer = str(exc)
    assert SECRET_FILE_MARK not in answer
    assert copies_in_cache(secret_file.name) == []

    monkeypatch.setattr(Endpoint, "_upload_file", real_upload)
    # A file the client really uploads still makes a turn (the check is not a blanket refusal).
    clip = tmp_path / "question.wav"
    t = np.arange(16_000) / 16_000
    pcm = (0.2 * np.sin(2 * np.pi * 140 * t) * 32767).astype("<i2")
    with wave.open(str(clip), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16_000), w.writeframes(pcm.tobytes())
    job = client.submit(handle_file(str(clip)), "", 0.0, 16, "", api_name="/send_audio")
    job.result(timeout=60)
    chats = [out[0] for out in job.outputs() if isinstance(out[0], list)]
    assert chats, job.outputs()
    assert "not uploaded" not in json.dumps(chats[-1])
    assert len(chats[-1]) >= 2  # the user's turn and the assistant's answer


def test_handler_refuses_paths_outside_the_upload_cache(secret_file: Path, tmp_path: Path) -> None:
    """The handlers' own check, independent of Gradio's: outside paths, `..` and symlinks."""
    from voice_agent.ui.uploads import NotUploadedError, uploaded_path

    root = upload_root()
    root.mkdir(parents=True, exist_ok=True)
    with pytest.raises(NotUploadedError):
        uploaded_path(secret_file)
    with pytest.raises(NotUploadedError):
        uploaded_path(root / ".." / secret_file.relative_to("/"))
    link_dir = root / "test-exposure-link"
    link_dir.mkdir(exist_ok=True)
    link = link_dir / "passwd"
    link.unlink(missing_ok=True)
    link.symlink_to(secret_file)
    try:
        with pytest.raises(NotUploadedError):
            uploaded_path(link)
        inside = link_dir / "ok.wav"
        inside.write_bytes(b"RIFF")
        assert uploaded_path(inside) == str(inside.resolve())
    finally:
        for p in link_dir.iterdir():
            p.unlink()
        link_dir.rmdir()


# --- one key for every door ------------------------------------------------------------------

# Every kind of door: the page, Gradio's config and API (including the routes Gradio itself
# serves without a login check: heartbeat, stream, reset), uploads, files, and REST.
DOORS = [
    ("GET", "/"),
    ("GET", "/config"),
    ("GET", "/gradio_api/info"),
    ("POST", "/gradio_api/call/send_text"),
    ("POST", "/gradio_api/queue/join"),
    ("POST", "/gradio_api/upload"),
    ("GET", "/gradio_api/file=/etc/hostname"),
    ("GET", "/gradio_api/heartbeat/abc"),
    ("POST", "/gradio_api/stream/abc"),
    ("POST", "/gradio_api/reset"),
    ("GET", "/gradio_api/mcp/schema"),
    ("GET", "/voice/audio/abc"),
    ("POST", "/voice/mic/abc?rate=16000"),
    ("POST", "/gradio_api/mcp/"),
    ("GET", "/v1/models"),
    ("POST", "/generate"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/docs"),
    ("GET", "/no-such-page"),
]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def status_of(url: str, method: str, authorization: str | None) -> tuple[int, str]:
    """Status and the start of the body; streams (heartbeat, SSE) are not read to the end."""
    headers = {"Authorization": authorization} if authorization else {}
    with httpx.stream(method, url, headers=headers, json={}, timeout=30) as r:
        body = b""
        if r.status_code == 401 or "event-stream" not in r.headers.get("content-type", ""):
            body = r.read()
        return r.status_code, body.decode("utf-8", "replace")


@pytest.mark.parametrize(("method", "path"), DOORS)
def test_every_door_needs_the_credential(keyed_app: LiveServer, method: str, path: str) -> None:
    """Regression: with MODEL_SERVER_API_KEY set, REST answered 401 but the page and the Gradio
    API ran the LLM, Whisper, the TTS and the self-test for anyone."""
    url = keyed_app.url + path
    for header in (None, "Bearer wrong", basic("ada", "wrong"), basic("eve", "lovelace"), "Bearer"):
        status, body = status_of(url, method, header)
        assert status == 401, (path, header, status)
        assert KEY not in body and "lovelace" not in body
    for good in (f"Bearer {KEY}", basic("ada", "lovelace"), basic("anyone", KEY)):
        status, _ = status_of(url, method, good)
        assert status != 401, (path, good)


def test_a_browser_gets_a_login_prompt_and_health_stays_open(keyed_app: LiveServer) -> None:
    page = httpx.get(keyed_app.url + "/", headers={"Accept": "text/html"}, timeout=30)
    assert page.status_code == 401
    assert page.headers["www-authenticate"].startswith("Basic ")
    api = httpx.get(keyed_app.url + "/v1/models", timeout=30)
    assert api.headers["www-authenticate"] == "Bearer"
    health = httpx.get(keyed_app.url + "/health", timeout=30)
    assert health.status_code == 200 and KEY not in health.text and "lovelace" not in health.text
    logged_in = httpx.get(keyed_app.url + "/", auth=("ada", "lovelace"), timeout=30)
    assert logged_in.status_code == 200 and "gradio" in logged_in.text.lower()


def test_gradio_client_and_openai_client_use_the_key(keyed_app: LiveServer) -> None:
    from gradio_client import Client
    from openai import AuthenticationError, OpenAI

    with pytest.raises(Exception):  # noqa: B017  (gradio_client raises httpx or its own errors)
        Client(keyed_app.url, verbose=False)
    client = Client(keyed_app.url, verbose=False, headers={"Authorization": f"Bearer {KEY}"})
    chat, *_ = client.predict("hello", "", 0.0, 16, "", api_name="/send_text")
    assert chat and chat[-1]["role"] == "assistant"

    with pytest.raises(AuthenticationError):
        OpenAI(base_url=keyed_app.url + "/v1", api_key="wrong").models.list()
    models = OpenAI(base_url=keyed_app.url + "/v1", api_key=KEY).models.list()
    assert models.data


def test_exposure_rule() -> None:
    """Off loopback a credential is required (a Space excepted); the banner says what is open."""
    open_rule = AccessRule()
    keyed = AccessRule(api_key=KEY)
    logins = AccessRule(logins=(("ada", "lovelace"),))
    assert exposure_problem("127.0.0.1", share=False, rule=open_rule, space=False) is None
    assert exposure_problem("::1", share=False, rule=open_rule, space=False) is None
    for host, share in (("0.0.0.0", False), ("192.0.2.7", False), ("127.0.0.1", True)):
        problem = exposure_problem(host, share=share, rule=open_rule, space=False)
        assert problem and "MODEL_SERVER_API_KEY" in problem and "\n" not in problem
        assert exposure_problem(host, share=share, rule=keyed, space=False) is None
        assert exposure_problem(host, share=share, rule=logins, space=False) is None
    assert exposure_problem("0.0.0.0", share=False, rule=open_rule, space=True) is None
    assert "Space" in exposure_banner("0.0.0.0", share=False, rule=open_rule, space=True)
    assert "loopback" in exposure_banner("127.0.0.1", share=False, rule=open_rule, space=False)
    assert "/health is open" in exposure_banner("0.0.0.0", share=False, rule=keyed, space=False)


def test_gradio_auth_setting_is_validated_and_masked() -> None:
    settings = load_settings({"GRADIO_AUTH": "ada:love:lace, bob:pw"})
    assert settings.gradio_auth == (("ada", "love:lace"), ("bob", "pw"))
    shown = json.dumps(settings.public_dict())
    assert "love:lace" not in shown and "ada:***" in shown
    from voice_agent.core.config import SettingsError

    for bad in ("nopassword", "ada:", ":pw"):
        with pytest.raises(SettingsError, match="GRADIO_AUTH"):
            load_settings({"GRADIO_AUTH": bad})


@pytest.mark.parametrize("argv", [["--host", "0.0.0.0"], ["--share"]])
def test_app_refuses_to_start_exposed_without_a_credential(argv: list[str], tmp_path: Path) -> None:
    """`python app.py --host 0.0.0.0` with no credential exits 2 with a one-line reason,
    before any model loads."""
    import os
    import subprocess

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MODEL_SERVER_API_KEY", "GRADIO_AUTH", "SPACE_ID")
    }
    env.update({"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    proc = subprocess.run(
        [sys.executable, "app.py", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "MODEL_SERVER_API_KEY" in errors[0]


# --- hostile text and API conversations through the Gradio API -------------------------------


def gradio_call(http: httpx.Client, name: str, raw_json: bytes) -> str:
    r = http.post(
        f"/gradio_api/call/{name}", content=raw_json, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 200, r.text
    return http.get(f"/gradio_api/call/{name}/{r.json()['event_id']}").text


def test_lone_surrogates_do_not_poison_the_tab(open_app: LiveServer) -> None:
    """Regression: `"hi \\ud800 there"` (a JSON escape) through the Gradio queue API failed that
    event and every later one with "surrogates not allowed" until Clear lost the conversation."""
    from gradio_client import Client

    client = Client(open_app.url, verbose=False)
    client.predict(api_name="/on_load")
    hostile = (
        '{"data": ["hi \\ud800 there", "be \\udfff brief", 0.0, 16, ""], "session_hash": "%s"}'
    )
    with httpx.Client(base_url=open_app.url, timeout=60) as http:
        answer = gradio_call(http, "send_text", (hostile % client.session_hash).encode())
    assert "event: error" not in answer and "surrogates" not in answer
    chat, *_ = client.predict("and now?", "", 0.0, 16, "", api_name="/send_text")
    users = [json.dumps(m["content"], ensure_ascii=False) for m in chat if m["role"] == "user"]
    assert len(users) == 2 and "\ufffd" in users[0] and "and now?" in users[1]


def test_an_api_client_holds_a_conversation(open_app: LiveServer) -> None:
    """Regression: a `gradio_client` user got a new conversation on every `send_text`. Calling
    `/on_load` once per Client starts the session; later turns see the earlier ones."""
    from gradio_client import Client

    client = Client(open_app.url, verbose=False)
    client.predict(api_name="/on_load")
    client.predict("My name is Ada.", "", 0.0, 16, "", api_name="/send_text")
    chat, *_ = client.predict("What is my name?", "", 0.0, 16, "", api_name="/send_text")
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant"]
    other = Client(open_app.url, verbose=False)  # another client, another conversation
    other.predict(api_name="/on_load")
    chat, *_ = other.predict("Hello?", "", 0.0, 16, "", api_name="/send_text")
    assert len(chat) == 2
