"""Plumbing shared by the REST routes (`server.py`, `openai_api.py`).

Server state, running engine work under the per-engine gates with disconnect
and timeout cancellation, input checks that raise `InputError`s, and the audio
wire formats (WAV, streamed WAV, raw PCM).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from voice_agent.core.cancel import CancelToken
from voice_agent.core.config import Settings
from voice_agent.core.errors import InputError, InputTooLargeError, ModelUnavailableError
from voice_agent.server.admission import (
    EngineGate,
    RequestTimeoutError,
    error_body,
    pump,
    run_gated,
)

if TYPE_CHECKING:
    from voice_agent.llm.base import ChatMessage, GenerationSettings
    from voice_agent.tts.base import TTSEngine

log = logging.getLogger(__name__)

COMPONENTS = ("llm", "stt", "tts")
# Longest reply one request may ask for; engines also stop at their context length.
MAX_NEW_TOKENS = 4096
# Largest sampling seed (OpenAI's is an int64); torch.manual_seed overflows past 2**64 - 1.
MAX_SEED = 2**63 - 1
# OpenAI's voice names; clients written for OpenAI send them, we answer with our default voice.
OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
# Room for multipart boundaries and form fields around an audio upload.
MULTIPART_SLACK_BYTES = 64 * 1024
# Longest text spoken as one whole (non-streamed) answer: the audio is held in memory until
# it is done (a few minutes of speech); longer text is streamed (`"stream": true`).
MAX_WHOLE_SPEECH_CHARS = 5_000
# Longest piece of a client's input echoed back in an error message.
ECHO_CHARS = 80
AUDIO_CONTENT_TYPES = ("audio/", "video/", "application/octet-stream", "application/ogg")


def upload_doc(*fields: str) -> dict[str, Any]:
    """OpenAPI request body of an audio upload route (the route parses the body itself)."""
    properties: dict[str, Any] = {"file": {"type": "string", "format": "binary"}}
    properties.update({name: {"type": "string"} for name in fields})
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": properties, "required": ["file"]}
        }
    }
    if "response_format" not in fields:  # the seed route also takes the raw audio as the body
        content["audio/*"] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}


def shown(value: Any, limit: int = ECHO_CHARS) -> str:
    """`repr(value)` for an error message, cut to about `limit` characters.

    Error messages quote what the client sent so it can see what was wrong, but never
    echo a huge input back in full.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value):,} characters)" if isinstance(value, str) else ""
    return f"{text[:limit]}…{size}"


