"""Fakes and helpers for the REST tests: engines that implement the stage Protocols, a
`LoadedModels` stand-in, `settings_with`, and the checks the REST test modules share
(`assert_error`, `sse_events`, `tone_wav`, `wait_for`). The live server is
`voice_agent.testing.server.LiveServer`.

The fakes are slow on purpose when asked (`delay_s`) so tests can fill queues and
disconnect mid-stream; they record what they saw (cancellations, concurrency).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import numpy as np

from voice_agent.audio.io import encode_wav
from voice_agent.core.cancel import is_cancelled
from voice_agent.core.config import Settings, load_settings
from voice_agent.core.errors import InputError, ModelUnavailableError
from voice_agent.core.loading import Attempt, LoadReport
from voice_agent.llm.base import (
    ChatMessage,
    GenerationSettings,
    LLMCapabilities,
    Reply,
    ReplyStream,
)
from voice_agent.llm.tool_calls import with_tool_calls
from voice_agent.pipeline.admission import engine_gates
from voice_agent.stt.base import STTCapabilities, Transcript
from voice_agent.tts.base import AudioChunk, TTSCapabilities, Voice
from voice_agent.tts.text.chunking import Phrasing

# The API key of the `keyed_fakes` / `keyed_server` fixtures (tests/conftest.py).
API_KEY = "test-key-0123456789abcdef"


def _report(component: str, model_id: str) -> LoadReport:
    report = LoadReport(component=component, model_ref=model_id, source="fake")
    report.attempts.append(Attempt("fake", "cpu", "float32", None, "chosen", seconds=0.01))
    return report


class _Activity:
    """Counts concurrent calls so tests can check one request at a time per engine."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self.cancelled = 0

    def __enter__(self) -> None:
        with self.lock:
            self.active += 1
            self.calls += 1
            self.max_active = max(self.max_active, self.active)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.active -= 1


class FakeLLM(_Activity):
    """Replies 'echo: <last user message>' one word per piece, `delay_s` per piece.

    Given tools, it calls the first one (or the one `tool_choice` names) with
    `{"text": <last user message>}`, written as Qwen2.5 writes a call and parsed by the
    real parser; after a tool result it replies 'result: <the result>'.
    """

    model_id = "fake-llm"
    context_length = 512
    capabilities = LLMCapabilities(streaming=True, cancel=True, tools=True)

    def __init__(self, delay_s: float = 0.0, words: int | None = None) -> None:
        super().__init__()
        self.report = _report("llm", self.model_id)
        self.delay_s = delay_s
        self.words = words  # None: echo the message; N: produce N words
        self.last_settings: GenerationSettings | None = None
        self.last_system_prompt: str | None = None
        self.last_messages: list[ChatMessage] | str | None = None
        self.last_tools: list | None = None
        self.last_tool_choice = "auto"

    def _pieces(self, messages: list[ChatMessage] | str, settings: GenerationSettings) -> list[str]:
        if isinstance(messages, str):
            text = messages
        else:
            users = [m["content"] for m in messages if m["role"] == "user"]
            if not users:
                raise InputError("no user message")
            text = users[-1]
        words = ["echo:", *text.split()] if self.words is None else ["w"] * self.words
        return [w + " " for w in words][: settings.max_new_tokens]

    def _tool_pieces(self, messages: list[ChatMessage], tools: list, tool_choice: str) -> list[str]:
        if messages[-1]["role"] == "tool":
            return ["result: ", messages[-1]["content"]]
        names = [t["function"]["name"] for t in tools]
        name = tool_choice if tool_choice in names else names[0]
        text = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        call = json.dumps({"name": name, "arguments": {"text": text}})
        return ["Calling. ", "<tool", "_call>\n", call, "\n</tool_call>"]

    def stream_reply(
        self,
        messages: list[ChatMessage] | str,
        settings: GenerationSettings | None = None,
        cancel: object | None = None,
        system_prompt: str | None = None,
        *,
        tools: list | None = None,
        tool_choice: str = "auto",
    ) -> ReplyStream:
        settings = settings or GenerationSettings()
        self.last_settings, self.last_system_prompt = settings, system_prompt
        self.last_messages = messages
        self.last_tools, self.last_tool_choice = tools, tool_choice
        use_tools = bool(tools) and tool_choice != "none" and not isinstance(messages, str)
        if use_tools:
            pieces = self._tool_pieces(messages, tools, tool_choice)  # type: ignore[arg-type]
        else:
            pieces = self._pieces(messages, settings)
        stream = ReplyStream(iter(()))

        def run() -> Iterator[str]:
            out: list[str] = []
            finish = "length" if len(pieces) == settings.max_new_tokens else "stop"
            with self:
                try:
                    for piece in pieces:
                        if is_cancelled(cancel):
                            finish = "cancelled"
                            break
                        time.sleep(self.delay_s)
                        out.append(piece)
                        yield piece
                finally:
                    # Stopped by the token, or closed by the caller before the end.
                    if len(out) < len(pieces):
                        with self.lock:
                            self.cancelled += 1
            stream.reply = Reply(
                "".join(out), finish, prompt_tokens=7, completion_tokens=len(out), seconds=0.01
            )

        stream.pieces = run()
        if use_tools:
            with_tool_calls(stream)
        return stream

    def generate_reply(
        self,
        messages: list[ChatMessage] | str,
        settings: GenerationSettings | None = None,
        cancel: object | None = None,
        system_prompt: str | None = None,
        *,
        tools: list | None = None,
        tool_choice: str = "auto",
    ) -> Reply:
        return self.stream_reply(
            messages, settings, cancel, system_prompt, tools=tools, tool_choice=tool_choice
        ).collect()


