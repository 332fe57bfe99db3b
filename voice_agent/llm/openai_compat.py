"""`OpenAICompatLLM`: the LLM on a serving engine that speaks OpenAI's chat API.

`LLM_BACKEND=openai` puts the LLM on a server at `LLM_BASE_URL`: vLLM, SGLang,
TGI, llama.cpp's server, Ollama, or our own `serve`. They batch many requests
at once (continuous batching), so a fleet of app processes, or one process with
many conversations, shares one copy of the weights.

Loading asks the server what it serves (`GET {LLM_BASE_URL}/models`). Each try
is one step of the loading chain (`loading.run_chain`): `openai`, then
`openai-retry-1` ... `openai-retry-N` (N = LLM_MAX_RETRIES) after a growing
pause while the server cannot be reached. A wrong key, or a model name the
server does not list, ends the chain at once with the names it does serve.
The chosen attempt's notes say where, which model, and the round-trip time.

A reply is `POST {LLM_BASE_URL}/chat/completions` with `"stream": true`, read on
a worker thread. A request the server did not take (connection refused, 429,
502, 503, 504) is retried with backoff; a reply that has started streaming is
never retried (its first words may already be spoken). Cancelling, or closing
the reply's iterator, ends the iteration at once and hangs up the connection,
which is how a serving engine learns to stop generating.

Tools go to the server as OpenAI's `tools` and `tool_choice`, and the calls
it sends back (`tool_calls` deltas joined across chunks, or a whole
`message.tool_calls`) become `Reply.tool_calls`, like the embedded engine's
(`llm/openai_wire.py`). A server that refuses tools (vLLM without
`--enable-auto-tool-choice`, llama.cpp without `--jinja`, an Ollama model
without tool support) is asked again without them, and from then on the engine
declares no `tools` capability, so turns answer without tools instead of failing.

History is trimmed to the server's context (`max_model_len` in /v1/models when
it says, else `DEFAULT_CONTEXT`) by an estimate of `CHARS_PER_TOKEN`, since the
server's tokenizer is not here.

httpx, not the `openai` package: httpx is already a runtime dependency, the two
routes need a page of code, and owning the transport keeps the retries (only
before a reply starts), the hang-up on cancel, the per-read timeout and the error
messages (naming LLM_BASE_URL, LLM_MODEL, LLM_API_KEY) in our hands.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import random
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import httpx

from voice_agent.core.cancel import is_cancelled
from voice_agent.core.config import Settings, get_settings
from voice_agent.core.errors import BusyError, ModelLoadError
from voice_agent.core.loading import LoadReport, Strategy, explain_error, run_chain
from voice_agent.llm.base import (
    ChatMessage,
    GenerationSettings,
    LLMCapabilities,
    Reply,
    ReplyStream,
    ToolSpec,
)
from voice_agent.llm.errors import GenerationError, PromptTooLongError
from voice_agent.llm.openai_wire import ToolCallParts, wire_messages, wire_tool_choice
from voice_agent.llm.prompt import (
    _drop_turns,
    _turn_starts,
    check_generation_settings,
    normalize_messages,
)
from voice_agent.llm.tool_calls import check_tools

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0  # a reachable server accepts a connection in well under this
BACKOFF_S = 0.5  # pause before the first retry; doubled for each next one
MAX_BACKOFF_S = 8.0
MAX_RETRY_AFTER_S = 30.0  # a longer Retry-After is not waited for: the turn fails as busy
RETRY_STATUSES = (429, 502, 503, 504)
DEFAULT_CONTEXT = 4096  # llama.cpp's and Ollama's default context, when the server does not say
# Fields of a /v1/models entry that give the context length (vLLM and SGLang: max_model_len).
CONTEXT_FIELDS = ("max_model_len", "context_length", "context_window", "max_context_length")
# English runs about 4 characters per token; 3 errs towards trimming a little early,
# since a prompt over the server's context is refused (HTTP 400) rather than trimmed.
CHARS_PER_TOKEN = 3.0
TOKENS_PER_MESSAGE = 4  # the chat template's role markers around each message
POLL_S = 0.05  # how often a reader waiting for the next piece checks its cancel
# Idle connections are dropped before uvicorn's 5 s keep-alive ends them under a request.
KEEPALIVE_S = 4.0
UNREACHABLE = "the server cannot be reached"


class ServerError(GenerationError):
    """The LLM server could not be reached, refused, or failed; written for a person.

    Attributes:
        reason: the load report's plain reason ("the server cannot be reached", ...).
        retry: whether trying again may help (an unreachable server may come up; a
            wrong key or model name will not fix itself).
        status: the HTTP status the server answered with, when it answered.
    """

    def __init__(
        self, message: str, reason: str, *, retry: bool = False, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry = retry
        self.status = status


@dataclass(frozen=True)
class ServedModel:
    """One entry of the server's /v1/models."""

    id: str
    component: str | None = None  # our own `serve` lists its STT and TTS too, marked
    context_length: int | None = None

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> ServedModel:
        context = next(
            (
                int(entry[name])
                for name in CONTEXT_FIELDS
                if isinstance(entry.get(name), int) and entry[name] > 0
            ),
            None,
        )
        component = entry.get("component")
        return cls(str(entry.get("id")), component if isinstance(component, str) else None, context)

    @property
    def is_llm(self) -> bool:
        return self.component in (None, "llm")


