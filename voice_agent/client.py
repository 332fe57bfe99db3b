"""HTTP client for the REST API, and engine adapters that run the stages on a model server.

`VoiceAgentClient` talks to `python -m voice_agent serve` (or the app's mounted
API): `transcribe`, `synthesize`, `generate_reply`, `health`, and the
streaming `stream_reply` / `stream_speech`. Failures raise typed errors:
`ServerUnreachableError`, `ClientInputError` (4xx, with the server's message),
`ServerBusyError` (503 busy, `.retry_after`), `AuthError` (401),
`RemoteModelUnavailableError` (503, a model loading or failed),
`ServerTimeoutError` and `ServerError`.

`RemoteLLM`, `RemoteSTT` and `RemoteTTS` implement the stage Protocols over
the client, so the app can keep its models in a separate, long-running server
(a workstation keeps them loaded across app restarts).
"""

from __future__ import annotations

import contextlib
import json
import time
import wave
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from .cancel import is_cancelled
from .errors import (
    BusyError,
    InputError,
    ModelLoadError,
    ModelUnavailableError,
    VoiceAgentError,
)
from .llm.base import ChatMessage, GenerationSettings, Reply, ReplyStream
from .loading import Attempt, LoadReport
from .stt.base import AudioInput, Transcript
from .tts.base import AudioChunk, Voice

DEFAULT_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 5.0


class ClientError(VoiceAgentError):
    """Base of the client's errors; `status_code` and `code` come from the server when known."""

    status_code: int | None = None
    code: str | None = None


class ServerUnreachableError(ClientError):
    """No answer from the server (not running, wrong URL, connection dropped)."""


class ClientInputError(ClientError, InputError):
    """The server refused the input (4xx); the message is the server's."""

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
            from .config import get_settings

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
        """The whole reply as WAV bytes (`POST /tts`)."""
        return self._request("POST", "/tts", json={"text": text, "voice": voice}).content

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


# --- engine adapters ------------------------------------------------------------------------------


class _Remote:
    """Shared by the adapters: the server's facts about one component, as a `LoadReport`."""

    component = ""

    def __init__(self, client: VoiceAgentClient, wait_s: float = 0.0) -> None:
        self.client = client
        entry = self._entry(wait_s)
        self.info = entry
        self.model_id: str = entry.get("model_id") or entry.get("configured") or "unknown"
        self.report = self._report(entry)
        if entry.get("status") != "ready":
            raise ModelLoadError(
                f"the server's {self.component} model is not available: "
                f"{entry.get('error') or entry.get('status')}",
                self.report,
            )

    def _entry(self, wait_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + wait_s
        while True:
            entry = self.client.health().get("models", {}).get(self.component, {})
            if entry.get("status") in ("ready", "failed") or time.monotonic() >= deadline:
                return entry
            time.sleep(0.5)

    def _report(self, entry: dict[str, Any]) -> LoadReport:
        remote = (entry.get("report") or {}).get("chosen") or {}
        ready = entry.get("status") == "ready"
        report = LoadReport(
            component=self.component,
            model_ref=self.model_id,
            source=f"remote {self.client.base_url}",
        )
        report.attempts.append(
            Attempt(
                strategy="remote",
                device=f"remote:{remote.get('device', '?')}",
                dtype=str(remote.get("dtype", "?")),
                quantization=remote.get("quantization"),
                outcome="chosen" if ready else "failed",
                reason=None if ready else (entry.get("error") or entry.get("status")),
            )
        )
        report.notes.append(f"served by {self.client.base_url}: {remote.get('strategy', '?')}")
        return report


class RemoteLLM(_Remote):
    """`LLMEngine` over the REST API (`/generate`); cancelling closes the stream."""

    component = "llm"

    def __init__(self, client: VoiceAgentClient, wait_s: float = 0.0) -> None:
        super().__init__(client, wait_s)
        self.context_length: int = int(self.info.get("context_length") or 0)

    def stream_reply(
        self,
        messages: list[ChatMessage] | str,
        settings: GenerationSettings | None = None,
        cancel: object | None = None,
        system_prompt: str | None = None,
    ) -> ReplyStream:
        sampling = asdict(settings or GenerationSettings())
        stream = ReplyStream(iter(()))

        def pieces() -> Iterator[str]:
            started, text = time.perf_counter(), []
            events = self.client.reply_events(
                messages, system_prompt=system_prompt, cancel=cancel, **sampling
            )
            for event in events:
                if isinstance(event, Reply):
                    stream.reply = event
                else:
                    text.append(event)
                    yield event
            if stream.reply is None:  # cancelled before the server finished
                stream.reply = Reply(
                    "".join(text), "cancelled", seconds=time.perf_counter() - started
                )

        stream.pieces = pieces()
        return stream

    def generate_reply(
        self,
        messages: list[ChatMessage] | str,
        settings: GenerationSettings | None = None,
        cancel: object | None = None,
        system_prompt: str | None = None,
    ) -> Reply:
        return self.stream_reply(messages, settings, cancel, system_prompt).collect()


class RemoteSTT(_Remote):
    """`STTEngine` over the REST API (`/stt`); arrays are sent as 16-bit WAV."""

    component = "stt"
    sample_rate = 16_000

    def transcribe(self, audio: AudioInput, language: str | None = None) -> Transcript:
        if isinstance(audio, str | Path | bytes):
            return self.client.transcribe(audio, language)
        from .audio import decode_audio, encode_wav

        rate, samples = decode_audio(audio)
        return self.client.transcribe(encode_wav(rate, samples), language)


class RemoteTTS(_Remote):
    """`TTSEngine` over the REST API (`/tts`); streamed text is spoken sentence by sentence."""

    component = "tts"

    def __init__(self, client: VoiceAgentClient, wait_s: float = 0.0) -> None:
        super().__init__(client, wait_s)
        self.backend: str = str(self.info.get("backend") or "remote")
        self.sample_rate: int = int(self.info.get("sample_rate") or 16_000)

    def synthesize(self, text: str, voice: str | None = None) -> tuple[int, np.ndarray]:
        return read_wav(self.client.synthesize_wav(text, voice))

    def stream(
        self, text: str | Iterable[str], voice: str | None = None, cancel: object | None = None
    ) -> Iterator[AudioChunk]:
        if isinstance(text, str):
            sentences: Iterable[str] = [text]
        else:
            from .tts.chunking import split_stream

            sentences = split_stream(text)
        for sentence in sentences:
            if is_cancelled(cancel):
                return
            if sentence.strip():
                yield from self.client._speech_chunks(sentence, voice, cancel)

    def voices(self) -> list[Voice]:
        return self.client.voices()


def remote_loaders(
    base_url: str | None = None, api_key: str | None = None, wait_s: float = 60.0
) -> dict[str, Any]:
    """Loaders for `LoadedModels(settings, loaders=...)` that use a model server's engines.

    Each waits up to `wait_s` for the server's model to finish loading and fails
    (recorded like any load failure) when the server is unreachable or its model failed.
    """

    def loader(cls: type[_Remote]) -> Any:
        def load(settings: Any, progress: Any) -> _Remote:
            progress(0.1, f"connecting to the model server at {base_url or settings.server_url}")
            client = VoiceAgentClient(
                base_url or settings.server_url,
                api_key if api_key is not None else (settings.api_key or ""),
            )
            try:
                return cls(client, wait_s=wait_s)
            except BaseException:
                client.close()  # a failed adapter is dropped: do not leave its connections open
                raise

        return load

    return {"llm": loader(RemoteLLM), "stt": loader(RemoteSTT), "tts": loader(RemoteTTS)}
