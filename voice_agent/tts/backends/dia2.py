"""Dia2 through our own runtime (`voice_agent.tts.dia2`): word-by-word streaming, voice prefixes.

The backend owns the script format: it adds the `[S1]` speaker tag (callers
pass plain speakable text) and keeps utterances inside the model's context
(`max_context_steps`, 2 minutes for the real models).

Voices:
- "default": Dia2 invents a voice per utterance, so the first reply that is
  long enough is kept as the voice prefix of every later one: the assistant
  keeps one voice across turns. A `default.wav` in the voices folder replaces it.
- every `NAME.wav` in `settings.tts_voices_dir`, with word timings from the
  word timer the app sets (`set_word_timer`, e.g. its Whisper engine), else
  from `NAME.txt` (the transcript, spread over the voiced part of the audio).
  Encoded prefixes are cached by the runtime (path, size, mtime).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from voice_agent.core.cancel import is_cancelled
from voice_agent.core.config import DEFAULT_DIA2, Settings
from voice_agent.tts.backends.base import UnknownVoiceError, WordTimer, resolve_checkpoint
from voice_agent.tts.base import Voice
from voice_agent.tts.text.chunking import fade_edges

log = logging.getLogger(__name__)

FRAME_RATE = 12.5  # Dia2 steps (Mimi frames) per second
CHARS_PER_SECOND = 13.0  # conversational English
# Share of the context a script may plan to use: the model's pace varies
# (up to 6 pads per word), so leave room.
CONTEXT_SHARE = 0.6
# The kept default voice: a few seconds, at most this share of the context.
LOCK_SECONDS = 5.0
LOCK_CONTEXT_SHARE = 0.3
LOCK_MIN_WORDS = 3
FLUSH_STEPS = 6  # steps after the last word on top of the largest delay
TAIL_MS = 10.0


def _timings_from_transcript(transcript: str) -> WordTimer:
    """A word timer for a recording whose words are known but not their times.

    Words are spread over the voiced part of the audio in proportion to their
    length: rough, but enough for the prefix's text stream to line up with
    the audio within a word or so.
    """
    words = transcript.split()

    def timer(audio: np.ndarray, sample_rate: int) -> list[tuple[str, float, float]]:
        hop = max(1, sample_rate // 50)
        frames = len(audio) // hop
        if frames == 0 or not words:
            return []
        rms = np.sqrt(np.mean(audio[: frames * hop].reshape(frames, hop) ** 2, axis=1))
        voiced = np.flatnonzero(rms > 0.1 * float(rms.max() or 1.0))
        start = voiced[0] * hop / sample_rate if voiced.size else 0.0
        end = (voiced[-1] + 1) * hop / sample_rate if voiced.size else len(audio) / sample_rate
        weights = np.array([len(w) + 1 for w in words], dtype=np.float64)
        edges = start + (end - start) * np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
        return [(w, float(edges[i]), float(edges[i + 1])) for i, w in enumerate(words)]

    return timer


class Dia2Backend:
    """A loaded Dia2 runtime plus the voice state of this process."""

    name: ClassVar[str] = "dia2"
    default_model: ClassVar[str] = DEFAULT_DIA2
    streams_text: ClassVar[bool] = True
    uses_word_timer: ClassVar[bool] = True
    offers_voices: ClassVar[bool] = True
    english_only = True

    def __init__(self, runtime, model_id: str, device: str, dtype: str, settings: Settings) -> None:
        self.runtime = runtime
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.settings = settings
        self.sample_rate = int(runtime.sample_rate)
        self.fast_path = str(getattr(runtime, "fast_path", "eager"))
        context = int(runtime.max_context_steps)
        self.lock_frames = int(min(LOCK_SECONDS * FRAME_RATE, LOCK_CONTEXT_SHARE * context))
        usable = context - self.lock_frames - int(runtime.max_delay) - FLUSH_STEPS - 2
        self.max_chars = max(20, int(usable / FRAME_RATE * CHARS_PER_SECOND * CONTEXT_SHARE))
        self.word_timer: WordTimer | None = None
        self._kept_voice = None  # Dia2Prefix of the first long-enough default-voice reply
        # One timer per transcript file (and its mtime): the runtime caches encoded prefixes
        # by timer identity, so a new timer each utterance would re-encode and grow the cache.
        self._transcript_timers: dict[Path, tuple[float, WordTimer]] = {}
        self._state_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model_ref: str | None = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        settings: Settings | None = None,
    ) -> Dia2Backend:
        """Load a Dia2 checkpoint: a hub id, a checkpoint folder, or a folder with
        `dia2/`, `tokenizer/` and `mimi/` (the tiny fixture's layout)."""
        from voice_agent.tts.dia2 import Dia2Runtime

        settings, ref, path = resolve_checkpoint(model_ref, cls.default_model, settings, ())
        model_dir = path / "dia2" if (path / "dia2" / "config.json").is_file() else path
        runtime = Dia2Runtime.from_pretrained(str(model_dir), device=device, dtype=dtype)
        return cls(runtime, ref, device, dtype, settings)

    # -- voices -----------------------------------------------------------------------------

    @property
    def kept_voice_seconds(self) -> float | None:
        """Length of the default voice kept from an earlier reply (None until one is kept)."""
        return None if self._kept_voice is None else float(self._kept_voice.seconds)

    def set_word_timer(self, timer: WordTimer | None) -> None:
        """Where prefix voices get their word timings (e.g. Whisper with word timestamps)."""
        self.word_timer = timer

    def _voice_files(self) -> dict[str, Path]:
        folder = self.settings.tts_voices_dir
        if not folder.is_dir():
            return {}
        return {p.stem: p for p in sorted(folder.glob("*.wav"))}

    def _timer_for(self, wav: Path) -> WordTimer | None:
        if self.word_timer is not None:
            return self.word_timer
        transcript = wav.with_suffix(".txt")
        if not transcript.is_file():
            return None
        mtime = transcript.stat().st_mtime
        cached = self._transcript_timers.get(transcript)
        if cached is None or cached[0] != mtime:
            timer = _timings_from_transcript(transcript.read_text(encoding="utf-8"))
            cached = self._transcript_timers[transcript] = (mtime, timer)
        return cached[1]

    def voices(self) -> list[Voice]:
        out = [Voice("default", "Default", "Dia2's voice, kept the same across turns")]
        for name, wav in self._voice_files().items():
            if name == "default":
                continue
            usable = self._timer_for(wav) is not None
            note = f"voice prefix {wav.name}" + (
                "" if usable else " (needs NAME.txt or a word timer to be used)"
            )
            out.append(Voice(name, name.replace("_", " ").title(), note))
        return out

    def _prefix(self, voice: str | None):
        """The Dia2Prefix for `voice`, or None to let the model choose."""
        files = self._voice_files()
        name = voice or "default"
        if name == "default" and "default" not in files:
            return self._kept_voice
        if name not in files:
            known = ", ".join(v.id for v in self.voices())
            raise UnknownVoiceError(f"Unknown voice {voice!r}; available: {known}.")
        timer = self._timer_for(files[name])
        if timer is None:
            raise UnknownVoiceError(
                f"Voice {name!r} needs its transcript in {files[name].with_suffix('.txt').name} "
                "(or a word timer set by the app) to be used as a prefix."
            )
        return self.runtime.prefix(files[name], word_timer=timer)

    def _keep_voice(self, voice: str | None, result) -> None:
        """Keep the first long-enough default-voice reply as the voice of later replies."""
        if (voice or "default") != "default" or result is None or self._kept_voice is not None:
            return
        if "default" in self._voice_files() or result.stopped_by == "cancelled":
            return
        limit = self.lock_frames / FRAME_RATE
        stamps = [(w, t) for w, t in result.timestamps if w]
        kept = [s for s in stamps if s[1] < limit - 0.4]
        if len(kept) < LOCK_MIN_WORDS:
            return
        end_s = stamps[len(kept)][1] if len(kept) < len(stamps) else min(result.duration_s, limit)
        clip = result.audio[: int(end_s * self.sample_rate)].astype(np.float32)
        timings = [
            (w, t, kept[i + 1][1] if i + 1 < len(kept) else end_s) for i, (w, t) in enumerate(kept)
        ]
        try:
            prefix = self.runtime.prefix_from_audio([clip], word_timer=lambda _a, _sr: timings)
        except Exception as exc:  # a voice we cannot keep is not worth failing a reply for
            log.warning("Could not keep the Dia2 voice for later turns: %s", exc)
            return
        with self._state_lock:
            if self._kept_voice is None:
                self._kept_voice = prefix
                log.info("Dia2 default voice kept from a %.1f s reply (%d words)", end_s, len(kept))

    def _with_kept_voice(self, config, voice: str | None):
        """Later utterances of the same reply use the voice kept from the first."""
        if (
            config.prefix is None
            and self._kept_voice is not None
            and voice in (None, "", "default")
        ):
            return replace(config, prefix=self._kept_voice)
        return config

    def _config(self, voice: str | None, *, streaming: bool = False):
        from voice_agent.tts.dia2 import Dia2GenerationConfig

        return Dia2GenerationConfig(
            prefix=self._prefix(voice),
            on_context_overflow="truncate" if streaming else "error",
        )

    # -- speech -----------------------------------------------------------------------------

    @staticmethod
    def script(text: str) -> str:
        """Plain text -> a Dia2 script: one speaker, no tags from the caller."""
        words = text.replace("[", " ").replace("]", " ").replace("<", " ").replace(">", " ")
        return "[S1] " + " ".join(words.split())

    def synthesize(self, text: str, voice: str | None = None) -> np.ndarray:
        """Speak `text`; a piece the context cannot hold is finished in a further utterance."""
        from voice_agent.tts.dia2 import ContextOverflowError

        config = self._config(voice)
        pending = deque([text])
        audio: list[np.ndarray] = []
        while pending:
            piece = pending.popleft()
            try:
                result = self.runtime.generate(self.script(piece), config)
            except ContextOverflowError as exc:
                if exc.words_spoken == 0 or not exc.unspoken_text:
                    raise
                if exc.result is None:  # refused before generating: split and retry
                    words = piece.split()
                    cut = len(words) - len(exc.unspoken_text.split())
                    pending.extendleft([" ".join(words[cut:]), " ".join(words[:cut])])
                    continue
                result = exc.result
                pending.appendleft(exc.unspoken_text)
            self._keep_voice(voice, result)
            config = self._with_kept_voice(config, voice)
            audio.append(fade_edges(result.audio, self.sample_rate))
        return np.concatenate(audio) if audio else np.zeros(0, np.float32)

    def stream_phrases(
        self, phrases: Iterable[str], voice: str | None = None, cancel: object | None = None
    ) -> Iterator[np.ndarray]:
        """Speak phrases while they arrive: the words go into the runtime's text feed.

        A reader thread moves phrases into `TextFeed`s; a feed is closed (and the
        next utterance begins) at a sentence end once it holds most of
        `max_chars`, so no utterance runs into the context cap.
        """
        from voice_agent.tts.dia2 import TextFeed

        config = self._config(voice, streaming=True)
        feeds: queue.Queue[object] = queue.Queue()
        stop = threading.Event()
        budget = self.max_chars

        def read() -> None:
            feed: TextFeed | None = None
            used = 0
            failure: BaseException | None = None
            try:
                for phrase in phrases:
                    if stop.is_set() or is_cancelled(cancel):
                        break
                    text = " ".join(self.script(phrase).split()[1:])
                    if not text:
                        continue
                    if feed is not None and used + len(text) > budget:
                        feed.close()
                        feed = None
                    if feed is None:
                        feed, used = TextFeed("[S1] "), 0
                        feeds.put(feed)
                    feed.append(text + " ")
                    used += len(text) + 1
                    if used >= budget * 0.6 and text.endswith((".", "!", "?")):
                        feed.close()
                        feed = None
            except BaseException as exc:  # handed to the consumer, raised there
                failure = exc
            finally:
                if feed is not None:
                    feed.close()
                feeds.put(failure)

        reader = threading.Thread(target=read, name="dia2-text-feed", daemon=True)
        reader.start()
        try:
            while True:
                item = feeds.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                stream = self.runtime.stream(item, config, cancel=cancel)
                last: np.ndarray | None = None
                for chunk in stream:
                    if last is None:
                        chunk = _fade_in(chunk, self.sample_rate)
                    last = chunk
                    yield chunk
                if last is not None and len(last):
                    yield _tail(float(last[-1]), self.sample_rate)
                result = stream.result
                if result is not None and result.stopped_by == "max_context":
                    log.warning(
                        "Dia2 ran into its context cap: %d of %d words spoken",
                        result.words_spoken,
                        result.words_total,
                    )
                self._keep_voice(voice, result)
                if is_cancelled(cancel):
                    break
                config = self._with_kept_voice(config, voice)
        finally:
            stop.set()


def _fade_in(chunk: np.ndarray, sample_rate: int) -> np.ndarray:
    n = min(len(chunk), int(sample_rate * TAIL_MS / 1000))
    out = chunk.astype(np.float32, copy=True)
    out[:n] *= np.linspace(0.0, 1.0, n, dtype=np.float32)
    return out


def _tail(last: float, sample_rate: int) -> np.ndarray:
    """A few ms from the last sample down to zero, so the next utterance starts clean."""
    n = int(sample_rate * TAIL_MS / 1000)
    return (last * np.linspace(1.0, 0.0, n + 1, dtype=np.float32)[1:]).astype(np.float32)