@dataclass
class ServerProbe:
    """What one `GET /v1/models` found: for the load report, `doctor` and /health."""

    base_url: str
    reachable: bool = False
    models: list[ServedModel] = field(default_factory=list)
    round_trip_s: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["round_trip_ms"] = (
            None if self.round_trip_s is None else round(self.round_trip_s * 1000, 1)
        )
        return out


class _Server:
    """The HTTP side: one connection pool, requests with retries, errors in plain words."""

    def __init__(self, settings: Settings, max_connections: int | None = None) -> None:
        self.base_url = settings.llm_base_url
        self.timeout_s = settings.llm_timeout_s
        self.max_retries = settings.llm_max_retries
        headers = (
            {"Authorization": f"Bearer {settings.llm_api_key}"} if settings.llm_api_key else {}
        )
        connections = max_connections or settings.llm_concurrency + 2
        self.http = httpx.Client(
            base_url=self.base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(
                settings.llm_timeout_s, connect=min(CONNECT_TIMEOUT_S, settings.llm_timeout_s)
            ),
            limits=httpx.Limits(
                max_connections=connections,
                max_keepalive_connections=connections,
                keepalive_expiry=KEEPALIVE_S,
            ),
            trust_env=False,  # LLM_BASE_URL says where; no proxy from the environment
        )

    def close(self) -> None:
        self.http.close()

    # --- errors ---------------------------------------------------------------------------

    def transport_error(self, exc: httpx.HTTPError, *, streaming: bool = False) -> ServerError:
        where = self.base_url
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
            return ServerError(
                f"Cannot reach the LLM server at {where} ({detail}); is it running, and is "
                "LLM_BASE_URL right?",
                UNREACHABLE,
                retry=True,
            )
        if isinstance(exc, httpx.TimeoutException):
            return ServerError(
                f"The LLM server at {where} sent nothing for {self.timeout_s:g} s "
                "(LLM_TIMEOUT_S); it may be overloaded or stuck.",
                "the server stopped answering",
            )
        if streaming:
            return ServerError(
                f"The connection to the LLM server at {where} broke off mid-reply ({detail}).",
                "the connection to the server was lost",
            )
        # Closed before any answer (a server restarting, a keep-alive connection it had
        # just dropped): nothing was generated, so trying again is safe.
        return ServerError(
            f"The LLM server at {where} dropped the connection before answering ({detail}).",
            "the connection to the server was lost",
            retry=True,
        )

    def status_error(
        self, response: httpx.Response, path: str, model: str | None
    ) -> ServerError | BusyError | PromptTooLongError:
        status = response.status_code
        message = _error_message(response)
        where = self.base_url
        if status in (401, 403):
            return ServerError(
                f"The LLM server at {where} refused the API key (HTTP {status}: {message}); "
                "set LLM_API_KEY to a key it accepts.",
                "the server refused the API key",
            )
        if status == 404:
            if path == "models":
                return ServerError(
                    f"There is no OpenAI API at {where}/models (HTTP 404); LLM_BASE_URL must be "
                    "the API root, usually ending in /v1.",
                    "no OpenAI API at LLM_BASE_URL",
                )
            return ServerError(
                f"The LLM server at {where} does not serve the model {model!r} (HTTP 404: "
                f"{message}); set LLM_MODEL to one it lists at /v1/models.",
                "the server does not serve this model",
            )
        if status in RETRY_STATUSES:
            return BusyError(
                f"The LLM server at {where} is busy (HTTP {status}: {message}); try again shortly.",
                retry_after_s=_retry_after(response) or 1.0,
            )
        if status in (400, 413, 422) and "context" in message.lower():
            return PromptTooLongError(
                f"The conversation does not fit the LLM server's context: {message}"
            )
        kind = "refused the request" if status < 500 else "failed"
        return ServerError(
            f"The LLM server at {where} {kind} (HTTP {status}: {message}).",
            f"the server answered HTTP {status}",
            status=status,
        )

    # --- requests -------------------------------------------------------------------------

    def send(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        stream: bool = False,
        retries: int | None = None,
        cancel: object | None = None,
        model: str | None = None,
    ) -> httpx.Response:
        """The response to one request, retrying what the server did not take.

        Retried with backoff: connection errors and connections dropped before any
        answer (nothing was generated), and 429/502/503/504 (the server did not start
        on it). A timeout waiting for the answer is not retried. Stops early on `cancel`.

        Raises:
            ServerError, BusyError, PromptTooLongError: the typed failure, in plain words.
        """
        tries = 1 + (self.max_retries if retries is None else retries)
        for n in range(tries):
            wait: float | None = None
            try:
                request = self.http.build_request(method, path, json=body)
                response = self.http.send(request, stream=stream)
            except httpx.HTTPError as exc:
                failed = self.transport_error(exc)
                if not failed.retry:
                    raise failed from exc
                error: Exception = failed
            else:
                if response.status_code < 400:
                    return response
                response.read()
                response.close()
                error = self.status_error(response, path, model)
                if response.status_code not in RETRY_STATUSES:
                    raise error
                wait = _retry_after(response)
                if wait is not None and wait > MAX_RETRY_AFTER_S:
                    raise error
            if n + 1 >= tries:
                raise error
            delay = wait if wait is not None else backoff_s(n)
            log.warning("%s; retrying in %.1f s (%d of %d)", error, delay, n + 1, tries - 1)
            if _sleep(delay, cancel):
                raise error
        raise AssertionError("unreachable")  # the loop returns or raises

    def probe(self, *, retries: int = 0) -> ServerProbe:
        """`GET /models`: reachable, what it serves and the round trip (never raises)."""
        found = ServerProbe(self.base_url)
        try:
            found.models, found.round_trip_s = self.models(retries=retries)
            found.reachable = True
        except ServerError as exc:
            found.error = str(exc)
            found.reachable = exc.reason != UNREACHABLE
        return found

    def models(self, *, retries: int = 0) -> tuple[list[ServedModel], float]:
        """`GET /models`: the served models and the round trip in seconds.

        Raises:
            ServerError: unreachable, refused, or not an OpenAI API (`retry` says
                whether trying again may help: a busy or unreachable server).
        """
        t0 = time.perf_counter()
        try:
            response = self.send("GET", "models", retries=retries)
        except BusyError as exc:
            raise ServerError(str(exc), "the server is busy", retry=True) from exc
        except PromptTooLongError as exc:  # not from /models; keeps the types exact
            raise ServerError(str(exc), "the server refused") from exc
        round_trip = time.perf_counter() - t0
        try:
            return served_models(response), round_trip
        finally:
            response.close()


