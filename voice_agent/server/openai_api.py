"""OpenAI-compatible routes under /v1, answered by the loaded models.

Clients configured for OpenAI work unchanged: the `model` field is accepted as
given (`gpt-4o-mini`, `whisper-1`, `tts-1`, ... are all answered by the loaded
LLM, Whisper and TTS; `/v1/models` lists the real ids), OpenAI's voice names
map to the default voice, and errors use OpenAI's JSON shape. Fields we cannot
honour (legacy `functions`, n > 1, mp3 output, speed, word timestamps from a
model without them) are refused with a 400 that says so rather than silently
ignored; harmless ones (user, presence_penalty, ...) are ignored.

Tools work as OpenAI's do: `tools` and `tool_choice` go to the model through its
chat template, and the calls it makes come back as `message.tool_calls`
(`finish_reason` "tool_calls"), streamed or not; `tool` messages carry the
results back. The server never runs a client's tools: that is the client's job.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ConfigDict, Field

from voice_agent.core.cancel import CancelToken
from voice_agent.core.errors import InputError
from voice_agent.llm.tool_calls import check_tools
from voice_agent.server.plumbing import (
    COMPONENTS,
    OPENAI_VOICES,
    JSONBody,
    UnsupportedFormatError,
    call_engine,
    check_available,
    check_language,
    check_total_chars,
    llm_event_stream,
    read_audio_upload,
    require_text,
    sampling_from,
    server_state,
    shown,
    speech_response,
    transcribe_upload,
    upload_doc,
)

router = APIRouter(prefix="/v1")

ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json")
TIMESTAMP_GRANULARITIES = ("segment", "word")
SPEECH_FORMATS = ("wav", "pcm")


class ContentPart(JSONBody):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class OpenAIMessage(JSONBody):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class StreamOptions(JSONBody):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(JSONBody):
    """The subset of OpenAI's chat completion request we honour; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[OpenAIMessage]
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None


class SpeechRequest(JSONBody):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    input: str
    voice: str | None = None
    response_format: str | None = None
    speed: float | None = None
    stream_format: str | None = None


def _conversation(request_messages: list[OpenAIMessage]) -> list[dict[str, Any]]:
    """OpenAI messages (string or text-part content, tool calls and results) as our ChatMessages."""
    out: list[dict[str, Any]] = []
    called: dict[str, str] = {}  # tool call id -> function name, for the results
    for i, message in enumerate(request_messages):
        role = ROLES.get(message.role)
        if role is None:
            raise InputError(
                f"`messages.{i}.role` {shown(message.role)} is not supported; "
                "use system, developer, user, assistant or tool"
            )
        content = message.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.type != "text" or part.text is None:
                    raise InputError(
                        f"`messages.{i}.content` has a {shown(part.type)} part; only text is supported"
                    )
                texts.append(part.text)
            content = "".join(texts)
        if role == "assistant" and message.tool_calls:
            calls = [_call_in(i, j, call) for j, call in enumerate(message.tool_calls)]
            called.update((c["id"], c["function"]["name"]) for c in calls)
            out.append({"role": role, "content": content or "", "tool_calls": calls})
            continue
        if content is None:
            if role == "assistant":
                continue  # nothing to say
            raise InputError(f"`messages.{i}.content` is required")
        entry: dict[str, Any] = {"role": role, "content": content}
        if role == "tool":
            if not message.tool_call_id:
                raise InputError(f"`messages.{i}.tool_call_id` is required for a tool message")
            entry["tool_call_id"] = message.tool_call_id
            name = message.name or called.get(message.tool_call_id)
            if name:
                entry["name"] = name
        out.append(entry)
    if not out:
        raise InputError("`messages` is empty; send at least one user message")
    return out


