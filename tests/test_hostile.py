"""Hostile input against every REST route, over a real uvicorn server (issue 12, "safe to
expose"): malformed JSON, wrong types, bools for ints, NaN, invalid Unicode, wrong content
types, corrupt / random / truncated / huge audio and decompression bombs, odd methods and
paths, broken HTTP, clients that leave, and clients that send too slowly.

Every case must get a specific 4xx in OpenAI's error shape with a bounded message, never a
5xx, a traceback or a server path, and the server must stay healthy after it. Most cases
run on the fake engines (tests/server_fakes.py); a handful run on the tiny real ones.
"""

from __future__ import annotations

import io
import json
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.server_fakes import FakeModels, FakeTTS, settings_with, tone_wav, wait_for
from voice_agent.audio.io import encode_audio, encode_wav
from voice_agent.server.app import create_app
from voice_agent.testing.paths import REPO_ROOT
from voice_agent.testing.server import LiveServer

# The module's server: small limits so the "too big / too long" cases stay cheap.
MAX_UPLOAD_MB = 2
MAX_AUDIO_SECONDS = 30
JSON_TYPE = {"content-type": "application/json"}
# Messages that say nothing about what was wrong.
GENERIC = {
    "invalid request",
    "not found",
    "method not allowed",
    "there was an error parsing the body",
    "the request body could not be parsed; send json or multipart/form-data",
    "internal server error (details are in the server log)",
}
SERVER_PATH = re.compile(r"(/tmp/|/work/|/home/|/root/|/usr/|site-packages|\.py\b)")
# Longest error body any case may get back (inputs are echoed clipped, never in full).
MAX_ERROR_BYTES = 2_000


def assert_clean_error(response: httpx.Response, status: int, *words: str) -> dict:
    """A specific 4xx in our error shape: no traceback, no server path, bounded, not generic."""
    text = response.text
    assert response.status_code == status, text[:500]
    assert response.status_code < 500
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert "Traceback" not in text and 'File "' not in text, text[:500]
    assert not SERVER_PATH.search(text), text[:500]
    assert len(response.content) < MAX_ERROR_BYTES, f"{len(response.content)} bytes: {text[:300]}"
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    message = error["message"]
    assert message.strip().lower() not in GENERIC, message
    for word in words:
        assert word.lower() in message.lower(), message
    return error


@pytest.fixture(scope="module")
def fakes() -> FakeModels:
    return FakeModels(
        settings_with(MAX_UPLOAD_MB=str(MAX_UPLOAD_MB), MAX_AUDIO_SECONDS=str(MAX_AUDIO_SECONDS))
    )


@pytest.fixture(scope="module")
def server(fakes: FakeModels) -> Iterator[LiveServer]:
    with LiveServer(create_app(fakes)) as live:
        yield live


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


# --- audio that is not what it claims ---------------------------------------------------------------