def backoff_s(retry: int) -> float:
    """Pause before retry number `retry` + 1: 0.5 s, 1 s, 2 s ... at most 8 s, less up to 25 %."""
    return min(BACKOFF_S * 2.0**retry, MAX_BACKOFF_S) * (1 - 0.25 * random.random())


def served_models(response: httpx.Response) -> list[ServedModel]:
    """The entries of a /v1/models answer."""
    try:
        data = response.json().get("data")
    except (ValueError, AttributeError):
        data = None
    if not isinstance(data, list):
        raise ServerError(
            f"{response.url} did not answer with OpenAI's model list; is LLM_BASE_URL an "
            "OpenAI-compatible API root (ending in /v1)?",
            "no OpenAI API at LLM_BASE_URL",
        )
    return [ServedModel.from_entry(e) for e in data if isinstance(e, dict) and e.get("id")]


def probe(settings: Settings | None = None) -> ServerProbe:
    """One look at the LLM server (for `doctor`): reachable, served models, round trip."""
    server = _Server(settings or get_settings(), max_connections=1)
    try:
        return server.probe()
    finally:
        server.close()


def choose_served_model(
    wanted: str | None, served: Sequence[ServedModel], base_url: str
) -> ServedModel:
    """The served model to use: `wanted` (LLM_MODEL) when the server lists it, else its first LLM.

    Raises:
        ServerError: `wanted` is not served (the message lists what is), or no LLM is.
    """
    names = ", ".join(repr(m.id) for m in served) or "nothing"
    if wanted:
        match = next((m for m in served if m.id == wanted), None)
        if match is None:
            raise ServerError(
                f"LLM_MODEL={wanted!r} is not served by {base_url}; it serves {names}. "
                "Set LLM_MODEL to one of them (or unset it for the server's first LLM).",
                "the server does not serve this model",
            )
        if not match.is_llm:
            raise ServerError(
                f"LLM_MODEL={wanted!r} is the {match.component} model of {base_url}, not an "
                f"LLM; it serves {names}.",
                "the model named is not an LLM",
            )
        return match
    llms = [m for m in served if m.is_llm]
    if not llms:
        raise ServerError(
            f"The server at {base_url} serves no LLM (it lists {names}).",
            "the server serves no LLM",
        )
    return llms[0]


