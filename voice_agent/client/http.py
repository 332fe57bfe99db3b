"""HTTP client for the REST API (`python -m voice_agent serve` or the app's mounted routes).

`VoiceAgentClient` talks to `python -m voice_agent serve` (or the app's mounted
API): `transcribe`, `synthesize`, `generate_reply`, `health`, and the
streaming `stream_reply` / `stream_speech`. Failures raise typed errors:
`ServerUnreachableError`, `ClientInputError` (4xx, with the server's message),
`ServerBusyError` (503 busy, `.retry_after`), `AuthError` (401),
`RemoteModelUnavailableError` (503, a model loading or failed),
`ServerTimeoutError` and `ServerError`.

The engine adapters over this client are in `voice_agent.client.remote`.
"""

from __future__ import annotations

import contextlib
import io
import json
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from voice_agent.core.cancel import is_cancelled
from voice_agent.core.errors import (
    BusyError,
    InputError,
    ModelUnavailableError,
    VoiceAgentError,
)
from voice_agent.llm.base import ChatMessage, Reply
from voice_agent.stt.base import Transcript
from voice_agent.tts.base import AudioChunk, Voice

DEFAULT_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 5.0


# Longest text the server speaks as one whole WAV (`MAX_WHOLE_SPEECH_CHARS` in
# `voice_agent.server.plumbing`); `synthesize_wav` streams longer text.
WHOLE_SPEECH_CHARS = 5_000


class ClientError(VoiceAgentError):
    """Base of the client's errors; `status_code` and `code` come from the server when known."""

    status_code: int | None = None
    code: str | None = None


class ServerUnreachableError(ClientError):
    """No answer from the server (not running, wrong URL, connection dropped)."""


class ClientInputError(ClientError, InputError):
    """The server refused the input (4xx); the message is the server's."""

    status_code: int
    code: str

    def __init__(self, message: str, status_code: int = 400, code: str = "invalid_input") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class AuthError(ClientError):
    """Missing or wrong API key (401)."""

    status_code = 401


class ServerBusyError(ClientError, BusyError):
    """The engine's queue is full (503); retry after `retry_after` seconds."""

    status_code = 503

    @property
    def retry_after(self) -> float:
        return self.retry_after_s


class RemoteModelUnavailableError(ClientError, ModelUnavailableError):
    """The server's model is loading or failed to load (503)."""

    status_code = 503


class ServerTimeoutError(ClientError):
    """The request ran past the server's or the client's time limit."""


class ServerError(ClientError):
    """The server failed (5xx) for a reason that is not the input's."""


