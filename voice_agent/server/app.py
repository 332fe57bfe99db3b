"""The REST API: the seed's routes, the OpenAI-compatible ones, auth, limits and error mapping.

`create_app(models)` builds a FastAPI app around the process's `LoadedModels`.
`app.py` mounts it beside the Gradio UI (sharing the loaded models) and
`python -m voice_agent serve` runs it alone. Routes:

- `GET /health`: the diagnostics snapshot with an overall `ok` (503 while a
  model loads or when one failed); runs no model.
- `POST /generate`, `POST /stt`, `POST /tts`: the seed's LLM, STT and TTS routes.
- `/v1/...`: OpenAI-compatible routes (`openai_api.py`).

Every error is JSON in OpenAI's shape (`{"error": {"message", "type", "code"}}`):
`InputError` -> its 4xx, `BusyError` -> 503 + Retry-After,
`ModelUnavailableError` -> 503, per-request timeout -> 504; anything else is
a 500 without details (the traceback goes to the log only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from voice_agent import __version__
from voice_agent.core.cancel import CancelToken
from voice_agent.core.config import Settings, get_settings
from voice_agent.core.errors import BusyError, InputError, ModelUnavailableError
from voice_agent.server.access import AccessMiddleware, AccessRule
from voice_agent.server.admission import (
    BodyLimitMiddleware,
    RequestTimeoutError,
    error_body,
    send_json_error,
)
from voice_agent.server.openai_api import router as openai_router
from voice_agent.server.plumbing import (
    COMPONENTS,
    ECHO_CHARS,
    MULTIPART_SLACK_BYTES,
    JSONBody,
    ServerState,
    UnsupportedFormatError,
    call_engine,
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

if TYPE_CHECKING:
    from voice_agent.llm.base import ChatMessage

log = logging.getLogger(__name__)

AUDIO_UPLOAD_PATHS = ("/stt", "/v1/audio/transcriptions")
# JSON bodies: the text limit in UTF-8 worst case plus room for the other fields.
JSON_SLACK_BYTES = 256 * 1024


def create_app(
    models: Any | None = None,
    settings: Settings | None = None,
    *,
    cors_origins: list[str] | None = None,
) -> FastAPI:
    """The REST API around `models` (a `LoadedModels`).

    Args:
        models: the loaded models to serve; None asks `voice_agent.pipeline.models.get_models()`
            (loading in the background) on the first request that needs them.
        settings: limits, API key, queue size and timeout; default `get_settings()`.
        cors_origins: origins allowed to call the API from a browser. CORS is off
            unless given.
    """
    settings = settings or (getattr(models, "settings", None) if models is not None else None)
    settings = settings or get_settings()

    def load_models() -> Any:
        from voice_agent.pipeline.models import get_models

        return get_models(settings, background=True)

    app = FastAPI(
        title="voice-agent model server",
        version=__version__,
        description="Whisper, an instruct LLM and TTS over HTTP; OpenAI-compatible under /v1.",
    )
    app.state.voice_agent = ServerState(settings, load_models, loaded=models)

    _add_error_handlers(app)
    _add_seed_routes(app)
    app.include_router(openai_router)

    # Starlette runs the last added middleware first: CORS (so even a 401 carries its
    # headers), auth, body limits, then the catch-all closest to the routes.
    app.add_middleware(UnexpectedErrorMiddleware)
    is_mounted = mounted_app_check(app)
    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=_body_limit(settings),
        skip=is_mounted,
        body_timeout_s=settings.server_body_timeout_s,
    )
    rule = AccessRule.from_settings(settings)
    if rule.required:
        app.add_middleware(AccessMiddleware, rule=rule)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app


def _body_limit(settings: Settings) -> Callable[[str], tuple[int, str]]:
    upload = settings.max_upload_bytes + MULTIPART_SLACK_BYTES
    text = settings.max_text_chars * 4 + JSON_SLACK_BYTES

    def limit_for(path: str) -> tuple[int, str]:
        if path in AUDIO_UPLOAD_PATHS:
            return upload, "upload limit (MAX_UPLOAD_MB)"
        return text, "limit for text requests (from MAX_TEXT_CHARS)"

    return limit_for


class UnexpectedErrorMiddleware:
    """Answer any unexpected exception with a bare 500 JSON error (pure ASGI).

    Starlette's own last-resort handler re-raises after answering, which makes
    the server drop the keep-alive connection; here the traceback goes to the
    log and the connection stays usable. A stream that already started just ends.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.error(
                "%s %s -> 500: %s",
                scope.get("method"),
                scope["path"],
                type(exc).__name__,
                exc_info=exc,
            )
            if not started:
                await send_json_error(
                    send,
                    500,
                    "internal server error (details are in the server log)",
                    "internal_error",
                )