def _call_in(i: int, j: int, call: dict[str, Any]) -> dict[str, Any]:
    """A request's `tool_calls` entry in OpenAI's shape (its arguments a JSON string)."""
    function = call.get("function")
    if call.get("type", "function") != "function" or not isinstance(function, dict):
        raise InputError(f"`messages.{i}.tool_calls.{j}` must be a function call")
    name, arguments = function.get("name"), function.get("arguments") or "{}"
    if not isinstance(name, str) or not name:
        raise InputError(f"`messages.{i}.tool_calls.{j}.function.name` is required")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise InputError(
                f"`messages.{i}.tool_calls.{j}.function.arguments` is not valid JSON"
            ) from None
    if not isinstance(arguments, dict):
        raise InputError(f"`messages.{i}.tool_calls.{j}.function.arguments` must be an object")
    call_id = str(call.get("id") or f"call_{i}_{j}")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_choice(value: str | dict[str, Any] | None) -> str:
    """`tool_choice` as the engine takes it: auto, none, required or a function's name."""
    if value is None:
        return "auto"
    if isinstance(value, str):
        return value
    function = value.get("function")
    if value.get("type") == "function" and isinstance(function, dict) and function.get("name"):
        return str(function["name"])
    raise InputError(
        '`tool_choice` must be "none", "auto", "required" or '
        '{"type": "function", "function": {"name": ...}}'
    )


def tool_calls_out(reply: Any) -> list[dict[str, Any]]:
    """The reply's calls in OpenAI's shape; a call that could not be read is passed on as
    written (its arguments are then not valid JSON, as OpenAI warns can happen)."""
    out = []
    for call in reply.tool_calls:
        if call.error:
            arguments = call.raw
        else:
            arguments = json.dumps(call.arguments, ensure_ascii=False)
        out.append(
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": arguments},
            }
        )
    return out


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _finish(reason: str) -> str:
    # OpenAI knows stop, length and tool_calls; a cancelled reply ended early, like a stop.
    return reason if reason in ("length", "tool_calls") else "stop"


def _usage(reply: Any) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


@router.get("/models", summary="The loaded models' real ids")
async def list_models(request: Request) -> JSONResponse:
    state = server_state(request)
    models = state.models
    data = []
    for component in COMPONENTS:
        engine = getattr(models, component, None)
        if models.status.get(component) == "ready" and engine is not None:
            entry = {
                "id": engine.model_id,
                "object": "model",
                "created": int(state.started_at),
                "owned_by": "voice-agent",
                "component": component,
            }
            if component == "llm" and isinstance(getattr(engine, "context_length", None), int):
                entry["max_model_len"] = engine.context_length  # vLLM's name for it
            data.append(entry)
    return JSONResponse({"object": "list", "data": data})