RNG = np.random.default_rng(12)
WAV = tone_wav(1.0)
RANDOM_BYTES = b"\x13\x37" + RNG.integers(0, 256, 8_000, dtype=np.uint8).tobytes()
# Random bytes that happen to start like an MP3 frame header (0xFFFB): not an MP3 file.
RANDOM_FRAME_SYNC = b"\xff\xfb\x90\x64" + RNG.integers(0, 256, 8_000, dtype=np.uint8).tobytes()
CORRUPT_WAV = b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\xff" * 16 + b"data\0\0\0\0"
CUT_WAV = WAV[: len(WAV) // 2]
CUT_MP3 = (lambda mp3: mp3[: len(mp3) // 3])(
    encode_audio(16_000, (0.3 * np.sin(np.arange(48_000) / 5)).astype(np.float32), "mp3")
)
HEADER_ONLY_WAV = encode_wav(16_000, np.zeros(0, np.float32))
TOO_LONG_WAV = encode_wav(8_000, np.zeros(8_000 * (MAX_AUDIO_SECONDS + 1), np.float32))
TOO_SHORT_WAV = tone_wav(0.02)


def _nan_wav() -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.full(16_000, np.nan, np.float32), 16_000, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def _multipart(*parts: tuple[bytes, bytes], boundary: bytes = b"hostile") -> bytes:
    body = b""
    for headers, data in parts:
        body += b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + data + b"\r\n"
    return body + b"--" + boundary + b"--\r\n"


MULTIPART = {"content-type": "multipart/form-data; boundary=hostile"}
FILE_PART = (
    b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav'
)


def upload(data: bytes, name: str = "a.wav", kind: str = "audio/wav", **fields: str) -> dict:
    return {"files": {"file": (name, data, kind)}, "data": fields or None}


def raw_json(text: str) -> dict:
    """A JSON body sent as typed: `\\ud800` stays a JSON escape, NaN stays NaN."""
    return {"content": text.encode("utf-8", "surrogatepass"), "headers": JSON_TYPE}


# --- the table: (method, path, request kwargs, status, words in the message) ----------------------

CHAT = "/v1/chat/completions"
SPEECH = "/v1/audio/speech"
TRANSCRIBE = "/v1/audio/transcriptions"
USER_HI = [{"role": "user", "content": "hi"}]
HUGE = "v" * 300_000


def case(method: str, path: str, status: int, words: list[str], id: str, **kwargs: Any) -> Any:
    return pytest.param(method, path, kwargs, status, words, id=id)


HOSTILE = [
    # GET /health, GET /v1/models, GET /v1/audio/voices: wrong methods.
    case("PUT", "/health", 405, ["PUT", "GET"], "health-put"),
    case("DELETE", "/health", 405, ["DELETE", "GET"], "health-delete"),
    case("TRACE", "/health", 405, ["TRACE"], "health-trace"),
    case("POST", "/v1/models", 405, ["POST", "GET"], "models-post"),
    case("DELETE", "/v1/audio/voices", 405, ["DELETE", "GET"], "voices-delete"),
    case("GET", "/generate", 405, ["GET", "POST"], "generate-get"),
    case("PATCH", "/tts", 405, ["PATCH", "POST"], "tts-patch"),
    # Paths that go nowhere, however they are spelled.
    case("GET", "/nope", 404, ["/nope"], "unknown-path"),
    case("GET", "/v1/models/gpt-4", 404, ["no route"], "unknown-model-path"),
    case("GET", "/../../etc/passwd", 404, ["no route"], "path-traversal"),
    case("GET", "/v1/%2e%2e/%2e%2e/etc/passwd", 404, ["no route"], "path-traversal-encoded"),
    case("GET", "/health%00.json", 404, ["no route"], "path-nul"),
    case("GET", "/" + "a" * 20_000, 404, ["no route"], "path-huge"),
    # POST /generate: bodies that are not the JSON object asked for.
    case("POST", "/generate", 400, ["malformed JSON"], "json-truncated", **raw_json('{"prompt": "hi",')),
    case("POST", "/generate", 400, ["malformed JSON"], "json-single-quotes", **raw_json("{'prompt': 'hi'}")),
    case("POST", "/generate", 400, ["JSON object"], "json-array", json=["prompt", "hi"]),
    case("POST", "/generate", 400, ["JSON object"], "json-string", json="hi"),
    case("POST", "/generate", 400, ["JSON object"], "json-null", **raw_json("null")),
    case("POST", "/generate", 400, ["body is missing"], "json-empty", content=b""),
    case("POST", "/generate", 400, ["JSON object"], "text-plain", content=b"hi", headers={"content-type": "text/plain"}),
    case("POST", "/generate", 400, ["UTF-8"], "json-invalid-utf8", content=b'{"prompt": "hi \xff\xfe"}', headers=JSON_TYPE),
    case("POST", "/generate", 400, ["UTF-8"], "json-gzipped", content=b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", headers={**JSON_TYPE, "content-encoding": "gzip"}),
    case("POST", "/generate", 400, ["nested"], "json-deep", **raw_json('{"prompt": "hi", "stop": ' + "[" * 100_000 + "}")),
    case("POST", "/generate", 400, ["digits"], "json-number-5000-digits", **raw_json('{"prompt": "hi", "seed": ' + "9" * 5_000 + "}")),
    # Wrong types, bools for numbers, numbers out of range, NaN / Infinity.
    case("POST", "/generate", 400, ["prompt", "string"], "prompt-number", json={"prompt": 42}),
    case("POST", "/generate", 400, ["prompt", "string"], "prompt-list", json={"prompt": ["hi"]}),
    case("POST", "/generate", 400, ["max_new_tokens", "integer"], "max-new-tokens-true", json={"prompt": "hi", "max_new_tokens": True}),
    case("POST", "/generate", 400, ["max_new_tokens", "integer"], "max-new-tokens-string", json={"prompt": "hi", "max_new_tokens": "5"}),
    case("POST", "/generate", 400, ["max_new_tokens", "integer"], "max-new-tokens-float", json={"prompt": "hi", "max_new_tokens": 5.5}),
    case("POST", "/generate", 400, ["max_new_tokens", "between"], "max-new-tokens-negative", json={"prompt": "hi", "max_new_tokens": -1}),
    case("POST", "/generate", 400, ["max_tokens", "between"], "max-tokens-huge", json={"prompt": "hi", "max_tokens": 10**30}),
    case("POST", "/generate", 400, ["temperature", "number"], "temperature-true", json={"prompt": "hi", "temperature": True}),
    case("POST", "/generate", 400, ["temperature", "finite"], "temperature-nan", **raw_json('{"prompt": "hi", "temperature": NaN}')),
    case("POST", "/generate", 400, ["top_p", "finite"], "top-p-infinity", **raw_json('{"prompt": "hi", "top_p": Infinity}')),
    case("POST", "/generate", 400, ["temperature", "greater than"], "temperature-negative", json={"prompt": "hi", "temperature": -1}),
    case("POST", "/generate", 400, ["seed"], "seed-negative", json={"prompt": "hi", "seed": -1}),
    case("POST", "/generate", 400, ["seed", "integer"], "seed-true", json={"prompt": "hi", "seed": True}),
    case("POST", "/generate", 400, ["stream", "boolean"], "stream-number", json={"prompt": "hi", "stream": 1}),
    case("POST", "/generate", 400, ["stop", "at most 4"], "stop-too-many", json={"prompt": "hi", "stop": list("abcde")}),
    case("POST", "/generate", 400, ["role"], "role-unknown", json={"messages": [{"role": "wizard", "content": "hi"}]}),
    # Text: empty, huge, invalid Unicode (lone surrogates sent as JSON escapes).
    case("POST", "/generate", 400, ["prompt", "empty"], "prompt-blank", json={"prompt": " \n\t "}),
    case("POST", "/generate", 413, ["MAX_TEXT_CHARS"], "prompt-huge", json={"prompt": "x" * 60_001}),
    case("POST", "/generate", 413, ["limit"], "body-over-limit", content=b'{"prompt": "' + b"x" * 600_000 + b'"}', headers=JSON_TYPE),
    case("POST", "/generate", 400, ["prompt", "Unicode"], "prompt-lone-surrogate", **raw_json('{"prompt": "hi \\ud800 there"}')),
    case("POST", "/generate", 400, ["system_prompt", "Unicode"], "system-prompt-lone-surrogate", **raw_json('{"prompt": "hi", "system_prompt": "be \\udfff brief"}')),
    case("POST", "/generate", 400, ["messages.0.content", "Unicode"], "messages-lone-surrogate", **raw_json('{"messages": [{"role": "user", "content": "\\udc00"}]}')),
    case("POST", "/generate", 400, ["stop", "Unicode"], "stop-lone-surrogate", **raw_json('{"prompt": "hi", "stop": ["\\ud83d"]}')),
    case("POST", "/generate", 400, ["Unicode"], "key-lone-surrogate", **raw_json('{"prompt": "hi", "\\ud800": 1}')),
    case("POST", "/generate", 400, ["not permitted"], "unknown-field", json={"prompt": "hi", "colour": "red"}),
    case("POST", "/generate", 400, ["not permitted"], "unknown-field-huge-name", json={"prompt": "hi", HUGE: 1}),
    # POST /tts.
    case("POST", "/tts", 400, ["text", "required"], "tts-missing-text", json={}),
    case("POST", "/tts", 400, ["text", "string"], "tts-text-number", json={"text": 1}),
    case("POST", "/tts", 400, ["text", "Unicode"], "tts-lone-surrogate", **raw_json('{"text": "a \\ud800 b"}')),
    case("POST", "/tts", 400, ["voice", "Unicode"], "tts-voice-lone-surrogate", **raw_json('{"text": "hi", "voice": "\\udbff"}')),
    case("POST", "/tts", 400, ["unknown voice", "narrator"], "tts-voice-huge", json={"text": "hi", "voice": HUGE}),
    case("POST", "/tts", 400, ["format", "wav, pcm"], "tts-format-huge", json={"text": "hi", "format": HUGE}),
    case("POST", "/tts", 400, ["stream", "boolean"], "tts-stream-string", json={"text": "hi", "stream": "yes"}),
    case("POST", "/tts", 413, ["MAX_TEXT_CHARS"], "tts-text-huge", json={"text": "x" * 60_001, "stream": True}),
    case("POST", "/tts", 413, ["stream"], "tts-whole-text-too-long", json={"text": "word " * 2_000}),
    # POST /stt: content types, multipart fields, audio that is not audio.
    case("POST", "/stt", 415, ["content type"], "stt-json", json={"audio": "aGVsbG8="}),
    case("POST", "/stt", 415, ["(none)"], "stt-no-content-type", content=WAV),
    case("POST", "/stt", 415, ["content type"], "stt-content-type-huge", content=WAV, headers={"content-type": "text/" + "a" * 20_000}),
    case("POST", "/stt", 400, ["boundary"], "stt-multipart-no-boundary", content=b"x", headers={"content-type": "multipart/form-data"}),
    case("POST", "/stt", 400, ["multipart"], "stt-multipart-garbage", content=b"garbage", headers=MULTIPART),
    case("POST", "/stt", 400, ["file"], "stt-wrong-field", files={"other": ("a.wav", WAV, "audio/wav")}),
    case("POST", "/stt", 400, ["files"], "stt-two-files", files=[("file", ("a.wav", WAV, "audio/wav")), ("file", ("b.wav", WAV, "audio/wav"))]),
    case("POST", "/stt", 400, ["fields"], "stt-many-fields", **upload(WAV, **{f"f{i}": "x" for i in range(40)})),
    case("POST", "/stt", 400, ["empty"], "stt-empty-file", **upload(b"")),
    case("POST", "/stt", 400, ["empty"], "stt-empty-raw-body", content=b"", headers={"content-type": "audio/wav"}),
    case("POST", "/stt", 400, ["not a recognised audio file"], "stt-random-bytes", **upload(RANDOM_BYTES)),
    case("POST", "/stt", 400, ["not a recognised audio file"], "stt-random-frame-sync", **upload(RANDOM_FRAME_SYNC, "a.mp3", "audio/mpeg")),
    case("POST", "/stt", 400, ["not a recognised audio file"], "stt-text-as-audio", content=b"just some text\n" * 200, headers={"content-type": "audio/wav"}),
    case("POST", "/stt", 400, ["WAV"], "stt-corrupt-wav", **upload(CORRUPT_WAV)),
    case("POST", "/stt", 400, ["truncated"], "stt-truncated-wav", **upload(CUT_WAV)),
    case("POST", "/stt", 400, ["truncated"], "stt-truncated-mp3", **upload(CUT_MP3, "a.mp3", "audio/mpeg")),
    case("POST", "/stt", 400, ["no audio samples"], "stt-header-only-wav", **upload(HEADER_ONLY_WAV)),
    case("POST", "/stt", 400, ["NaN"], "stt-nan-samples", **upload(_nan_wav())),
    case("POST", "/stt", 400, ["at least"], "stt-too-short", **upload(TOO_SHORT_WAV)),
    case("POST", "/stt", 413, ["MAX_AUDIO_SECONDS"], "stt-too-long", **upload(TOO_LONG_WAV)),
    case("POST", "/stt", 413, ["MAX_UPLOAD_MB"], "stt-too-big", **upload(b"RIFF" + bytes(MAX_UPLOAD_MB * 1_000_000 + 100_000))),
    case("POST", "/stt", 400, ["language"], "stt-language-huge", **upload(WAV, language="x" * 50_000)),
    case("POST", "/stt", 400, ["language"], "stt-language-invalid-utf8", content=_multipart((FILE_PART, WAV), (b'Content-Disposition: form-data; name="language"', b"\xff\xfe")), headers=MULTIPART),
    # /v1/chat/completions, plain and streamed.
    case("POST", CHAT, 400, ["messages", "required"], "chat-no-messages", json={"model": "gpt-4o-mini"}),
    case("POST", CHAT, 400, ["messages", "list"], "chat-messages-string", json={"messages": "hi"}),
    case("POST", CHAT, 400, ["empty"], "chat-messages-empty", json={"messages": []}),
    case("POST", CHAT, 400, ["tool_call_id"], "chat-tool-message-without-id", json={"messages": [{"role": "tool", "content": "x"}]}),
    case("POST", CHAT, 400, ["only text"], "chat-image-part", json={"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
    case("POST", CHAT, 400, ["n"], "chat-n-2", json={"messages": USER_HI, "n": 2}),
    case("POST", CHAT, 400, ["tools"], "chat-tools", json={"messages": USER_HI, "tools": [{"type": "function"}]}),
    case("POST", CHAT, 400, ["max_tokens", "integer"], "chat-max-tokens-true", json={"messages": USER_HI, "max_tokens": True}),
    case("POST", CHAT, 400, ["max_completion_tokens", "between"], "chat-max-completion-tokens-zero", json={"messages": USER_HI, "max_completion_tokens": 0}),
    case("POST", CHAT, 400, ["temperature", "finite"], "chat-temperature-nan", **raw_json('{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}')),
    case("POST", CHAT, 400, ["seed", "integer"], "chat-seed-float", json={"messages": USER_HI, "seed": 1.5}),
    case("POST", CHAT, 400, ["stream", "boolean"], "chat-stream-string", json={"messages": USER_HI, "stream": "true"}),
    case("POST", CHAT, 400, ["stream_options"], "chat-stream-options-string", json={"messages": USER_HI, "stream": True, "stream_options": "usage"}),
    case("POST", CHAT, 400, ["messages.0.content", "Unicode"], "chat-lone-surrogate", **raw_json('{"messages": [{"role": "user", "content": "a\\udc00"}]}')),
    case("POST", CHAT, 400, ["messages.0.content", "Unicode"], "chat-stream-lone-surrogate", **raw_json('{"stream": true, "messages": [{"role": "user", "content": "a\\udc00"}]}')),
    case("POST", CHAT, 400, ["messages.0.content.0.text", "Unicode"], "chat-part-lone-surrogate", **raw_json('{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}')),
    case("POST", CHAT, 413, ["MAX_TEXT_CHARS"], "chat-too-long", json={"messages": [{"role": "user", "content": "x" * 40_000}] * 2}),
    case("POST", CHAT, 400, ["role", "supported"], "chat-role-huge", json={"messages": [{"role": HUGE, "content": "x"}]}),
    # /v1/audio/transcriptions.
    case("POST", TRANSCRIBE, 400, ["response_format", "json"], "transcribe-srt", **upload(WAV, response_format="srt")),
    case("POST", TRANSCRIBE, 400, ["response_format", "json"], "transcribe-format-huge", **upload(WAV, response_format=HUGE[:50_000])),
    case("POST", TRANSCRIBE, 400, ["file"], "transcribe-no-file", files={"model": (None, "whisper-1")}),
    case("POST", TRANSCRIBE, 400, ["not a recognised audio file"], "transcribe-random", **upload(RANDOM_BYTES, "a.webm", "audio/webm")),
    case("POST", TRANSCRIBE, 415, ["content type"], "transcribe-json", json={"file": "x"}),
    # /v1/audio/speech.
    case("POST", SPEECH, 400, ["input", "required"], "speech-no-input", json={"voice": "alloy"}),
    case("POST", SPEECH, 400, ["input", "Unicode"], "speech-lone-surrogate", **raw_json('{"input": "a\\ud800"}')),
    case("POST", SPEECH, 400, ["response_format", "wav"], "speech-mp3", json={"input": "hi", "response_format": "mp3"}),
    case("POST", SPEECH, 400, ["speed"], "speech-speed-2", json={"input": "hi", "speed": 2}),
    case("POST", SPEECH, 400, ["speed", "finite"], "speech-speed-nan", **raw_json('{"input": "hi", "speed": NaN}')),
    case("POST", SPEECH, 400, ["speed", "number"], "speech-speed-true", json={"input": "hi", "speed": True}),
    case("POST", SPEECH, 400, ["unknown voice"], "speech-voice-unknown", json={"input": "hi", "voice": "gandalf"}),
    case("POST", SPEECH, 400, ["stream_format"], "speech-stream-format-sse", json={"input": "hi", "stream_format": "sse"}),
    case("POST", SPEECH, 413, ["MAX_TEXT_CHARS"], "speech-input-huge", json={"input": "x" * 60_001}),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "words"), HOSTILE)
def test_hostile_input_is_a_specific_4xx(
    http: httpx.Client, method: str, path: str, kwargs: dict, status: int, words: list[str]
) -> None:
    r = http.request(method, path, **kwargs)
    error = assert_clean_error(r, status, *words)
    if "not a recognised audio file" in words:  # a format it did not detect is not named
        assert "MP3 file" not in error["message"], error["message"]
    assert http.get("/health").status_code == 200


def test_the_table_covers_every_route() -> None:
    assert len(HOSTILE) >= 60
    routes = {(p.values[0], p.values[1]) for p in HOSTILE}
    for route in ("/generate", "/stt", "/tts", CHAT, TRANSCRIBE, SPEECH):
        assert ("POST", route) in routes
    for route in ("/health", "/v1/models", "/v1/audio/voices"):
        assert any(path == route for _, path in routes)


def test_head_health_is_200_without_a_body(http: httpx.Client) -> None:
    r = http.head("/health")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"].startswith("application/json")


def test_random_bytes_are_not_called_mp3(http: httpx.Client) -> None:
    """Regression: bytes that merely start like an MP3 frame were reported as "The MP3 file
    could not be decoded"; the format is named only when it was recognised."""
    for data in (RANDOM_FRAME_SYNC, b"\xff\xf3" + RANDOM_BYTES, b"\xff\xe2" + RANDOM_BYTES):
        error = assert_clean_error(http.post("/stt", **upload(data)), 400, "not a recognised")
        assert "MP3 file" not in error["message"]


# --- real engines -------------------------------------------------------------------------------------

REAL_CASES = [
    ("/generate", '{"prompt": "hi \\ud800 there"}', ["prompt", "Unicode"]),
    ("/generate", '{"prompt": "hi", "system_prompt": "\\udfff"}', ["system_prompt", "Unicode"]),
    (CHAT, '{"messages": [{"role": "user", "content": "\\ud800"}]}', ["Unicode"]),
    (CHAT, '{"stream": true, "messages": [{"role": "user", "content": "\\ud800"}]}', ["Unicode"]),
    ("/tts", '{"text": "hello \\ud800"}', ["text", "Unicode"]),
    (SPEECH, '{"input": "hello \\ud800"}', ["input", "Unicode"]),
    ("/generate", '{"prompt": "hi", "max_new_tokens": true}', ["max_new_tokens", "integer"]),
    ("/generate", '{"messages": [{"role": "wizard", "content": "hi"}]}', ["role"]),
]


@pytest.mark.slow
def test_hostile_input_on_the_real_engines(tiny_server: LiveServer) -> None:
    """The same guarantees with the tiny real LLM, Whisper and VITS behind the routes
    (regression: a lone surrogate reached the tokenizer, a TypeError and a 500)."""
    with httpx.Client(base_url=tiny_server.url, timeout=120) as http:
        for path, body, words in REAL_CASES:
            assert_clean_error(http.post(path, **raw_json(body)), 400, *words)
            assert http.get("/health").status_code == 200
        for data in (RANDOM_BYTES, RANDOM_FRAME_SYNC, CUT_WAV):
            r = http.post("/stt", **upload(data))
            assert_clean_error(r, 400)
        # A normal request still works afterwards.
        r = http.post("/generate", json={"prompt": "Hello", "max_new_tokens": 2})
        assert r.status_code == 200, r.text


def test_error_bodies_name_no_server_paths(tmp_path: Path) -> None:
    """A message from deep inside (here a model's load failure) keeps the file's name but
    not where it lives on the server."""
    reason = f"no weights in {tmp_path}/llm/model.safetensors (looked in {Path.home()}/.cache)"
    models = FakeModels(
        status={"llm": "failed", "stt": "ready", "tts": "ready"}, errors={"llm": reason}
    )
    with LiveServer(create_app(models)) as live:
        r = httpx.post(live.url + "/generate", json={"prompt": "hi"}, timeout=30)
    assert r.status_code == 503, r.text
    message = r.json()["error"]["message"]
    assert str(tmp_path) not in message and str(Path.home()) not in message, message
    assert "model.safetensors" in message and not SERVER_PATH.search(message), message


# --- decompression bombs -----------------------------------------------------------------------------

BOMB_RATE = 48_000
BOMB_SECONDS = 3 * 3600


@pytest.fixture(scope="module")
def flac_bomb() -> bytes:
    """3 hours of 48 kHz silence as FLAC: about 1.7 MB that decode to 2 GB of float32."""
    buffer = io.BytesIO()
    block = np.zeros(BOMB_RATE * 600, np.int16)
    with sf.SoundFile(
        buffer, "w", samplerate=BOMB_RATE, channels=1, format="FLAC", subtype="PCM_16"
    ) as f:
        for _ in range(BOMB_SECONDS // 600):
            f.write(block)
    data = buffer.getvalue()
    assert len(data) < MAX_UPLOAD_MB * 1_000_000
    return data


def unknown_length(flac: bytes) -> bytes:
    """The same FLAC with its STREAMINFO total-samples field zeroed ("length unknown"), so
    only the decoder can find out how long it is."""
    head = int.from_bytes(flac[18:26], "big")
    return flac[:18] + (head & ~((1 << 36) - 1)).to_bytes(8, "big") + flac[26:]


class DecodeCounter:
    """Counts the frames that soundfile and PyAV decode, while a test runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import av

        self.frames = 0
        counter = self
        real_read = sf.SoundFile.read

        def read(f: sf.SoundFile, *args: Any, **kwargs: Any) -> Any:
            out = real_read(f, *args, **kwargs)
            counter.frames += len(out)
            return out

        real_resampler = av.AudioResampler

        class Resampler:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.inner = real_resampler(*args, **kwargs)

            def resample(self, frame: Any) -> Any:
                if frame is not None:
                    counter.frames += frame.samples
                return self.inner.resample(frame)

        monkeypatch.setattr(sf.SoundFile, "read", read)
        monkeypatch.setattr(av, "AudioResampler", Resampler)


@pytest.mark.parametrize("path", ["/stt", TRANSCRIBE])
@pytest.mark.parametrize("header", ["honest", "length-unknown"])
@pytest.mark.parametrize("decoder", ["soundfile", "pyav"])
def test_decompression_bomb_is_refused_without_decoding_it(
    http: httpx.Client,
    flac_bomb: bytes,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    header: str,
    decoder: str,
) -> None:
    """Regression: 1.7 MB of FLAC holding 3 h of silence was decoded whole (12 s, ~3 GB)
    before the duration check said 413. Now the container's declared duration is checked
    first, and decoding stops once MAX_AUDIO_SECONDS is passed when no length is declared."""
    from voice_agent.audio import io as audio_io

    if decoder == "pyav":  # as if libsndfile could not read it: FFmpeg decodes it

        def not_recognised(data: bytes, kind: str | None, max_seconds: float | None) -> Any:
            raise RuntimeError("Format not recognised.")

        monkeypatch.setattr(audio_io, "_decode_soundfile", not_recognised)
    counter = DecodeCounter(monkeypatch)
    data = flac_bomb if header == "honest" else unknown_length(flac_bomb)
    r = http.post(path, files={"file": ("bomb.flac", data, "audio/flac")})
    assert_clean_error(r, 413, "MAX_AUDIO_SECONDS")
    limit = (MAX_AUDIO_SECONDS + 2) * BOMB_RATE
    if header == "honest":
        assert counter.frames == 0, "decoded although the header gives the length"
    assert counter.frames <= limit, f"{counter.frames / BOMB_RATE:.0f} s decoded"
    assert http.get("/health").status_code == 200


# --- clients that leave --------------------------------------------------------------------------------


def send_and_leave(url: str, path: str, body: dict, after_s: float = 0.4) -> None:
    """POST `body` to `path`, then close the connection without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        sock.sendall(head.encode() + payload)
        time.sleep(after_s)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tts", {"text": "A long answer."}),
        ("/tts", {"text": "A long answer.", "format": "pcm"}),
        ("/tts", {"text": "A long answer.", "stream": True}),
        (SPEECH, {"input": "A long answer."}),
    ],
)
def test_client_leaving_a_speech_request_stops_synthesis(path: str, body: dict) -> None:
    """Regression: a non-streamed /tts ran on after its client left (the next request waited
    31 s), though the docs promise that a disconnect cancels synthesis."""
    tts = FakeTTS(delay_s=0.05, chunks=400)  # 20 s of speech work if nobody stops it
    with LiveServer(create_app(FakeModels(tts=tts))) as server:
        send_and_leave(server.url, path, body)
        assert wait_for(lambda: tts.cancelled == 1 and tts.active == 0), (tts.active, tts.calls)
        tts.chunks = 2
        t0 = time.monotonic()
        r = httpx.post(server.url + "/tts", json={"text": "next"}, timeout=10)
        assert r.status_code == 200 and time.monotonic() - t0 < 5


def test_long_text_is_spoken_streamed_not_whole(http: httpx.Client) -> None:
    """A whole (non-streamed) answer is bounded; the same text streams, and our client
    streams it by itself."""
    from voice_agent.client.http import WHOLE_SPEECH_CHARS, VoiceAgentClient
    from voice_agent.server.plumbing import MAX_WHOLE_SPEECH_CHARS

    assert WHOLE_SPEECH_CHARS == MAX_WHOLE_SPEECH_CHARS
    text = "word " * (MAX_WHOLE_SPEECH_CHARS // 5 + 1)
    assert_clean_error(http.post("/tts", json={"text": text}), 413, "stream")
    with http.stream("POST", "/tts", json={"text": text, "stream": True}) as r:
        assert r.status_code == 200 and len(r.read()) > 44
    with VoiceAgentClient(str(http.base_url).rstrip("/"), api_key="") as client:
        samples, rate = sf.read(io.BytesIO(client.synthesize_wav(text)), dtype="float32")
    assert rate == 16_000 and len(samples) == 3 * 1600  # the fake's three chunks


# --- clients that send too slowly ----------------------------------------------------------------------

READ_LIMIT_S = 0.5


@pytest.fixture(scope="module")
def strict_server() -> Iterator[LiveServer]:
    """A server that gives a request's headers, then its body, 0.5 s each."""
    settings = settings_with(
        MODEL_SERVER_HEADER_TIMEOUT_S=str(READ_LIMIT_S),
        MODEL_SERVER_BODY_TIMEOUT_S=str(READ_LIMIT_S),
    )
    with LiveServer(create_app(FakeModels(settings))) as live:
        yield live


def connect(server: LiveServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_until_closed(sock: socket.socket, within_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection; fails if it stays open."""
    sock.settimeout(within_s)
    out = b""
    deadline = time.monotonic() + within_s
    while True:
        try:
            data = sock.recv(65_536)
        except TimeoutError:
            pytest.fail(f"the server kept the connection open for {within_s} s: {out[:200]!r}")
        except ConnectionResetError:
            return out
        if not data:
            return out
        out += data
        if time.monotonic() > deadline:
            pytest.fail(f"the server kept the connection open for {within_s} s: {out[:200]!r}")


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    return status, headers, body


def assert_json_error(raw: bytes, status: int | tuple[int, ...], *words: str) -> None:
    got, headers, body = parse_response(raw)
    assert got in (status if isinstance(status, tuple) else (status,)), raw[:300]
    assert headers.get("content-type", "").startswith("application/json"), raw[:300]
    if headers.get("transfer-encoding") == "chunked":
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    error = json.loads(body)["error"]
    assert set(error) >= {"message", "type", "code"}
    assert b"Traceback" not in raw and not SERVER_PATH.search(raw.decode("latin-1"))
    for word in words:
        assert word.lower() in error["message"].lower(), error["message"]


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connected, said nothing
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-",  # headers cut off
        b"GET /hea",  # request line cut off
    ],
    ids=["silent", "half-headers", "half-request-line"],
)
def test_headers_that_never_finish_are_closed(strict_server: LiveServer, sent: bytes) -> None:
    """Regression: a connection whose headers never completed stayed open for good
    (uvicorn's h11 has no header timeout); 2,000 of them held 2,000 sockets."""
    with connect(strict_server) as sock:
        sock.sendall(sent)
        raw = read_until_closed(sock)
    if raw:  # a partial request is told why; a silent connection is just closed
        assert_json_error(raw, 408, "MODEL_SERVER_HEADER_TIMEOUT_S")
    assert httpx.get(strict_server.url + "/health", timeout=10).status_code == 200


def test_trickled_headers_are_closed_at_the_limit(strict_server: LiveServer) -> None:
    """A byte at a time keeps a connection busy but does not extend the header limit."""
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1_000
    with connect(strict_server) as sock:
        t0 = time.monotonic()
        try:
            for byte in request:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered: stop sending into a closing connection
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
                if time.monotonic() - t0 > 10 * READ_LIMIT_S:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw = read_until_closed(sock)
    assert time.monotonic() - t0 < 10 * READ_LIMIT_S
    assert_json_error(raw, 408, "headers")


def test_a_body_shorter_than_its_content_length_gets_408(strict_server: LiveServer) -> None:
    with connect(strict_server) as sock:
        sock.sendall(
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"prompt": "'
        )
        raw = read_until_closed(sock)
    assert_json_error(raw, 408, "MODEL_SERVER_BODY_TIMEOUT_S")
    assert httpx.get(strict_server.url + "/health", timeout=10).status_code == 200


def test_an_upload_that_stalls_gets_408(strict_server: LiveServer) -> None:
    with connect(strict_server) as sock:
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"11\r\n--b\r\nContent-Disp\r\n"  # one 17-byte chunk, then nothing
        )
        raw = read_until_closed(sock)
    assert_json_error(raw, 408, "body")


def test_a_second_request_that_stalls_on_a_kept_alive_connection_is_closed(
    strict_server: LiveServer,
) -> None:
    with connect(strict_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first:
            first += sock.recv(65_536)
        status, headers, body = parse_response(first)
        length = int(headers["content-length"])
        while len(body) < length:
            body += sock.recv(65_536)
        assert status == 200
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        raw = read_until_closed(sock)
    assert_json_error(raw, 408)


def test_many_stalled_connections_are_all_closed(strict_server: LiveServer) -> None:
    socks = [connect(strict_server) for _ in range(200)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(b"POST /tts HTTP/1.1\r\nHost: x\r\n" if i % 2 else b"")
        for sock in socks:
            read_until_closed(sock, within_s=10)
    finally:
        for sock in socks:
            sock.close()
    assert httpx.get(strict_server.url + "/health", timeout=10).status_code == 200


def test_requests_within_the_limits_are_unaffected(strict_server: LiveServer) -> None:
    with httpx.Client(base_url=strict_server.url, timeout=10) as http:
        for _ in range(3):
            assert http.post("/generate", json={"prompt": "hi"}).status_code == 200
            time.sleep(READ_LIMIT_S * 1.5)  # idle keep-alive between requests is fine
        files = {"file": ("a.wav", WAV, "audio/wav")}
        assert http.post("/stt", files=files).status_code == 200


# --- broken HTTP -----------------------------------------------------------------------------------------

BROKEN_HTTP = [
    pytest.param(b"GARBAGE\r\n\r\n", 400, id="garbage-request-line"),
    pytest.param(b"GET /health\r\n\r\n", 400, id="http-0.9"),
    pytest.param(b"GET /health HTTP/1.1\r\n\r\n", 400, id="no-host"),
    pytest.param(b"G\x01T /health HTTP/1.1\r\nHost: x\r\n\r\n", 400, id="control-char-method"),
    pytest.param(b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n", 400, id="space-in-path"),
    pytest.param(b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400, id="header-without-colon"),
    pytest.param(b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400, id="nul-in-header"),
    pytest.param(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, id="content-length-text"),
    pytest.param(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, id="content-length-negative"),
    pytest.param(b"POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400, id="transfer-encoding-gzip"),
    pytest.param(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n{}", 413, id="content-length-huge"),
    pytest.param(b"GET /../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404, id="dot-dot-path"),
    pytest.param(b"GET http://evil.example/health HTTP/1.1\r\nHost: x\r\n\r\n", 404, id="absolute-form"),
    # 404 when the loopback delivers the line in one read; 431 when it comes in pieces
    # and h11's 16 KB limit on an unfinished request refuses it first (both ours, in JSON).
    pytest.param(b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", (404, 431), id="100kb-path"),
]  # fmt: skip


@pytest.mark.parametrize(("sent", "status"), BROKEN_HTTP)
def test_broken_http_gets_a_json_error(
    server: LiveServer, sent: bytes, status: int | tuple[int, ...]
) -> None:
    """Regression: requests uvicorn could not parse got a text/plain "Invalid HTTP request
    received."; now they get our JSON error shape too."""
    with connect(server) as sock:
        sock.sendall(sent)
        sock.shutdown(socket.SHUT_WR)
        raw = read_until_closed(sock, within_s=10)
    assert_json_error(raw, status)
    assert len(raw) < MAX_ERROR_BYTES
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_a_long_request_line_sent_in_pieces_gets_a_json_431(server: LiveServer) -> None:
    """The 100kb-path case made certain: sent slowly, the unfinished request outgrows
    h11's 16 KB limit first, and that refusal is ours too (JSON, no traceback)."""
    with connect(server) as sock:
        sock.sendall(b"GET /")
        try:
            for _ in range(10):
                sock.sendall(b"a" * 10_000)
                time.sleep(0.02)
            sock.sendall(b" HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the rest was sent
        raw = read_until_closed(sock, within_s=10)
    assert_json_error(raw, 431)
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200


# --- the app process (REST beside the Gradio UI) --------------------------------------------------------


def test_app_process_answers_unknown_paths_in_our_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: in the app process unknown paths went to Gradio, which answered
    `{"detail": "Not Found"}`; now they get our error shape while Gradio's routes work."""
    import gradio as gr

    monkeypatch.syspath_prepend(str(REPO_ROOT))
    import app as app_module

    with gr.Blocks() as blocks:
        gr.Markdown("hello")
    models = FakeModels()
    asgi = app_module.build_app(models, models.settings, blocks)
    with LiveServer(asgi) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        assert_clean_error(http.get("/nope"), 404, "/nope")
        assert_clean_error(http.get("/v1/nope"), 404, "/v1/nope")
        assert_clean_error(http.put("/health"), 405, "PUT")
        assert http.head("/health").status_code == 200
        page = http.get("/")
        assert page.status_code == 200 and "gradio" in page.text.lower()
        assert http.get("/config").status_code == 200
        assert http.get("/gradio_api/info").status_code == 200


# --- settings -------------------------------------------------------------------------------------------


def test_read_limits_are_settings() -> None:
    from voice_agent.core.config import SettingsError, load_settings

    defaults = load_settings({})
    assert defaults.server_header_timeout_s == 10
    assert defaults.server_body_timeout_s == 60
    custom = load_settings({"MODEL_SERVER_HEADER_TIMEOUT_S": "2.5"})
    assert custom.server_header_timeout_s == 2.5
    with pytest.raises(SettingsError, match="MODEL_SERVER_BODY_TIMEOUT_S"):
        load_settings({"MODEL_SERVER_BODY_TIMEOUT_S": "0"})