def estimate_tokens(messages: Sequence[ChatMessage]) -> int:
    """The prompt tokens of `messages` (with the calls they carry), estimated from their length."""
    chars = sum(
        len(m["content"]) + (len(json.dumps(m["tool_calls"])) if m.get("tool_calls") else 0)
        for m in messages
    )
    return math.ceil(chars / CHARS_PER_TOKEN + TOKENS_PER_MESSAGE * len(messages))


def fit_by_estimate(
    messages: list[ChatMessage],
    max_new_tokens: int,
    context_length: int,
    reserved_tokens: int = 0,
) -> tuple[list[ChatMessage], int]:
    """Drop the oldest turns until the estimated prompt plus `max_new_tokens` fits.

    Same rules as the embedded engine's `fit_to_context` (never a system message,
    never the latest turn), counting `CHARS_PER_TOKEN` instead of the tokenizer.
    `reserved_tokens` is prompt the messages do not hold (the tools' schemas).

    Returns:
        (the messages kept, how many were dropped).

    Raises:
        PromptTooLongError: the latest turn alone does not fit.
    """
    budget = context_length - max_new_tokens - reserved_tokens
    if estimate_tokens(messages) <= budget:
        return messages, 0
    starts = _turn_starts(messages)
    for k in range(1, len(starts)):
        kept = _drop_turns(messages, starts, k)
        if estimate_tokens(kept) <= budget:
            return kept, len(messages) - len(kept)
    alone = estimate_tokens(_drop_turns(messages, starts, len(starts) - 1))
    raise PromptTooLongError(
        f"The message needs about {alone} tokens and the reply up to {max_new_tokens} more, "
        f"but the LLM server's context holds {context_length} tokens, even after dropping the "
        "earlier conversation. Send a shorter message or lower max_new_tokens."
    )