@router.post("/chat/completions", summary="Chat completion; `stream: true` sends SSE chunks")
async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
    settings = server_state(request).settings
    if body.n not in (None, 1):
        raise InputError("`n` must be 1: one completion per request is supported")
    if body.functions:
        raise InputError("`functions` is not supported by this server; send `tools` instead")
    tool_choice = _tool_choice(body.tool_choice)
    tools = check_tools(body.tools, tool_choice) if body.tools or tool_choice != "auto" else []
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise InputError("send `max_tokens` or `max_completion_tokens`, not both")
    conversation = _conversation(body.messages)
    check_total_chars([m["content"] for m in conversation], settings)
    limit = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    sampling = sampling_from(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        max_new_tokens=limit,
        stop=body.stop,
        seed=body.seed,
        token_field=(
            "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        ),
    )
    completion_id, created = _completion_id(), int(time.time())

    if not body.stream:

        def work(engine: Any, token: CancelToken) -> dict[str, Any]:
            extra = {"tools": tools, "tool_choice": tool_choice} if tools else {}
            reply = engine.generate_reply(conversation, sampling, cancel=token, **extra)
            message: dict[str, Any] = {"role": "assistant", "content": reply.text}
            if reply.tool_calls:
                message["content"] = reply.text or None
                message["tool_calls"] = tool_calls_out(reply)
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": engine.model_id,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": _finish(reply.finish_reason),
                    }
                ],
                "usage": _usage(reply),
            }

        return JSONResponse(await call_engine(request, "llm", work))

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(model_id: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def head(model_id: str) -> list[dict[str, Any]]:
        return [chunk(model_id, {"role": "assistant", "content": ""}, None)]

    def render(kind: str, value: Any, model_id: str) -> list[dict[str, Any]]:
        if kind == "delta":
            return [chunk(model_id, {"content": value}, None)]
        if value is None:
            return []
        events = []
        if value.tool_calls:  # each call whole, in one chunk: OpenAI's clients join the parts
            calls = [{"index": i, **call} for i, call in enumerate(tool_calls_out(value))]
            events.append(chunk(model_id, {"tool_calls": calls}, None))
        events.append(chunk(model_id, {}, _finish(value.finish_reason)))
        if include_usage:
            events.append({**chunk(model_id, {}, None), "choices": [], "usage": _usage(value)})
        return events

    return await llm_event_stream(
        request,
        conversation,
        sampling,
        None,
        render,
        head=head,
        tail=["[DONE]"],
        tools=tools,
        tool_choice=tool_choice,
    )


def timestamp_granularities(fields: dict[str, str], fmt: str) -> set[str]:
    """OpenAI's `timestamp_granularities[]` (comma-joined by `read_audio_upload`), checked."""
    raw = fields.get("timestamp_granularities[]") or fields.get("timestamp_granularities") or ""
    asked = {v.strip().lower() for v in raw.split(",") if v.strip()}
    unknown = sorted(asked - set(TIMESTAMP_GRANULARITIES))
    if unknown:
        raise InputError(
            f"unsupported timestamp_granularities {shown(', '.join(unknown))}; "
            f"accepted: {', '.join(TIMESTAMP_GRANULARITIES)}"
        )
    if asked and fmt != "verbose_json":
        raise InputError("timestamp_granularities needs response_format verbose_json")
    return asked


@router.post(
    "/audio/transcriptions",
    summary=(
        "Transcribe (multipart `file`, `language`, `response_format`, `timestamp_granularities[]`)"
    ),
    openapi_extra=upload_doc("model", "language", "response_format", "timestamp_granularities[]"),
)
async def transcriptions(request: Request) -> Response:
    settings = server_state(request).settings
    data, fields = await read_audio_upload(request, settings)
    fmt = (fields.get("response_format") or "json").strip().lower()
    if fmt not in TRANSCRIPTION_FORMATS:
        raise UnsupportedFormatError(
            f"unsupported response_format {shown(fmt)}; "
            f"accepted: {', '.join(TRANSCRIPTION_FORMATS)}"
        )
    language = check_language(fields.get("language"))
    # Word timings when asked (Whisper's alignment heads); the one segment needs none.
    words = "word" in timestamp_granularities(fields, fmt)

    def work(engine: Any, token: CancelToken) -> Any:
        return transcribe_upload(engine, data, language, settings, words=words)

    transcript = await call_engine(request, "stt", work)
    if fmt == "text":
        return PlainTextResponse(transcript.text)
    if fmt == "json":
        return JSONResponse({"text": transcript.text})
    duration = round(transcript.duration_s, 3)
    verbose: dict[str, Any] = {
        "task": "transcribe",
        "language": transcript.language,
        "duration": duration,
        "text": transcript.text,
        "segments": [
            {
                "id": 0,
                "seek": 0,
                "start": 0.0,
                "end": duration,
                "text": transcript.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 0.0,
                "no_speech_prob": 0.0 if transcript.speech_detected else 1.0,
            }
        ]
        if transcript.text
        else [],
    }
    if transcript.words:
        verbose["words"] = [
            {"word": word, "start": start, "end": end} for word, start, end in transcript.words
        ]
    return JSONResponse(verbose)


@router.post("/audio/speech", summary="Speak `input` as a streamed wav or raw 16-bit PCM")
async def speech(request: Request, body: SpeechRequest) -> Response:
    settings = server_state(request).settings
    text = require_text(body.input, "input", settings)
    fmt = (body.response_format or "wav").lower()
    if fmt not in SPEECH_FORMATS:
        raise UnsupportedFormatError(
            f"unsupported response_format {shown(fmt)}; accepted: {', '.join(SPEECH_FORMATS)}"
        )
    if body.speed is not None and body.speed != 1.0:
        raise InputError("`speed` other than 1.0 is not supported by this server")
    if body.stream_format not in (None, "audio"):
        raise UnsupportedFormatError("only `stream_format` 'audio' is supported")
    return await speech_response(request, text, body.voice, fmt, stream=True)


@router.get("/audio/voices", summary="Voices of the loaded TTS; OpenAI names map to the default")
def voices(request: Request) -> JSONResponse:
    # Plain `def`: with lazy loading `require` loads the TTS here, which must happen on a
    # worker thread, not on the event loop every other request needs.
    state = server_state(request)
    check_available(state, "tts")
    engine = state.models.require("tts")
    data = [
        {"id": v.id, "name": v.name, "description": v.description, "object": "voice"}
        for v in engine.voices()
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": engine.model_id,
            "openai_voices": {name: "default" for name in OPENAI_VOICES},
        }
    )