def _error_from(status: int, body: Any, headers: httpx.Headers | dict) -> ClientError:
    """The typed error for an error response (body: parsed JSON or text)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message, code = str(error.get("message", "")), str(error.get("code") or "")
    else:
        message, code = (str(body)[:500] if body else f"HTTP {status}"), ""
    if status == 401:
        return AuthError(message or "the server needs an API key (MODEL_SERVER_API_KEY)")
    if status == 503:
        if code == "model_unavailable":
            return RemoteModelUnavailableError(message)
        try:
            retry = float(headers.get("retry-after", "1"))
        except ValueError:
            retry = 1.0
        return ServerBusyError(message or "the server is busy", retry_after_s=retry)
    if status == 504:
        return ServerTimeoutError(message)
    if 400 <= status < 500:
        return ClientInputError(message, status_code=status, code=code or "invalid_input")
    err = ServerError(message or f"the server answered HTTP {status}")
    err.status_code, err.code = status, code or None
    return err


class VoiceAgentClient:
    """A client for the REST API.

    Args:
        base_url: the server; default `MODEL_SERVER_URL` (http://127.0.0.1:8000).
        api_key: sent as `Authorization: Bearer`; default `MODEL_SERVER_API_KEY`.
        timeout: seconds to wait for an answer (connecting gets 5 s).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if base_url is None or api_key is None:
            from voice_agent.core.config import get_settings

            settings = get_settings()
            base_url = base_url or settings.server_url
            api_key = api_key if api_key is not None else settings.api_key
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT_S, timeout)),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VoiceAgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing --------------------------------------------------------------------------------

    def _transport_error(self, exc: httpx.TransportError) -> ClientError:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return ServerTimeoutError(f"no answer from {self.base_url} in time ({exc})")
        return ServerUnreachableError(
            f"cannot reach the model server at {self.base_url} ({type(exc).__name__}: {exc}); "
            "is `python -m voice_agent serve` running there (MODEL_SERVER_URL)?"
        )

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response whatever its status; transport failures become client errors."""
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            raise _error_from(response.status_code, _parse(response), response.headers)
        return response

    @contextlib.contextmanager
    def _open_stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streaming response, checked for errors; transport failures while reading it
        become client errors too."""
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response.status_code, _parse(response), response.headers)
                yield response
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc

    # --- routes ----------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """`GET /health`: the server's snapshot; `ok` is False while loading or after a failure."""
        response = self._send("GET", "/health")
        body = _parse(response)
        if response.status_code in (200, 503) and isinstance(body, dict) and "status" in body:
            return body
        raise _error_from(response.status_code, body, response.headers)

    def models(self) -> list[str]:
        """The real ids of the server's loaded models."""
        return [m["id"] for m in self._request("GET", "/v1/models").json()["data"]]

    def voices(self) -> list[Voice]:
        data = self._request("GET", "/v1/audio/voices").json()["data"]
        return [Voice(v["id"], v["name"], v.get("description", "")) for v in data]

    def transcribe(self, audio: str | Path | bytes, language: str | None = None) -> Transcript:
        """Transcribe an audio file (path) or encoded audio bytes."""
        data = Path(audio).read_bytes() if isinstance(audio, str | Path) else bytes(audio)
        name = Path(audio).name if isinstance(audio, str | Path) else "audio.wav"
        fields = {"language": language} if language else {}
        body = self._request(
            "POST", "/stt", files={"file": (name, data, "application/octet-stream")}, data=fields
        ).json()
        return Transcript(
            text=body["text"],
            language=body.get("language"),
            duration_s=body.get("duration_s", 0.0),
            seconds=body.get("seconds", 0.0),
            speech_detected=body.get("speech_detected", True),
        )

    def synthesize_wav(self, text: str, voice: str | None = None) -> bytes:
        """The whole reply as WAV bytes (`POST /tts`).

        The server speaks at most `WHOLE_SPEECH_CHARS` as one whole answer; longer text
        is fetched as a raw PCM stream and made into the WAV here.
        """
        if len(text) <= WHOLE_SPEECH_CHARS:
            return self._request("POST", "/tts", json={"text": text, "voice": voice}).content
        with self._speech_stream(text, voice, "pcm") as response:
            rate = int(response.headers.get("x-sample-rate", "0")) or 16_000
            pcm = b"".join(response.iter_bytes())
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(pcm[: len(pcm) - len(pcm) % 2])
        return buffer.getvalue()

    def synthesize(self, text: str, output_path: str | Path, voice: str | None = None) -> Path:
        """Speak `text` into a WAV file at `output_path`; returns the path."""
        path = Path(output_path)
        path.write_bytes(self.synthesize_wav(text, voice))
        return path

    def stream_speech(
        self, text: str, voice: str | None = None, response_format: str = "wav"
    ) -> Iterator[bytes]:
        """Speech as it is made: a WAV stream (header first) or raw 16-bit PCM."""
        with self._speech_stream(text, voice, response_format) as response:
            yield from response.iter_bytes()

    def _speech_stream(
        self, text: str, voice: str | None, response_format: str
    ) -> contextlib.AbstractContextManager[httpx.Response]:
        body = {"text": text, "voice": voice, "stream": True, "format": response_format}
        return self._open_stream("POST", "/tts", json=body)

    def _speech_chunks(
        self, text: str, voice: str | None, cancel: object | None
    ) -> Iterator[AudioChunk]:
        with self._speech_stream(text, voice, "pcm") as response:
            rate = int(response.headers.get("x-sample-rate", "0")) or 16_000
            pending = b""
            for data in response.iter_bytes():
                if is_cancelled(cancel):
                    return  # leaving the `with` closes the connection: the server stops
                pending += data
                usable = len(pending) - len(pending) % 2
                if usable:
                    pcm = np.frombuffer(pending[:usable], dtype="<i2")
                    pending = pending[usable:]
                    yield AudioChunk(rate, pcm.astype(np.float32) / 32768.0, text=text)

    def _generate_events(
        self,
        messages_or_prompt: list[ChatMessage] | str,
        system_prompt: str | None,
        sampling: dict[str, Any],
        stream: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {key: value for key, value in sampling.items() if value is not None}
        if "stop" in body:
            body["stop"] = list(body["stop"]) if not isinstance(body["stop"], str) else body["stop"]
        if isinstance(messages_or_prompt, str):
            body["prompt"] = messages_or_prompt
        else:
            body["messages"] = [dict(m) for m in messages_or_prompt]
        if system_prompt is not None:
            body["system_prompt"] = system_prompt
        body["stream"] = stream
        return body

    def generate_reply(
        self,
        messages_or_prompt: list[ChatMessage] | str,
        *,
        system_prompt: str | None = None,
        **sampling: Any,
    ) -> Reply:
        """The LLM's reply (`POST /generate`). `sampling`: temperature, top_p,
        max_new_tokens, stop, seed."""
        body = self._generate_events(messages_or_prompt, system_prompt, sampling, stream=False)
        return _reply(self._request("POST", "/generate", json=body).json())

    def reply_events(
        self,
        messages_or_prompt: list[ChatMessage] | str,
        *,
        system_prompt: str | None = None,
        cancel: object | None = None,
        **sampling: Any,
    ) -> Iterator[str | Reply]:
        """Text deltas as they come, then the finished `Reply`."""
        body = self._generate_events(messages_or_prompt, system_prompt, sampling, stream=True)
        with self._open_stream("POST", "/generate", json=body) as response:
            for line in response.iter_lines():
                if is_cancelled(cancel):
                    return  # closing the connection cancels the generation on the server
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[len("data: ") :])
                if "error" in event:
                    raise _error_from(int(event["error"].get("status") or 500), event, {})
                if "delta" in event:
                    yield event["delta"]
                elif event.get("done"):
                    yield _reply(event)

    def stream_reply(
        self,
        messages_or_prompt: list[ChatMessage] | str,
        *,
        system_prompt: str | None = None,
        **sampling: Any,
    ) -> Iterator[str]:
        """The LLM's reply as text deltas, as they are generated."""
        for event in self.reply_events(messages_or_prompt, system_prompt=system_prompt, **sampling):
            if isinstance(event, str):
                yield event


def _parse(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text


def _reply(body: dict[str, Any]) -> Reply:
    return Reply(
        text=body["text"],
        finish_reason=body.get("finish_reason", "stop"),
        prompt_tokens=body.get("prompt_tokens", 0),
        completion_tokens=body.get("completion_tokens", 0),
        seconds=body.get("seconds", 0.0),
        first_token_seconds=body.get("first_token_seconds"),
        trimmed_messages=body.get("trimmed_messages", 0),
    )


def read_wav(data: bytes) -> tuple[int, np.ndarray]:
    """(sample_rate, float32 mono samples) of a 16-bit PCM WAV made by the server."""
    import io

    with wave.open(io.BytesIO(data)) as w:
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    samples = pcm.astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return rate, samples