def mounted_app_check(app: FastAPI) -> Callable[[dict], bool]:
    """A test for "this request goes to an app mounted inside `app`, not to an API route".

    Routes are matched in order as Starlette does, so a UI mounted at "/" after
    the API routes still leaves the API routes protected.
    """

    def is_mounted(scope: dict) -> bool:
        for route in app.router.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return isinstance(route, Mount)
        return False

    return is_mounted


# --- errors ---------------------------------------------------------------------------------------


def error_response(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(message, code, status), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """One clear sentence per problem, e.g. '`temperature`: Input should be a valid number'.

    Field names are quoted cut short (an unknown field's name is the client's input).
    """
    parts = []
    for err in exc.errors():
        loc = [str(p)[:ECHO_CHARS] for p in err.get("loc", ()) if p not in ("body", "query")]
        kind = err.get("type", "")
        if kind == "invalid_unicode":
            parts.append(err.get("msg", "the body is not valid Unicode"))
        elif kind == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "invalid JSON")
            where = f" at character {loc[0]}" if loc else ""
            parts.append(f"malformed JSON body: {detail}{where}")
        elif kind == "missing" and not loc:
            parts.append("the request body is missing: send a JSON object")
        elif not loc and kind in ("model_attributes_type", "dict_type"):
            parts.append("the request body must be a JSON object (Content-Type: application/json)")
        else:
            where = ".".join(loc) or "body"
            parts.append(f"`{where}`: {err.get('msg', 'invalid value')}")
    return "; ".join(parts) or "invalid request"


def _add_error_handlers(app: FastAPI) -> None:
    def where(request: Request) -> str:
        return f"{request.method} {request.url.path}"

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = _validation_message(exc)
        log.info("%s -> 400 (invalid request): %s", where(request), message)
        return error_response(400, message, "invalid_request")

    @app.exception_handler(InputError)
    async def on_input(request: Request, exc: InputError) -> JSONResponse:
        log.info("%s -> %d (%s): %s", where(request), exc.status_code, exc.code, exc)
        return error_response(exc.status_code, str(exc), exc.code)

    @app.exception_handler(BusyError)
    async def on_busy(request: Request, exc: BusyError) -> JSONResponse:
        retry = str(max(1, round(exc.retry_after_s)))
        log.warning("%s -> 503 (busy, retry after %s s)", where(request), retry)
        return error_response(503, str(exc), "busy", headers={"Retry-After": retry})

    @app.exception_handler(ModelUnavailableError)
    async def on_unavailable(request: Request, exc: ModelUnavailableError) -> JSONResponse:
        log.warning("%s -> 503 (model unavailable): %s", where(request), exc)
        return error_response(503, str(exc), "model_unavailable", headers={"Retry-After": "5"})

    @app.exception_handler(RequestTimeoutError)
    async def on_timeout(request: Request, exc: RequestTimeoutError) -> JSONResponse:
        log.warning("%s -> 504 (timeout): %s", where(request), exc)
        return error_response(504, str(exc), "timeout")

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cause = exc.__cause__
        if isinstance(cause, InputError):  # raised while the body was read (size, time)
            return await on_input(request, cause)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {shown(request.url.path)}; see GET /docs for the API"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = (
                f"{request.method} is not allowed on {shown(request.url.path)}; "
                f"allowed: {allowed or 'none'}"
            )
        elif exc.status_code == 400 and "parsing the body" in message:
            code = "invalid_request"
            message = body_parse_message(cause)
        return error_response(exc.status_code, message, code, headers=exc.headers)


def body_parse_message(cause: BaseException | None) -> str:
    """Why a JSON body could not be read, from the error the JSON reader raised."""
    if isinstance(cause, UnicodeDecodeError):
        return (
            f"the request body is not valid UTF-8 (byte 0x{cause.object[cause.start]:02x} at "
            f"position {cause.start}); send JSON as UTF-8 text, uncompressed"
        )
    if isinstance(cause, RecursionError):
        return "the JSON body is nested too deeply to read; send a flat JSON object"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "a number in the JSON body has too many digits to read"
    return "the request body could not be parsed; send JSON or multipart/form-data"