class OpenAICompatLLM:
    """`LLMEngine` on an OpenAI-compatible server (`LLM_BACKEND=openai`).

    Args:
        settings: LLM_BASE_URL, LLM_API_KEY, LLM_MODEL, LLM_TIMEOUT_S, LLM_MAX_RETRIES,
            LLM_CONCURRENCY; default `get_settings()`.
        system_prompt: used when a request brings none (default: the embedded engine's).
        progress: called as `progress(fraction, message)` while loading.

    Raises:
        ModelLoadError: every try failed or was skipped; `.report` says why (server down,
            wrong key, a model it does not serve, with the names it does).
    """

    backend = "openai"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        system_prompt: str | None = None,
        progress: Callable[[float, str], None] | None = None,
    ) -> None:
        from voice_agent.llm.engine import DEFAULT_SYSTEM_PROMPT

        self.settings = settings or get_settings()
        self.system_prompt = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
        self.base_url = self.settings.llm_base_url
        self.server = _Server(self.settings)
        self.report = LoadReport(
            "llm",
            self.settings.llm_model or f"the LLM served at {self.base_url}",
            source=self.base_url,
        )
        self.model_id = self.settings.llm_model or "?"
        self.context_length = DEFAULT_CONTEXT
        # The server batches: this many replies stream at once (the LLM gate's slots).
        self.capabilities = LLMCapabilities(
            streaming=True, cancel=True, tools=True, concurrency=self.settings.llm_concurrency
        )
        # Why the server would not take tools, once it did not (replies then go without).
        self.tools_refused: str | None = None
        self.probed: ServerProbe | None = None
        self.last_error: str | None = None
        self.last_ok_at: float | None = None
        report_progress = progress or (lambda fraction, message: None)
        report_progress(0.0, f"asking the LLM server at {self.base_url} what it serves")
        tries = 1 + self.settings.llm_max_retries
        stopped: list[str] = []  # why trying again will not help (a wrong key, model, ...)

        def step(n: int) -> Strategy[ServedModel]:
            def load() -> ServedModel:
                if n:
                    delay = backoff_s(n - 1)
                    report_progress(n / tries, f"retrying in {delay:.1f} s ({n} of {tries - 1})")
                    time.sleep(delay)
                try:
                    return self._connect()
                except Exception as exc:
                    if not (isinstance(exc, ServerError) and exc.retry):
                        stopped.append(explain_error(exc))
                    raise

            def unavailable() -> str | None:
                return f"not retried: {stopped[0]}" if stopped else None

            return Strategy(
                "openai" if n == 0 else f"openai-retry-{n}",
                self.base_url,
                "-",
                load,
                unavailable=unavailable,
            )

        try:
            chosen = run_chain(self.report, [step(n) for n in range(tries)])
        except ModelLoadError as exc:
            self.server.close()
            if not stopped:  # only unreachable or busy: it may come up, so say how to tell
                settings = self.settings
                exc.recheck = lambda: probe(settings).reachable
            raise
        except BaseException:
            self.server.close()
            raise
        self.model_id = chosen.id
        self.report.model_ref = chosen.id
        if chosen.context_length:
            self.context_length = chosen.context_length
        else:
            self.report.notes.append(
                f"the server does not say its context length; assuming {DEFAULT_CONTEXT} "
                "tokens for trimming the history"
            )
        report_progress(1.0, self.report.summary())

    def _connect(self) -> ServedModel:
        """One look at the server; the model to use, with notes for the load report."""
        found = ServerProbe(self.base_url)
        self.probed = found
        found.models, found.round_trip_s = self.server.models()
        found.reachable = True
        chosen = choose_served_model(self.settings.llm_model, found.models, self.base_url)
        rtt = found.round_trip_s * 1000
        context = f"{chosen.context_length} tokens" if chosen.context_length else "not stated"
        self.report.notes.append(
            f"served by {self.base_url}: model {chosen.id!r}, reachable, round trip "
            f"{rtt:.1f} ms (GET /models), context {context}; the server lists "
            + ", ".join(m.id for m in found.models)
        )
        if not self.settings.llm_model:
            self.report.notes.append(
                f"LLM_MODEL is unset: using {chosen.id!r}, the first LLM the server lists."
            )
        self.last_ok_at = time.time()
        return chosen

    # --- facts ----------------------------------------------------------------------------

    def server_status(self) -> dict[str, Any]:
        """Where the LLM runs and how the last contact went (for /health and Diagnostics).

        From the load's probe and the replies since; asks the server nothing.
        """
        probed = self.probed
        return {
            "base_url": self.base_url,
            "model": self.model_id,
            "reachable": self.last_error is None,
            "round_trip_ms": None
            if probed is None or probed.round_trip_s is None
            else round(probed.round_trip_s * 1000, 1),
            "last_ok_at": self.last_ok_at,
            "last_error": self.last_error,
            "tools_refused": self.tools_refused,
        }

    def describe(self) -> dict[str, object]:
        return {
            "model_id": self.model_id,
            "backend": self.backend,
            "context_length": self.context_length,
            "server": self.server_status(),
            "report": self.report.as_dict(),
        }

    def close(self) -> None:
        self.server.close()

    # --- chatting -------------------------------------------------------------------------

    def generate_reply(
        self,
        messages: list[ChatMessage] | str,
        settings: GenerationSettings | None = None,
        cancel: object | None = None,
        system_prompt: str | None = None,
        *,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: str = "auto",
    ) -> Reply:
        """Answer `messages` and return the whole reply (see `stream_reply`)."""
        return self.stream_reply(
            messages, settings, cancel, system_prompt, tools=tools, tool_choice=tool_choice
        ).collect()

    def stream_reply(
        self,
        messages: list[ChatMessage] | str,
        settings: GenerationSettings | None = None,
        cancel: object | None = None,
        system_prompt: str | None = None,
        *,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: str = "auto",
    ) -> ReplyStream:
        """Stream the server's reply to `messages`, piece by piece.

        `tools` and `tool_choice` go to the server in OpenAI's shape (checked first,
        like the embedded engine's; `"none"` sends no tools); the calls it makes end
        the reply with `finish_reason` "tool_calls" and `Reply.tool_calls`, and the
        pieces carry only what the model says. Assistant messages with `tool_calls`
        and `tool` results in `messages` are sent as OpenAI's API takes them.

        Bad input raises here (the same `InputError`s as the embedded engine); the
        request starts on a worker at once. Server trouble is raised from the
        iteration as `ServerError` (down, key, model, timeout, connection lost) or
        `BusyError` (still busy after the retries). Cancelling, or closing the
        iterator, hangs up; the reply then ends "cancelled" with the words so far.
        """
        start = time.perf_counter()
        gen = settings or GenerationSettings()
        check_generation_settings(gen, self.context_length)
        specs = check_tools(tools, tool_choice)
        if tool_choice == "none" or self.tools_refused is not None:
            specs = []
        has_system = isinstance(messages, list) and any(
            isinstance(m, Mapping) and m.get("role") == "system" for m in messages
        )
        if system_prompt is None and not has_system:
            system_prompt = self.system_prompt
        checked = normalize_messages(messages, system_prompt, self.settings.max_text_chars)
        tools_tokens = math.ceil(len(json.dumps(specs)) / CHARS_PER_TOKEN) if specs else 0
        kept, dropped = fit_by_estimate(
            checked, gen.max_new_tokens, self.context_length, tools_tokens
        )
        if dropped:
            log.info("dropped %d old messages to fit the server's context", dropped)
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": wire_messages(kept),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": gen.max_new_tokens,
            "temperature": gen.temperature,
            "top_p": gen.top_p,
        }
        if gen.stop:
            body["stop"] = list(gen.stop)
        if gen.seed is not None:
            body["seed"] = gen.seed
        if specs:
            body["tools"] = specs
            if tool_choice != "auto":  # the default with tools; a server that lacks it is spared
                body["tool_choice"] = wire_tool_choice(tool_choice)
        call = _Call(self, body, cancel)
        stream = ReplyStream(iter(()))
        stream.pieces = self._pieces(stream, call, gen, dropped, kept, start)
        # A stream dropped unread never runs its generator's cleanup: hang up then.
        weakref.finalize(stream, call.hang_up)
        call.start()
        return stream

    def _pieces(
        self,
        stream: ReplyStream,
        call: _Call,
        gen: GenerationSettings,
        dropped: int,
        kept: list[ChatMessage],
        start: float,
    ) -> Iterator[str]:
        text: list[str] = []
        first: float | None = None
        end: _End | None = None
        try:
            while True:
                try:
                    item = call.out.get(timeout=POLL_S)
                except queue.Empty:
                    if is_cancelled(call.cancel):
                        break
                    continue
                if isinstance(item, _End):
                    end = item
                    break
                if first is None:
                    first = time.perf_counter() - start
                text.append(item)
                yield item
        finally:
            if end is None:
                call.hang_up()  # cancelled, or the reader of this iterator went away
        if end is not None and end.error is not None and not is_cancelled(call.cancel):
            error = end.error
            if isinstance(error, httpx.HTTPError):
                error = self.server.transport_error(error, streaming=True)
            self.last_error = str(error)
            raise error
        if end is not None and end.error is None:
            self.last_error, self.last_ok_at = None, time.time()
        usage = end.usage if end is not None else {}
        # A reply cancelled mid-call keeps no call (it was never finished).
        calls = end.calls.calls() if end is not None and end.error is None else []
        if end is None or end.error is not None:
            reason = "cancelled"
        elif calls:
            reason = "tool_calls"
        elif end.finish == "length":
            reason = "length"
        else:
            reason = "stop"
        prompt_estimate = estimate_tokens(kept)
        stream.reply = Reply(
            text="".join(text),
            finish_reason=reason,  # type: ignore[arg-type]
            prompt_tokens=int(usage.get("prompt_tokens") or prompt_estimate),
            completion_tokens=int(usage.get("completion_tokens") or len(text)),
            seconds=time.perf_counter() - start,
            first_token_seconds=first,
            trimmed_messages=dropped,
            tool_calls=calls,
        )

    def refuse_tools(self, why: str) -> None:
        """The server would not take tools: from now on replies go without them.

        The engine then declares no `tools` capability, so the agent stops offering them.
        """
        if self.tools_refused is not None:
            return
        self.tools_refused = why
        self.capabilities = replace(self.capabilities, tools=False)
        self.report.notes.append(f"the server refused tools, so replies go without them: {why}")
        log.warning("the LLM server refused tools; replying without them: %s", why)