def unicode_problem(text: str) -> str | None:
    """Why `text` is not valid Unicode (a lone surrogate), or None when it is.

    JSON may spell a UTF-16 surrogate as `\\ud800`; Python's JSON reader accepts one
    alone, but no tokenizer, encoder or response can carry it.
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"a lone surrogate U+{ord(text[exc.start]):04X} at character {exc.start}"
    return None


def find_invalid_unicode(data: Any) -> tuple[str, str] | None:
    """(where, why) for the first string or key in a JSON value that is not valid Unicode.

    `where` is the dotted path, e.g. "messages.0.content". Iterative, so any nesting
    the JSON reader accepted is walked without recursion.
    """
    stack: list[tuple[tuple[str, ...], Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            problem = unicode_problem(value)
            if problem:
                return ".".join(path) or "body", problem
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                key_text = str(key)
                problem = unicode_problem(key_text)
                if problem:
                    where = ".".join(path)
                    return (f"a key in {where}" if where else "a key"), problem
                stack.append(((*path, key_text), item))
        elif isinstance(value, list):
            stack.extend(((*path, str(i)), item) for i, item in reversed(list(enumerate(value))))
    return None


def invalid_unicode_message(where: str, problem: str) -> str:
    name = where if where.startswith("a key") else f"`{where[:ECHO_CHARS]}`"
    return (
        f"{name} is not valid Unicode: it holds {problem}; send UTF-8 text "
        "(in JSON, a \\u escape of a surrogate needs its pair)"
    )


class JSONBody(BaseModel):
    """Base of the JSON request models: JSON's own types, finite numbers, valid Unicode.

    Strict: `true` is not a number, `"5"` is not an integer, `1` is not a boolean. NaN and
    Infinity (which Python's JSON reader accepts) are refused. A lone surrogate anywhere
    in the body (a string or a key, however deep) is refused here, before any field is
    read, so no route and no engine ever sees text it cannot encode.
    """

    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        found = find_invalid_unicode(data)
        if found is not None:
            raise PydanticCustomError(
                "invalid_unicode", "{message}", {"message": invalid_unicode_message(*found)}
            )
        return data


class UnsupportedMediaTypeError(InputError):
    status_code = 415
    code = "unsupported_media_type"


class UnknownVoiceError(InputError):
    code = "unknown_voice"


class UnsupportedFormatError(InputError):
    code = "unsupported_format"


@dataclass
class ServerState:
    """What every route needs: settings, the loaded models and one gate per engine.

    Args:
        settings: limits, key, timeout (the gates' queue size is the models' settings').
        models_factory: returns the `LoadedModels` when none was given (called once).
        loaded: the `LoadedModels` to serve, when known up front.
    """

    settings: Settings
    models_factory: Callable[[], Any]
    loaded: Any = None
    started_at: float = field(default_factory=time.time)
    snapshot_cache: tuple[float, dict[str, Any] | None] = (0.0, None)

    @property
    def models(self) -> Any:
        """The `LoadedModels`; asks the cached loader on first use when none was given."""
        if self.loaded is None:
            self.loaded = self.models_factory()
        return self.loaded

    @property
    def gates(self) -> dict[str, EngineGate]:
        """One gate per engine, held by the models: the conversation's turns queue in them too."""
        gates: dict[str, EngineGate] = self.models.gates
        return gates


def server_state(request: Request) -> ServerState:
    return request.app.state.voice_agent


def check_available(state: ServerState, component: str) -> None:
    """Refuse at once (503) when a model has failed or is still loading at launch.

    With lazy loading a pending model is loaded on first use, inside the gate; so is
    a failed one whose failure may have fixed itself (`LoadedModels.recover`).
    """
    models = state.models
    status = models.status.get(component, "pending")
    if status == "failed" and models.recoverable(component):
        return  # `require`, on the worker, checks whether it has come back (not on the loop)
    if status == "ready" or (status == "pending" and state.settings.model_loading == "lazy"):
        return
    if status == "failed":
        reason = models.errors.get(component) or "it failed to load"
        raise ModelUnavailableError(f"the {component} model is not available: {reason}")
    raise ModelUnavailableError(f"the {component} model is still loading; retry shortly")


async def _watch_disconnect(request: Request, token: CancelToken) -> None:
    """Cancel `token` when the client goes away (the body has been read by now)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            token.cancel("client disconnected")
            return


@contextlib.asynccontextmanager
async def disconnect_cancels(request: Request, token: CancelToken) -> AsyncIterator[None]:
    watcher = asyncio.create_task(_watch_disconnect(request, token))
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher


async def call_engine(
    request: Request, component: str, fn: Callable[[Any, CancelToken], Any]
) -> Any:
    """Run `fn(engine, token)` under the component's gate, cancelled on disconnect or timeout."""
    state = server_state(request)
    check_available(state, component)
    token = CancelToken()

    def work(tok: CancelToken) -> Any:
        return fn(state.models.require(component), tok)

    async with disconnect_cancels(request, token):
        return await run_gated(
            state.gates[component], work, token=token, timeout_s=state.settings.server_timeout_s
        )


@dataclass
class OpenedStream:
    """A started engine stream: its first item (None when empty) and the rest."""

    first: Any
    rest: AsyncIterator[Any]
    token: CancelToken


async def open_stream(
    request: Request, component: str, produce: Callable[[Any, CancelToken], Iterator[Any]]
) -> OpenedStream:
    """Start `produce(engine, token)` under the gate and wait for its first item.

    Waiting for the first item before answering means a bad voice, an empty
    text or a busy engine still gets its proper status code instead of a
    broken 200 stream.
    """
    state = server_state(request)
    check_available(state, component)
    token = CancelToken()

    def work(tok: CancelToken) -> Iterator[Any]:
        return produce(state.models.require(component), tok)

    stream = pump(
        state.gates[component], work, token=token, timeout_s=state.settings.server_timeout_s
    )
    try:
        async with disconnect_cancels(request, token):
            first = await stream.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await stream.aclose()
        raise
    return OpenedStream(first, stream, token)


class CancellingStreamingResponse(StreamingResponse):
    """A streaming response that cancels its work however the response ends.

    Starlette cancels the body iterator on a disconnect; this also covers
    servers that report a disconnect only through a failed send.
    """

    def __init__(self, content: Any, token: CancelToken, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.token = token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.token.cancel("response ended")


# --- input checks ---------------------------------------------------------------------------------


def require_text(text: str | None, name: str, settings: Settings) -> str:
    """`text` when it is non-blank and within MAX_TEXT_CHARS; else an `InputError`."""
    if text is None:
        raise InputError(f"`{name}` is required")
    problem = unicode_problem(text)
    if problem:
        raise InputError(invalid_unicode_message(name, problem))
    if not text.strip():
        raise InputError(f"`{name}` is empty; send some text")
    if len(text) > settings.max_text_chars:
        raise InputTooLargeError(
            f"`{name}` has {len(text)} characters; the limit is {settings.max_text_chars} "
            "(MAX_TEXT_CHARS)"
        )
    return text


def check_total_chars(texts: list[str], settings: Settings) -> None:
    total = sum(len(t) for t in texts)
    if total > settings.max_text_chars:
        raise InputTooLargeError(
            f"the messages hold {total} characters; the limit is {settings.max_text_chars} "
            "(MAX_TEXT_CHARS)"
        )


def check_max_tokens(value: int | None, name: str) -> None:
    if value is not None and not 1 <= value <= MAX_NEW_TOKENS:
        raise InputError(f"`{name}` must be between 1 and {MAX_NEW_TOKENS}, got {value}")


def resolve_voice(tts: TTSEngine, voice: str | None) -> str | None:
    """Our voice id for `voice`: None (the default) for OpenAI's names and "default"."""
    if voice is None or not voice.strip():
        return None
    wanted = voice.strip().lower()
    if wanted in OPENAI_VOICES or wanted == "default":
        return None
    voices = tts.voices()
    for known in voices:
        if wanted in (known.id.lower(), known.name.lower()):
            return known.id
    names = ", ".join(v.id for v in voices) or "none besides the default"
    raise UnknownVoiceError(
        f"unknown voice {shown(voice)}; available voices: {names} "
        f"(OpenAI's names such as 'alloy' use the default voice)"
    )


async def read_audio_upload(request: Request, settings: Settings) -> tuple[bytes, dict[str, str]]:
    """The uploaded audio and the other form (or query) fields.

    Accepts multipart/form-data with the audio in `file` (OpenAI's name) or
    `audio`, or the audio as the raw body with an audio content type. An array
    field sent once per value (`timestamp_granularities[]=word`, repeated) comes
    back as one comma-separated value; any other repeated field keeps its last value.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=32)
        fields: dict[str, str] = {}
        for key, value in form.multi_items():
            if isinstance(value, str):
                joined = key.endswith("[]") and key in fields
                fields[key] = f"{fields[key]},{value}" if joined else value
        upload = form.get("file") or form.get("audio")
        if upload is None or isinstance(upload, str):
            raise InputError("missing the audio: send it as the multipart file field `file`")
        data = await upload.read()
        await form.close()
    elif content_type.startswith(AUDIO_CONTENT_TYPES):
        data = await request.body()
        fields = dict(request.query_params)
    else:
        raise UnsupportedMediaTypeError(
            f"unsupported content type {shown(content_type or '(none)')}: send the audio as "
            "multipart/form-data (field `file`) or as the raw body with an audio/* content type"
        )
    if not data:
        raise InputError("the audio upload is empty")
    if len(data) > settings.max_upload_bytes:
        raise InputTooLargeError(
            f"the audio upload is {len(data) / 1e6:.1f} MB; the limit is "
            f"{settings.max_upload_bytes / 1e6:g} MB (MAX_UPLOAD_MB)"
        )
    return data, fields


def check_language(language: str | None) -> str | None:
    """A plausible language code or name (the engine checks that it knows it)."""
    if language is None or not language.strip():
        return None
    value = language.strip().lower()
    letters = value.replace("-", "").replace("_", "")
    if len(value) > 32 or not (letters.isascii() and letters.isalpha()):
        raise InputError(f"`language` {shown(language)} is not a language code such as 'en'")
    return value


def transcribe_upload(
    stt: Any, data: bytes, language: str | None, settings: Settings, *, words: bool = False
) -> Any:
    """Decode and bound the upload (duration), then transcribe it. Runs under the STT gate.

    Raises:
        WordTimestampsUnsupportedError: `words` asked of an engine without
            `capabilities.timestamps` (a 400, before the audio is decoded).
    """
    from voice_agent.audio.io import SAMPLE_RATE, load_audio
    from voice_agent.stt.base import WordTimestampsUnsupportedError

    if words and not stt.capabilities.timestamps:
        raise WordTimestampsUnsupportedError(
            f"{stt.model_id} gives no word timestamps; ask without "
            "timestamp_granularities=word, or load a Whisper model (STT_MODEL_NAME)"
        )
    samples = load_audio(data, target_rate=SAMPLE_RATE, max_seconds=settings.max_audio_seconds)
    run = stt.transcribe_words if words else stt.transcribe
    return run((SAMPLE_RATE, samples), language=language)


# --- LLM and speech helpers shared by the seed and OpenAI routes ----------------------------------


def sampling_from(
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int | None,
    stop: str | list[str] | None,
    seed: int | None,
    token_field: str,
) -> GenerationSettings:
    from voice_agent.llm.base import GenerationSettings

    check_max_tokens(max_new_tokens, token_field)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InputError(f"`seed` must be between 0 and {MAX_SEED}, got {seed}")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stops) > 4:
        raise InputError("`stop` takes at most 4 strings")
    defaults = GenerationSettings()
    return GenerationSettings(
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=defaults.max_new_tokens if max_new_tokens is None else max_new_tokens,
        stop=tuple(s for s in stops if s),
        seed=seed,
    )


def sse(data: Any) -> bytes:
    """One server-sent event carrying JSON (or a bare string such as [DONE])."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


def llm_stream_items(
    engine: Any,
    token: CancelToken,
    messages: list[ChatMessage] | str,
    sampling: GenerationSettings,
    system_prompt: str | None,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str = "auto",
) -> Iterator[tuple[str, Any]]:
    """("delta", text) for each piece, then ("reply", Reply): runs in the LLM worker."""
    extra = {"tools": tools, "tool_choice": tool_choice} if tools else {}
    stream = engine.stream_reply(
        messages, sampling, cancel=token, system_prompt=system_prompt, **extra
    )
    with closing_iterator(stream) as pieces:
        for piece in pieces:
            if piece:
                yield "delta", piece
    yield "reply", stream.reply


async def llm_event_stream(
    request: Request,
    conversation: list[ChatMessage] | str,
    sampling: GenerationSettings,
    system_prompt: str | None,
    render: Callable[[str, Any, str], Iterable[Any]],
    *,
    head: Callable[[str], Iterable[Any]] | None = None,
    tail: Iterable[Any] = (),
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str = "auto",
) -> CancellingStreamingResponse:
    """The LLM's reply to `conversation` as server-sent events (`/generate`, `/v1/chat/...`).

    The stream is opened under the LLM gate first (`open_stream`), so bad input or a
    busy model still get their status code. Then the events are `head(model_id)`,
    `render(kind, value, model_id)` for each `llm_stream_items` item, an in-band
    error event if the stream fails once the headers are sent, and `tail`.
    """
    model_ids: list[str] = []

    def produce(engine: Any, token: CancelToken) -> Iterator[tuple[str, Any]]:
        model_ids.append(engine.model_id)
        return llm_stream_items(
            engine, token, conversation, sampling, system_prompt, tools, tool_choice
        )

    opened = await open_stream(request, "llm", produce)

    async def events() -> AsyncIterator[bytes]:
        if head is not None:
            for payload in head(model_ids[0]):
                yield sse(payload)
        item = opened.first
        try:
            while item is not None:
                kind, value = item
                for payload in render(kind, value, model_ids[0]):
                    yield sse(payload)
                item = await anext(opened.rest, None)
        except Exception as exc:  # headers are sent: report in-band, as OpenAI does
            yield sse(stream_error_event(exc))
        for payload in tail:
            yield sse(payload)

    return CancellingStreamingResponse(
        events(), opened.token, media_type="text/event-stream", headers=NO_BUFFERING
    )


@contextlib.contextmanager
def closing_iterator(iterable: Iterable[Any]) -> Iterator[Iterator[Any]]:
    """Iterate `iterable` and close it on the way out, however the loop ends.

    An engine's generator often sits in a reference cycle with its stream
    object (it sets `stream.reply`), so dropping it would leave it suspended
    until the garbage collector runs; closing it stops the engine now.
    """
    iterator = iter(iterable)
    try:
        yield iterator
    finally:
        close = getattr(iterator, "close", None)
        if callable(close):
            close()


NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def stream_error_event(exc: BaseException) -> dict[str, Any]:
    """The in-band error event of a stream whose status line is already sent.

    OpenAI's error shape plus `status`, the code the error would have had.
    """
    message, code, status = stream_error(exc)
    body = error_body(message, code, status)
    body["error"]["status"] = status
    return body


def stream_error(exc: BaseException) -> tuple[str, str, int]:
    """(message, code, status) for an error that happens after a stream started."""
    if isinstance(exc, InputError):
        return str(exc), exc.code, exc.status_code
    if isinstance(exc, RequestTimeoutError):
        return str(exc), "timeout", 504
    log.error("stream failed: %s", type(exc).__name__, exc_info=exc)
    return "internal server error (details are in the server log)", "internal_error", 500


async def speech_response(
    request: Request, text: str, voice: str | None, fmt: str, stream: bool
) -> Response:
    """Shared by `/tts` and `/v1/audio/speech`: WAV or raw PCM, whole or streamed."""
    media = "audio/wav" if fmt == "wav" else "audio/pcm"
    if not stream:
        if len(text) > MAX_WHOLE_SPEECH_CHARS:
            raise InputTooLargeError(
                f"the text has {len(text):,} characters; a whole (non-streamed) answer takes at "
                f'most {MAX_WHOLE_SPEECH_CHARS:,}: send "stream": true to have longer text '
                "spoken as it is made"
            )

        def work(engine: Any, token: CancelToken) -> tuple[int, bytes]:
            # Through the engine's stream, which checks the token between chunks, so a
            # client that leaves (or the deadline) stops the synthesis, not just the answer.
            chosen = resolve_voice(engine, voice)
            rate, parts = engine.sample_rate, []
            with closing_iterator(engine.stream(text, voice=chosen, cancel=token)) as chunks:
                for chunk in chunks:
                    if token.cancelled:
                        break
                    rate = chunk.sample_rate
                    parts.append(np.asarray(chunk.samples, dtype=np.float32).reshape(-1))
            samples = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
            return rate, wav_bytes(rate, samples) if fmt == "wav" else pcm16(samples)

        rate, audio = await call_engine(request, "tts", work)
        return Response(audio, media_type=media, headers={"X-Sample-Rate": str(rate)})

    def produce(engine: Any, token: CancelToken) -> Iterator[tuple[int, bytes]]:
        chosen = resolve_voice(engine, voice)
        with closing_iterator(engine.stream(text, voice=chosen, cancel=token)) as chunks:
            for chunk in chunks:
                if len(chunk.samples):
                    yield chunk.sample_rate, pcm16(chunk.samples)

    opened = await open_stream(request, "tts", produce)
    rate = opened.first[0] if opened.first else server_state(request).models.tts.sample_rate

    async def body() -> AsyncIterator[bytes]:
        if fmt == "wav":
            yield wav_header(rate)
        item = opened.first
        try:
            while item is not None:
                yield item[1]
                item = await anext(opened.rest, None)
        except Exception as exc:  # the status line is sent; end the audio early
            message, code, _ = stream_error(exc)
            log.warning("speech stream ended early (%s): %s", code, message)

    headers = {**NO_BUFFERING, "X-Sample-Rate": str(rate)}
    return CancellingStreamingResponse(body(), opened.token, media_type=media, headers=headers)


# --- audio wire formats ---------------------------------------------------------------------------

# Sizes written into the header of a WAV whose length is unknown when it starts.
STREAM_WAV_SIZE = 0xFFFFFFFF


def wav_header(sample_rate: int, data_bytes: int | None = None) -> bytes:
    """A 44-byte header for 16-bit mono PCM; `data_bytes=None` marks a stream."""
    data = STREAM_WAV_SIZE if data_bytes is None else data_bytes
    riff = STREAM_WAV_SIZE if data_bytes is None else 36 + data_bytes
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        riff,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        1,  # mono
        sample_rate,
        sample_rate * 2,
        2,
        16,
        b"data",
        data,
    )


def pcm16(samples: np.ndarray) -> bytes:
    from voice_agent.audio.io import to_pcm16_bytes

    return to_pcm16_bytes(np.asarray(samples, dtype=np.float32).reshape(-1))


def wav_bytes(sample_rate: int, samples: np.ndarray) -> bytes:
    from voice_agent.audio.io import encode_wav

    return encode_wav(sample_rate, np.asarray(samples, dtype=np.float32).reshape(-1))