# --- /health --------------------------------------------------------------------------------------


def health_payload(state: ServerState) -> tuple[int, dict[str, Any]]:
    """(status code, body) of `GET /health`: the snapshot plus an overall verdict."""
    import time

    models = state.models
    settings = state.settings
    if models.recover_failed():  # a server that came up late: the cached snapshot is stale
        state.snapshot_cache = (0.0, None)
    status = {c: models.status.get(c, "pending") for c in COMPONENTS}
    failed = [c for c, s in status.items() if s == "failed"]
    waiting = [
        c
        for c, s in status.items()
        if s == "loading" or (s == "pending" and settings.model_loading == "eager")
    ]
    if failed:
        verdict = "failed"
        reason = "; ".join(
            f"{c} failed to load: {models.errors.get(c) or 'see its load report'}" for c in failed
        )
    elif waiting:
        verdict, reason = (
            "loading",
            "still loading: " + ", ".join(_progress_line(models, c) for c in waiting),
        )
    else:
        verdict, reason = "ok", None
    snap = _snapshot(state)
    components: dict[str, Any] = {}
    for component in COMPONENTS:
        # The cached snapshot may be up to a second old; the loader's record is read fresh.
        entry = {**snap.get("models", {}).get(component, {}), "status": status[component]}
        report = models.reports.get(component)
        entry["report"] = report.as_dict() if report is not None else None
        entry.pop("error", None)
        if models.errors.get(component):
            entry["error"] = models.errors[component]
        progress = getattr(models, "progress", {}).get(component)
        if progress is not None:
            entry["progress"] = {"fraction": round(progress[0], 3), "message": progress[1]}
        entry.update(_engine_facts(getattr(models, component, None)))
        gate = state.gates[component]
        entry["queue"] = {
            "in_flight": gate.admitted,
            "waiting": gate.waiting,
            "slots": gate.slots,
            "queue_size": gate.queue_size,
        }
        components[component] = entry
    body = {
        **{k: v for k, v in snap.items() if k != "turns"},
        "models": components,
        "ok": verdict == "ok",
        "status": verdict,
        "reason": reason,
        "uptime_s": round(time.time() - state.started_at, 1),
    }
    return (200 if verdict == "ok" else 503), body


# The diagnostics snapshot reads package metadata (~15 ms); /health reuses it this long.
SNAPSHOT_TTL_S = 1.0


def _snapshot(state: ServerState) -> dict[str, Any]:
    """The diagnostics snapshot, cached for `SNAPSHOT_TTL_S` so /health stays cheap under polling."""
    import time

    from voice_agent.core.diagnostics import snapshot

    cached_at, cached = state.snapshot_cache
    if cached is not None and time.monotonic() - cached_at < SNAPSHOT_TTL_S:
        return cached
    try:
        snap = snapshot(state.models, settings=state.settings, resolve=False)
    except Exception as exc:  # health must answer even when a probe breaks
        log.exception("diagnostics snapshot failed")
        snap = {"error": f"diagnostics failed: {type(exc).__name__}"}
    state.snapshot_cache = (time.monotonic(), snap)
    return snap


def _progress_line(models: Any, component: str) -> str:
    """'llm (45%: loading weights)', or just the component when no progress is known."""
    progress = getattr(models, "progress", {}).get(component)
    if progress is None:
        return component
    return f"{component} ({progress[0]:.0%}: {progress[1]})"


def _engine_facts(engine: Any) -> dict[str, Any]:
    if engine is None:
        return {}
    facts: dict[str, Any] = {"model_id": getattr(engine, "model_id", None)}
    for name in ("context_length", "sample_rate", "backend"):
        value = getattr(engine, name, None)
        if isinstance(value, int | str):
            facts[name] = value
    # Declared by every engine (the stage Protocols); remote adapters read them back.
    facts["capabilities"] = engine.capabilities.as_dict()
    server_status = getattr(engine, "server_status", None)
    if callable(server_status):  # an engine on a server (LLM_BACKEND=openai): where, how it went
        facts["server"] = server_status()
    return facts


# --- the seed's routes ----------------------------------------------------------------------------


class MessageIn(JSONBody):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class GenerateRequest(JSONBody):
    """`POST /generate`: `messages` or `prompt`, plus sampling settings."""

    model_config = ConfigDict(extra="forbid")
    messages: list[MessageIn] | None = None
    prompt: str | None = None
    system_prompt: str | None = None
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False


