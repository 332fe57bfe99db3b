"""Fakes implementing the stage Protocols (`LLMEngine`, `STTEngine`, `TTSEngine`).

They let orchestration tests pin the order of events without timing: the fake
LLM can hold back its last piece until the fake TTS has produced audio, which
only happens when the pipeline really streams text into the TTS.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

import numpy as np

from voice_agent.core.cancel import is_cancelled
from voice_agent.core.errors import InputError
from voice_agent.core.loading import Attempt, LoadReport
from voice_agent.llm.base import (
    ChatMessage,
    GenerationSettings,
    LLMCapabilities,
    Reply,
    ReplyStream,
    ToolSpec,
)
from voice_agent.llm.tool_calls import with_tool_calls
from voice_agent.stt.base import AudioInput, STTCapabilities, Transcript
from voice_agent.tts.base import AudioChunk, TTSCapabilities, Voice
from voice_agent.tts.text.chunking import Phrasing

REPLY = "Hello there. It is sunny today. Have a lovely afternoon."


def _report(component: str, model_id: str) -> LoadReport:
    return LoadReport(
        component,
        model_id,
        attempts=[Attempt("fake", "cpu", "float32", None, "chosen", seconds=0.0)],
    )


class FakeLLM:
    """Streams a fixed reply word by word; honours cancel once per piece.

    Args:
        reply: the text every call answers with.
        step_s: pause before each piece (simulated token time).
        hold_last_until: an event the last piece waits for (at most `hold_timeout_s`).
        fail_after: raise RuntimeError after this many pieces.
        script: the model's output call by call (the last one repeats), tool calls
            written as the model writes them (`<tool_call>{...}</tool_call>`); it then
            declares `capabilities.tools` and parses them like the real engine.
    """

    model_id = "fake-llm"
    context_length = 4096
    capabilities = LLMCapabilities(streaming=True, cancel=True)

    def __init__(
        self,
        reply: str = REPLY,
        *,
        step_s: float = 0.0,
        hold_last_until: threading.Event | None = None,
        hold_timeout_s: float = 3.0,
        fail_after: int | None = None,
        wait_for_cancel: bool = False,
        script: Sequence[str] | None = None,
    ) -> None:
        self.reply = reply
        self.script = list(script or [])
        if script is not None:
            self.capabilities = replace(self.capabilities, tools=True)
        self.step_s = step_s
        self.hold_last_until = hold_last_until
        self.hold_timeout_s = hold_timeout_s
        self.fail_after = fail_after
        self.wait_for_cancel = wait_for_cancel
        self.report = _report("llm", self.model_id)
        self.calls: list[dict] = []
        self.emitted: list[str] = []
        self.cancelled = False
        self.started = threading.Event()

    def pieces(self, text: str | None = None) -> list[str]:
        words = (self.reply if text is None else text).split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]

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
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        self.calls.append(
            {
                "messages": [dict(m) for m in messages],
                "settings": settings,
                "system_prompt": system_prompt,
                "tools": list(tools or []),
                "tool_choice": tool_choice,
            }
        )
        text = None
        if self.script:
            text = self.script[min(len(self.calls), len(self.script)) - 1]
        stream = ReplyStream(pieces=iter(()))
        stream.pieces = self._run(stream, cancel, text)
        if tools:
            with_tool_calls(stream)
        return stream

    def _run(self, stream: ReplyStream, cancel: object | None, text: str | None) -> Iterator[str]:
        self.started.set()
        t0 = time.perf_counter()
        out: list[str] = []
        pieces = self.pieces(text)
        finish = "stop"
        for i, piece in enumerate(pieces):
            if self.fail_after is not None and i >= self.fail_after:
                raise RuntimeError("fake LLM crashed")
            if self.wait_for_cancel and i == 2:
                # Block mid-reply until someone cancels (barge-in tests).
                while not is_cancelled(cancel) and time.perf_counter() - t0 < 5:
                    time.sleep(0.005)
            if self.hold_last_until is not None and i == len(pieces) - 1:
                self.hold_last_until.wait(self.hold_timeout_s)
            if self.step_s:
                time.sleep(self.step_s)
            if is_cancelled(cancel):
                self.cancelled = True
                finish = "cancelled"
                break
            out.append(piece)
            self.emitted.append(piece)
            yield piece
        stream.reply = Reply(
            "".join(out), finish, completion_tokens=len(out), seconds=time.perf_counter() - t0
        )

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
        stream = self.stream_reply(
            messages, settings, cancel, system_prompt, tools=tools, tool_choice=tool_choice
        )
        for _ in stream:
            pass
        assert stream.reply is not None
        return stream.reply


class FakeSTT:
    """Returns a fixed transcript; silence (RMS under 1e-3) gives an empty one."""

    model_id = "fake-stt"
    sample_rate = 16_000
    capabilities = STTCapabilities(languages=("en",), timestamps=False)

    def __init__(self, text: str = "What is the weather like?") -> None:
        self.text = text
        self.report = _report("stt", self.model_id)
        self.calls = 0

    def transcribe(self, audio: AudioInput, language: str | None = None) -> Transcript:
        self.calls += 1
        if isinstance(audio, tuple):
            rate, samples = audio
        elif isinstance(audio, np.ndarray):
            rate, samples = self.sample_rate, audio
        else:
            raise InputError("the fake STT takes arrays only")
        samples = np.asarray(samples, dtype=np.float32)
        duration = len(samples) / rate
        if not samples.size or not np.isfinite(samples).all():
            raise InputError("audio is empty or not finite")
        speech = float(np.sqrt(np.mean(samples**2))) > 1e-3
        return Transcript(self.text if speech else "", "en", duration, 0.001, speech)


class MeasuringSTT(FakeSTT):
    """Says how much audio it heard ("heard 48000 samples"), so a transcript tells which
    audio it came from.

    Args:
        hold: each call waits until it is set (a transcription still running).
        fail: the first this many calls raise RuntimeError (an engine that fails).
    """

    def __init__(self, *, hold: threading.Event | None = None, fail: int = 0) -> None:
        super().__init__()
        self.hold = hold
        self.fail = fail
        self.heard: list[int] = []  # samples of each call, in order
        self.started = threading.Event()  # a call has begun
        self.begun = 0  # calls begun (`calls` counts those past `hold`)

    def transcribe(self, audio: AudioInput, language: str | None = None) -> Transcript:
        self.begun += 1
        self.started.set()
        if self.hold is not None:
            self.hold.wait(10)
        result = super().transcribe(audio, language)
        samples = audio[1] if isinstance(audio, tuple) else audio
        self.heard.append(len(samples))
        if self.calls <= self.fail:
            raise RuntimeError("the fake STT failed")
        if result.speech_detected:
            result.text = f"heard {len(samples)} samples"
        return result


class FakeTTS:
    """Speaks each complete sentence as one chunk (like the sentence-by-sentence backends).

    Args:
        audio_seen: set when the first chunk is produced.
        fail_after: raise RuntimeError after this many chunks.
    """

    backend = "fake"
    model_id = "fake-tts"
    sample_rate = 16_000
    # A sentence at a time, one chunk per sentence, like VITS.
    capabilities = TTSCapabilities(sample_rate=16_000)

    def __init__(
        self, *, audio_seen: threading.Event | None = None, fail_after: int | None = None
    ) -> None:
        self.audio_seen = audio_seen or threading.Event()
        self.fail_after = fail_after
        self.report = _report("tts", self.model_id)
        self.spoken: list[str] = []
        self.voices_used: list[str | None] = []
        self.phrasings: list[Phrasing | None] = []
        self.cancelled = False

    def _chunk(self, text: str) -> AudioChunk:
        n = 160 * max(1, len(text))
        samples = (0.1 * np.sin(np.arange(n) * 0.05)).astype(np.float32)
        return AudioChunk(self.sample_rate, samples, text=text)

    def synthesize(self, text: str, voice: str | None = None) -> tuple[int, np.ndarray]:
        return self.sample_rate, self._chunk(text).samples

    def stream(
        self,
        text: str | Iterable[str],
        voice: str | None = None,
        cancel: object | None = None,
        *,
        phrasing: Phrasing | None = None,
    ) -> Iterator[AudioChunk]:
        self.voices_used.append(voice)
        self.phrasings.append(phrasing)
        pieces = [text] if isinstance(text, str) else text
        buffer = ""
        produced = 0
        for piece in pieces:
            if is_cancelled(cancel):
                self.cancelled = True
                return
            buffer += piece
            while match := re.search(r"[.!?](?:\s|$)", buffer):
                sentence, buffer = buffer[: match.end()].strip(), buffer[match.end() :]
                if self.fail_after is not None and produced >= self.fail_after:
                    raise RuntimeError("fake TTS crashed")
                produced += 1
                self.spoken.append(sentence)
                yield self._chunk(sentence)
                # Set after the consumer took the chunk, so "audio seen" means delivered.
                self.audio_seen.set()
                if is_cancelled(cancel):
                    self.cancelled = True
                    return
        if buffer.strip() and not is_cancelled(cancel):
            if self.fail_after is not None and produced >= self.fail_after:
                raise RuntimeError("fake TTS crashed")
            self.spoken.append(buffer.strip())
            chunk = self._chunk(buffer.strip())
            chunk.final = True
            yield chunk
            self.audio_seen.set()

    def voices(self) -> list[Voice]:
        return [Voice("default", "Default")]


def fake_models(
    llm: object | None = None,
    stt: object | None = None,
    tts: object | None = None,
    *,
    missing: tuple[str, ...] = (),
):
    """A ready `LoadedModels` holding fakes (components in `missing` failed to load)."""
    from voice_agent.core.config import get_settings
    from voice_agent.pipeline.models import LoadedModels

    engines = {"llm": llm or FakeLLM(), "stt": stt or FakeSTT(), "tts": tts or FakeTTS()}

    def loader(component: str):
        def load(settings, progress):
            if component in missing:
                raise RuntimeError(f"{component} weights are missing (fake)")
            return engines[component]

        return load

    models = LoadedModels(
        get_settings(), loaders={c: loader(c) for c in ("llm", "stt", "tts")}, warmup=False
    )
    models.load_all()
    return models