class FakeSTT(_Activity):
    """Transcribes anything to 'fake transcript' after `delay_s`."""

    model_id = "fake-whisper"
    sample_rate = 16_000
    capabilities = STTCapabilities(languages=("en",), timestamps=False)

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.report = _report("stt", self.model_id)
        self.delay_s = delay_s

    def transcribe(self, audio: Any, language: str | None = None) -> Transcript:
        rate, samples = audio
        with self:
            time.sleep(self.delay_s)
        return Transcript(
            text="fake transcript",
            language=language or "en",
            duration_s=len(samples) / rate,
            seconds=self.delay_s,
        )


class FakeTTS(_Activity):
    """A 440 Hz tone, `chunks` chunks of 0.1 s, `delay_s` per chunk; voices default + narrator."""

    backend = "fake"
    model_id = "fake-tts"
    sample_rate = 16_000
    capabilities = TTSCapabilities(sample_rate=16_000, streaming_audio_out=True, voices=True)

    def __init__(self, delay_s: float = 0.0, chunks: int = 3) -> None:
        super().__init__()
        self.report = _report("tts", self.model_id)
        self.delay_s = delay_s
        self.chunks = chunks
        self.last_voice: str | None = "unset"

    def voices(self) -> list[Voice]:
        return [Voice("default", "Default"), Voice("narrator", "Narrator", "slow and calm")]

    def _tone(self) -> np.ndarray:
        t = np.arange(self.sample_rate // 10) / self.sample_rate
        return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)

    def synthesize(self, text: str, voice: str | None = None) -> tuple[int, np.ndarray]:
        chunks = list(self.stream(text, voice))
        return self.sample_rate, np.concatenate([c.samples for c in chunks])

    def stream(
        self,
        text: str | Iterable[str],
        voice: str | None = None,
        cancel: object | None = None,
        *,
        phrasing: Phrasing | None = None,
    ) -> Iterator[AudioChunk]:
        if voice not in (None, "default", "narrator"):
            raise InputError(f"unknown voice {voice!r}")
        self.last_voice = voice
        done = 0
        with self:
            try:
                for i in range(self.chunks):
                    if is_cancelled(cancel):
                        return
                    time.sleep(self.delay_s)
                    yield AudioChunk(self.sample_rate, self._tone(), final=i == self.chunks - 1)
                    done += 1
            finally:
                if done < self.chunks:  # stopped by the token or closed by the caller
                    with self.lock:
                        self.cancelled += 1


class FakeModels:
    """Stand-in for `voice_agent.pipeline.models.LoadedModels` with the same attributes."""

    def __init__(
        self,
        settings: Settings | None = None,
        llm: Any = None,
        stt: Any = None,
        tts: Any = None,
        status: dict[str, str] | None = None,
        errors: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings or load_settings({})
        self.llm = llm if llm is not None else FakeLLM()
        self.stt = stt if stt is not None else FakeSTT()
        self.tts = tts if tts is not None else FakeTTS()
        self.reports = {c: getattr(self, c).report for c in ("llm", "stt", "tts")}
        self.status = status or {"llm": "ready", "stt": "ready", "tts": "ready"}
        self.errors = errors or {}
        self.gates = engine_gates(self.settings.server_queue_size)

    def require(self, component: str) -> Any:
        if self.status.get(component) != "ready":
            raise ModelUnavailableError(
                f"the {component} model is not available: {self.errors.get(component)}"
            )
        return getattr(self, component)

    def ready(self) -> bool:
        return all(s == "ready" for s in self.status.values())

    def recoverable(self, component: str) -> bool:
        return False

    def recover_failed(self) -> list[str]:
        return []

    def wait(self, timeout: float | None = None) -> bool:
        return self.ready()


def settings_with(**env: str) -> Settings:
    """Settings from defaults plus the given variables (e.g. MODEL_SERVER_QUEUE_SIZE="4")."""
    return load_settings(env)


# --- checks shared by the REST test modules -------------------------------------------------------


def tone_wav(seconds: float = 1.0, rate: int = 16_000) -> bytes:
    """A 300 Hz tone as a 16-bit WAV file."""
    t = np.arange(int(seconds * rate)) / rate
    return encode_wav(rate, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))


def assert_error(response: httpx.Response, status: int, *words: str) -> dict:
    """The response is OpenAI's error JSON with `status` and a message naming `words`."""
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"]
    assert set(error) >= {"message", "type", "code"}
    assert "Traceback" not in response.text
    for word in words:
        assert word.lower() in error["message"].lower(), error["message"]
    return error


def sse_events(response: httpx.Response) -> list:
    """The `data:` payloads of a server-sent event stream (JSON, or the bare [DONE])."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
