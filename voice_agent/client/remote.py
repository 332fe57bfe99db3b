"""Engine adapters that run the stages on a model server, over `VoiceAgentClient`.

`RemoteLLM`, `RemoteSTT` and `RemoteTTS` implement the stage Protocols over
the client, so the app can keep its models in a separate, long-running server
(a workstation keeps them loaded across app restarts). Each declares its
`capabilities` from what the server's /health says and what the wire allows.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from voice_agent.client.http import VoiceAgentClient, read_wav
from voice_agent.core.cancel import is_cancelled
from voice_agent.core.errors import InputError, ModelLoadError
from voice_agent.core.loading import Attempt, LoadReport
from voice_agent.llm.base import (
    ChatMessage,
    GenerationSettings,
    LLMCapabilities,
    Reply,
    ReplyStream,
    ToolSpec,
)
from voice_agent.stt.base import AudioInput, STTCapabilities, Transcript
from voice_agent.tts.base import AudioChunk, TTSCapabilities, Voice, WordTimer
from voice_agent.tts.text.chunking import SENTENCES, Phrasing, split_stream


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
    """`LLMEngine` over the REST API (`/generate`); cancelling closes the stream.

    It declares no `tools` capability (`/generate` carries none), so the agent's
    turns on a remote model answer without tools.
    """

    component = "llm"

    def __init__(self, client: VoiceAgentClient, wait_s: float = 0.0) -> None:
        super().__init__(client, wait_s)
        self.context_length: int = int(self.info.get("context_length") or 0)
        # The server streams /generate and stops when the stream is closed.
        self.capabilities = LLMCapabilities(streaming=True, cancel=True)

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
        if tools:
            raise InputError("the remote LLM adapter does not pass tools to the server")
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
        *,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: str = "auto",
    ) -> Reply:
        return self.stream_reply(messages, settings, cancel, system_prompt, tools=tools).collect()


class RemoteSTT(_Remote):
    """`STTEngine` over the REST API (`/stt`); arrays are sent as 16-bit WAV."""

    component = "stt"
    sample_rate = 16_000

    def __init__(self, client: VoiceAgentClient, wait_s: float = 0.0) -> None:
        super().__init__(client, wait_s)
        served = self.info.get("capabilities") or {}
        # /stt returns no word timings; the languages are the server's (unknown: empty).
        self.capabilities = STTCapabilities(
            languages=tuple(served.get("languages") or ()), timestamps=False
        )

    def transcribe(self, audio: AudioInput, language: str | None = None) -> Transcript:
        if isinstance(audio, str | Path | bytes):
            return self.client.transcribe(audio, language)
        from voice_agent.audio.io import decode_audio, encode_wav

        rate, samples = decode_audio(audio)
        return self.client.transcribe(encode_wav(rate, samples), language)


class RemoteTTS(_Remote):
    """`TTSEngine` over the REST API (`/tts`); streamed text is spoken sentence by sentence."""

    component = "tts"

    def __init__(self, client: VoiceAgentClient, wait_s: float = 0.0) -> None:
        super().__init__(client, wait_s)
        self.backend: str = str(self.info.get("backend") or "remote")
        self.sample_rate: int = int(self.info.get("sample_rate") or 16_000)
        served = self.info.get("capabilities") or {}
        # Text goes over /tts a sentence at a time, so it never streams in; audio
        # streams back; voice prefixes live on the server.
        self.capabilities = TTSCapabilities(
            sample_rate=self.sample_rate,
            streaming_text_in=False,
            streaming_audio_out=True,
            voices=bool(served.get("voices", True)),
            word_timer=False,
        )

    def synthesize(self, text: str, voice: str | None = None) -> tuple[int, np.ndarray]:
        return read_wav(self.client.synthesize_wav(text, voice))

    def stream(
        self,
        text: str | Iterable[str],
        voice: str | None = None,
        cancel: object | None = None,
        *,
        phrasing: Phrasing | None = None,
    ) -> Iterator[AudioChunk]:
        if isinstance(text, str):
            sentences: Iterable[str] = [text]
        else:
            sentences = split_stream(text, phrasing=phrasing or SENTENCES)
        for sentence in sentences:
            if is_cancelled(cancel):
                return
            if sentence.strip():
                yield from self.client._speech_chunks(sentence, voice, cancel)

    def voices(self) -> list[Voice]:
        return self.client.voices()

    def set_word_timer(self, timer: WordTimer | None) -> None:
        """Voice prefixes are timed on the server (`capabilities.word_timer` is False)."""


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
