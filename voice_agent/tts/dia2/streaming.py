"""Streaming in and out: `TextFeed` (words arriving from the LLM) and `Dia2Stream` (audio chunks).

Audio out: frame f is final once step `f + max_delay - 1` has run, so the
first 1920-sample chunk comes after `max_delay` steps (18 for the 2B model)
and then one chunk per step, decoded by `MimiStreamDecoder`.

Text in: `TextFeed.append` takes text in any pieces; a word is used once the
whitespace after it has arrived. The model needs the next word plus two more
(the second text stream looks two words ahead). If the model wants a word
that has not arrived, the step waits up to `text_wait_s` for it; if it is
still missing, the step is held as a pad and generation goes on. So when text
arrives too slowly the model keeps padding: audible as a pause or a held
sound, and past 6 pads in a row outside what it was trained on. While the
feed is open the stream never ends on its own (only `close()`, cancel or the
context cap end it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import numpy as np

from voice_agent.core.cancel import is_cancelled
from voice_agent.tts.dia2.script import ScriptParser
from voice_agent.tts.dia2.state_machine import TextState

if TYPE_CHECKING:
    from voice_agent.tts.dia2.generation_config import Dia2GenerationConfig
    from voice_agent.tts.dia2.generator import Generation
    from voice_agent.tts.dia2.mimi_stream import MimiStreamDecoder
    from voice_agent.tts.dia2.result import Dia2Result


class StreamRuntime(Protocol):
    """What `Dia2Stream` needs from the runtime (`Dia2Runtime` provides it)."""

    samples_per_frame: int

    def stream_decoder(self) -> MimiStreamDecoder: ...

    def timestamps(
        self, gen: Generation, config: Dia2GenerationConfig
    ) -> list[tuple[str, float]]: ...

    def finish(
        self,
        gen: Generation,
        config: Dia2GenerationConfig,
        audio: np.ndarray,
        words_total: int | None,
    ) -> Dia2Result: ...


class TextFeed:
    """Thread-safe text source for `Dia2Runtime.stream`: `append(text)` pieces, then `close()`."""

    def __init__(self, text: str = "") -> None:
        self._cond = threading.Condition()
        self._pieces: list[str] = [text] if text else []
        self._closed = False

    def append(self, text: str) -> None:
        """Add text (any piece: a word, half a word, several sentences)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("TextFeed.append after close()")
            self._pieces.append(text)
            self._cond.notify_all()

    def close(self) -> None:
        """The reply is complete; the speech ends after the last word."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def take(self, timeout: float = 0.0) -> tuple[str, bool]:
        """Return (new text, closed), waiting up to `timeout` s when there is neither."""
        with self._cond:
            if not self._pieces and not self._closed and timeout > 0:
                self._cond.wait(timeout)
            text = "".join(self._pieces)
            self._pieces.clear()
            return text, self._closed


class Dia2Stream(Iterator[np.ndarray]):
    """Iterator of float32 24 kHz chunks (1920 samples per step once frames are final).

    After exhaustion `result` holds the `Dia2Result` (audio = the streamed
    chunks). `first_audio_steps` / `first_audio_s` record when the first chunk
    came out; `timestamps` grows as words start.
    """

    def __init__(
        self,
        runtime: StreamRuntime,
        generation: Generation,
        config: Dia2GenerationConfig,
        *,
        parser: ScriptParser | None = None,
        feed: TextFeed | None = None,
        cancel: object | None = None,
        words_total: int | None = None,
    ) -> None:
        self.runtime, self.generation, self.config = runtime, generation, config
        self.parser, self.feed, self.cancel = parser, feed, cancel
        self.words_total = words_total
        self.decoder = runtime.stream_decoder()
        self.next_frame = generation.crop
        self.chunks: list[np.ndarray] = []
        self.first_audio_steps: int | None = None
        self.first_audio_s: float | None = None
        self.result: Dia2Result | None = None
        self._started = time.perf_counter()
        self._pending: list[np.ndarray] = []
        self._finished = False
        if feed is not None:
            generation.on_text_needed = self._wait_for_text
            self._pull(0.0)

    @property
    def timestamps(self) -> list[tuple[str, float]]:
        return self.runtime.timestamps(self.generation, self.config)

    def __iter__(self) -> Dia2Stream:
        return self

    def __next__(self) -> np.ndarray:
        while not self._pending:
            if self._finished:
                raise StopIteration
            self._advance()
        return self._pending.pop(0)

    def _advance(self) -> None:
        gen = self.generation
        if is_cancelled(self.cancel):
            gen.cancel()
        if self.feed is not None:
            self._pull(0.0)
        if not gen.step():
            self._emit(gen.final_frames())
            self._finished = True
            self.result = self.runtime.finish(
                gen,
                self.config,
                np.concatenate(self.chunks or [np.zeros(0, np.float32)]),
                self.words_total,
            )
            return
        self._emit(gen.final_frames())

    def _emit(self, final: int) -> None:
        if final <= self.next_frame:
            return
        codes = self.generation.aligned(self.next_frame, final)
        audio = self.decoder.decode(codes).float().cpu().numpy()
        self.next_frame = final
        if self.first_audio_steps is None:
            self.first_audio_steps = self.generation.steps_run
            self.first_audio_s = time.perf_counter() - self._started
        spf = self.runtime.samples_per_frame
        for i in range(0, len(audio), spf):
            chunk = audio[i : i + spf]
            self.chunks.append(chunk)
            self._pending.append(chunk)

    # -- text in ----------------------------------------------------------------------------

    def _pull(self, timeout: float) -> None:
        """Move new text from the feed into the generation's queue."""
        state = self.generation.text
        if state.closed or self.feed is None or self.parser is None:
            return
        text, closed = self.feed.take(timeout)
        if text:
            state.entries.extend(self.parser.feed(text))
        if closed:
            state.entries.extend(self.parser.close())
            self.words_total = self.parser.words
            state.closed = True

    def _wait_for_text(self, state: TextState) -> None:
        deadline = time.perf_counter() + self.config.text_wait_s
        machine = self.generation.machine
        while machine.lacks_text(state) and not is_cancelled(self.cancel):
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._pull(min(left, 0.05))
