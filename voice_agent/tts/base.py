"""Types shared by the TTS engine, its backends and callers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from voice_agent.core.loading import LoadReport
from voice_agent.tts.text.chunking import PHRASES, SENTENCES, Phrasing

# (mono float32 audio, sample rate) -> [(word, start_s, end_s), ...]: how a voice
# prefix learns where its words are (the app passes its Whisper engine).
WordTimer = Callable[[np.ndarray, int], Sequence[Any]]


@dataclass(frozen=True)
class Voice:
    id: str
    name: str
    description: str = ""


@dataclass
class AudioChunk:
    """A piece of speech: float32 mono samples in [-1, 1] at `sample_rate`."""

    sample_rate: int
    samples: np.ndarray
    text: str = ""  # the text this chunk speaks, when known
    final: bool = False


@dataclass(frozen=True)
class TTSCapabilities:
    """What a TTS engine can do, declared by the engine when it is built (never probed).

    Attributes:
        sample_rate: Hz of the audio it returns.
        streaming_text_in: it takes text while the text is still being written and
            speaks it phrase by phrase (Dia2); False: a whole sentence at a time.
        streaming_audio_out: audio comes in chunks while one piece is still being
            spoken; False: one chunk per piece of text.
        voices: it offers voices beyond "default" (`voices()` lists what is there now).
        word_timer: it aligns voice prefixes with word timings from the STT, given
            through `set_word_timer` (Dia2).
    """

    sample_rate: int
    streaming_text_in: bool = False
    streaming_audio_out: bool = False
    voices: bool = False
    word_timer: bool = False

    @property
    def phrasing(self) -> Phrasing:
        """How the engine cuts streamed text when the caller does not say."""
        return PHRASES if self.streaming_text_in else SENTENCES

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class TTSEngine(Protocol):
    """What the agent, the server and the UI need from a TTS engine."""

    backend: str  # "dia2" | "dia" | "vits" | "remote" (for people; decide from `capabilities`)
    model_id: str
    sample_rate: int
    report: LoadReport
    capabilities: TTSCapabilities

    def synthesize(self, text: str, voice: str | None = None) -> tuple[int, np.ndarray]: ...

    def stream(
        self,
        text: str | Iterable[str],
        voice: str | None = None,
        cancel: object | None = None,
        *,
        phrasing: Phrasing | None = None,
    ) -> Iterator[AudioChunk]:
        """Speak text that may still be arriving; `phrasing` says where streamed text is cut
        (default `capabilities.phrasing`)."""
        ...

    def voices(self) -> list[Voice]: ...

    def set_word_timer(self, timer: WordTimer | None) -> None:
        """Word timings for voice prefixes; called only when `capabilities.word_timer`."""
        ...