@dataclass
class _End:
    """Queue marker: the reply ended (`finish` from the server, or `error`)."""

    finish: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    calls: ToolCallParts = field(default_factory=ToolCallParts)


class _Call:
    """One streamed chat completion, read on a worker thread into `out`."""

    def __init__(self, llm: OpenAICompatLLM, body: dict[str, Any], cancel: object | None) -> None:
        self.llm = llm
        self.body = body
        self.cancel = cancel
        self.out: queue.Queue[str | _End] = queue.Queue()
        self.stopped = threading.Event()
        self._response: httpx.Response | None = None
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, name="llm-openai-reader", daemon=True)

    def start(self) -> None:
        if is_cancelled(self.cancel):
            self.stopped.set()
            self.out.put(_End())
        else:
            self.thread.start()

    def hang_up(self) -> None:
        """Stop reading and close the connection now, so the server stops generating.

        Shutting the socket down wakes the reader even while it waits for the next
        piece; closing the response alone would not until a piece arrived.
        """
        self.stopped.set()
        with self._lock:
            response = self._response
        if response is None:
            return
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed
                pass

    def _stop(self) -> bool:
        return self.stopped.is_set() or is_cancelled(self.cancel)

    def _post(self) -> httpx.Response:
        return self.llm.server.send(
            "POST",
            "chat/completions",
            body=self.body,
            stream=True,
            cancel=self.stopped,
            model=self.body["model"],
        )

    def _send(self) -> httpx.Response:
        """The streamed response; asked again without tools when the server refuses them."""
        try:
            return self._post()
        except ServerError as exc:
            if "tools" not in self.body or not refuses_tools(exc) or self._stop():
                raise
            refused = str(exc)
        self.body = {k: v for k, v in self.body.items() if k not in ("tools", "tool_choice")}
        response = self._post()
        self.llm.refuse_tools(refused)  # taken without them: it was the tools it refused
        return response

    def _read(self) -> None:
        end = _End()
        try:
            response = self._send()
            with self._lock:
                self._response = response
            try:
                if self._stop():
                    return
                if _is_json(response):  # a server that answers `"stream": true` with one body
                    self._whole(response, end)
                else:
                    for line in response.iter_lines():
                        if self._stop():
                            return
                        if self._line(line, end):
                            break
            finally:
                response.close()  # unread: the connection closes, and the server stops
            if end.finish is None and not self._stop():
                raise ServerError(
                    f"The LLM server at {self.llm.base_url} ended the reply without finishing "
                    "it (no finish_reason and no [DONE]).",
                    "the connection to the server was lost",
                )
        except BaseException as exc:  # handed to the reader of the stream, who raises it
            if not self._stop():
                end.error = exc
        finally:
            self.out.put(end)

    def _line(self, line: str, end: _End) -> bool:
        """Handle one SSE line; True at `[DONE]`."""
        if not line.startswith("data:"):
            return False
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return True
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            log.warning("the LLM server sent an event that is not JSON: %.200s", data)
            return False
        if not isinstance(event, dict):
            return False
        if "error" in event:
            error = event["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise ServerError(
                f"The LLM server at {self.llm.base_url} failed mid-reply: {message}",
                "the server failed mid-reply",
            )
        if isinstance(event.get("usage"), dict):
            end.usage = event["usage"]
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                self.out.put(delta["content"])
            end.calls.add(delta.get("tool_calls"))
            if choice.get("finish_reason"):
                end.finish = str(choice["finish_reason"])
        return False

    def _whole(self, response: httpx.Response, end: _End) -> None:
        """A whole (non-streamed) chat completion: its text as one piece, its calls, its end."""
        try:
            completion = json.loads(response.read())
            choice = completion["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise ServerError(
                f"The LLM server at {self.llm.base_url} did not answer with a chat completion.",
                "the server's answer could not be read",
            ) from None
        if isinstance(message.get("content"), str) and message["content"]:
            self.out.put(message["content"])
        end.calls.add(message.get("tool_calls"))
        if isinstance(completion.get("usage"), dict):
            end.usage = completion["usage"]
        end.finish = str(choice.get("finish_reason") or "stop")


def refuses_tools(error: ServerError) -> bool:
    """Whether a refused request was refused for its tools (the server's words say so).

    vLLM without `--enable-auto-tool-choice`, llama.cpp without `--jinja` and Ollama
    for a model without tool support answer 400 naming the tools.
    """
    return error.status in (400, 422) and "tool" in str(error).lower()


def _is_json(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").split(";")[0].strip() == "application/json"


def _error_message(response: httpx.Response) -> str:
    """The server's error message (OpenAI's shape, FastAPI's `detail`, or the text)."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
        if isinstance(error, str):
            return error[:300]
        if body.get("detail"):
            return str(body["detail"])[:300]
        if body.get("message"):
            return str(body["message"])[:300]
    try:
        text = response.text.strip()
    except httpx.ResponseNotRead:
        text = ""
    return text[:300] or response.reason_phrase or "no message"


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def _sleep(seconds: float, cancel: object | None) -> bool:
    """Sleep, waking early on `cancel`; True when cancelled."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if is_cancelled(cancel):
            return True
        time.sleep(min(left, POLL_S))
    return is_cancelled(cancel)