class TTSRequest(JSONBody):
    """`POST /tts`: text to speak, optional voice, whole WAV or a stream."""

    model_config = ConfigDict(extra="forbid")
    text: str
    voice: str | None = None
    stream: bool = False
    format: str = "wav"


def reply_json(reply: Any, model_id: str) -> dict[str, Any]:
    return {
        "text": reply.text,
        "finish_reason": reply.finish_reason,
        "model": model_id,
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "seconds": round(reply.seconds, 4),
        "first_token_seconds": (
            None if reply.first_token_seconds is None else round(reply.first_token_seconds, 4)
        ),
        "trimmed_messages": reply.trimmed_messages,
    }


def _add_seed_routes(app: FastAPI) -> None:
    @app.get("/health", summary="Models, load reports, offline status, versions; 503 until ready")
    def health(request: Request) -> JSONResponse:
        # Plain `def`: FastAPI runs it on a worker thread, so the first hardware probe
        # (which imports torch) never stalls streams in progress.
        code, body = health_payload(server_state(request))
        return JSONResponse(body, status_code=code)

    # HEAD answers like GET without the body (uvicorn drops it); monitors probe with it.
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @app.post("/generate", summary="LLM reply to messages or a prompt (JSON, or SSE with stream)")
    async def generate(request: Request, body: GenerateRequest) -> Response:
        settings = server_state(request).settings
        if body.messages is not None and body.prompt is not None:
            raise InputError("send either `messages` or `prompt`, not both")
        if body.messages is not None:
            if not body.messages:
                raise InputError("`messages` is empty; send at least one user message")
            conversation: list[ChatMessage] | str = [
                {"role": m.role, "content": m.content}  # type: ignore[typeddict-item]
                for m in body.messages
            ]
            check_total_chars([m.content for m in body.messages], settings)
        elif body.prompt is not None:
            conversation = require_text(body.prompt, "prompt", settings)
        else:
            raise InputError("`messages` or `prompt` is required")
        if body.max_new_tokens is not None and body.max_tokens is not None:
            raise InputError("send `max_new_tokens` or `max_tokens`, not both")
        field_name = "max_tokens" if body.max_tokens is not None else "max_new_tokens"
        sampling = sampling_from(
            temperature=body.temperature,
            top_p=body.top_p,
            max_new_tokens=body.max_new_tokens
            if body.max_new_tokens is not None
            else body.max_tokens,
            stop=body.stop,
            seed=body.seed,
            token_field=field_name,
        )
        if body.system_prompt is not None:
            require_text(body.system_prompt, "system_prompt", settings)
        if not body.stream:

            def work(engine: Any, token: CancelToken) -> dict[str, Any]:
                reply = engine.generate_reply(
                    conversation, sampling, cancel=token, system_prompt=body.system_prompt
                )
                return reply_json(reply, engine.model_id)

            return JSONResponse(await call_engine(request, "llm", work))

        def render(kind: str, value: Any, model_id: str) -> list[dict[str, Any]]:
            if kind == "delta":
                return [{"delta": value}]
            return [] if value is None else [{"done": True, **reply_json(value, model_id)}]

        return await llm_event_stream(request, conversation, sampling, body.system_prompt, render)

    @app.post(
        "/stt",
        summary="Transcribe audio (multipart `file` or raw audio body)",
        openapi_extra=upload_doc("language"),
    )
    async def stt(request: Request) -> JSONResponse:
        settings = server_state(request).settings
        data, fields = await read_audio_upload(request, settings)
        language = check_language(fields.get("language"))

        def work(engine: Any, token: CancelToken) -> dict[str, Any]:
            transcript = transcribe_upload(engine, data, language, settings)
            return {
                "text": transcript.text,
                "language": transcript.language,
                "duration_s": round(transcript.duration_s, 3),
                "seconds": round(transcript.seconds, 4),
                "speech_detected": transcript.speech_detected,
                "model": engine.model_id,
            }

        return JSONResponse(await call_engine(request, "stt", work))

    @app.post("/tts", summary="Speak text: audio/wav, or a chunked stream with `stream: true`")
    async def tts(request: Request, body: TTSRequest) -> Response:
        settings = server_state(request).settings
        text = require_text(body.text, "text", settings)
        if body.format not in ("wav", "pcm"):
            raise UnsupportedFormatError(
                f"unsupported format {shown(body.format)}; accepted formats: wav, pcm"
            )
        return await speech_response(request, text, body.voice, body.format, body.stream)
