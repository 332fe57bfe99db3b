"""Voice prefix: condition Dia2 on a speaker's recorded voice and its word timings.

A prefix is one or two recordings (speaker 1, optionally speaker 2), each
Mimi-encoded and transcribed with word start/end times by a caller-supplied
`WordTimer` (the app passes its Whisper engine). The words become
state-machine entries placed at their start frames, the codes are
teacher-forced through the model before generation (see `generator.py`), and
the prefix audio is cropped from the output.

Building a prefix costs one Mimi encode and one transcription per recording;
`Dia2Runtime.prefix()` caches the result by file path, size and mtime so a
voice is encoded once, not every turn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voice_agent.tts.dia2.config import FRAME_RATE, SAMPLE_RATE
from voice_agent.tts.dia2.errors import PrefixError
from voice_agent.tts.dia2.script import Entry, Tokenizer

# Speaker 1's word steps are shifted by 3 frames, as in the official runtime
# (its comment: "match legacy BOS/PAD offset"); speaker 2's by speaker 1's length.
SPEAKER1_OFFSET = 3

WordTiming = tuple[str, float, float]
# (mono float32 audio, sample rate) -> [(word, start_s, end_s), ...]; objects with
# .text/.word, .start and .end attributes (Whisper word records) are accepted too.
WordTimer = Callable[[np.ndarray, int], Sequence[Any]]


@dataclass(frozen=True)
class Dia2Prefix:
    """An encoded voice prefix, ready to pass as `Dia2GenerationConfig.prefix`.

    Attributes:
        codes: Mimi codes [Q, F] int64 of the recordings, speaker 1 then speaker 2.
        entries: one entry per transcribed word.
        new_word_steps: the warm-up step at which each word starts.
        words: the word timings used, per speaker (for diagnostics).
    """

    codes: np.ndarray
    entries: tuple[Entry, ...]
    new_word_steps: tuple[int, ...]
    words: tuple[tuple[WordTiming, ...], ...]

    @property
    def frames(self) -> int:
        return int(self.codes.shape[-1])

    @property
    def seconds(self) -> float:
        return self.frames / FRAME_RATE


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a recording as mono float32 at `sample_rate`."""
    import soundfile

    try:
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for bad files
        raise PrefixError(f"Cannot read voice prefix {path}: {exc}") from exc
    audio = audio.mean(axis=1)
    if rate != sample_rate:
        import soxr

        audio = soxr.resample(audio, rate, sample_rate).astype(np.float32)
    if audio.size == 0:
        raise PrefixError(f"Voice prefix {path} is empty.")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _as_timing(word: Any) -> WordTiming:
    if isinstance(word, tuple | list):
        text, start, end = word[:3]
    else:
        text = getattr(word, "text", None) or getattr(word, "word", "")
        start, end = word.start, word.end
    return str(text).strip(), float(start), float(end)


def words_to_entries(
    words: Sequence[WordTiming],
    tokenizer: Tokenizer,
    speaker_tag: str,
    frame_rate: float = FRAME_RATE,
) -> tuple[list[Entry], list[int]]:
    """Entries and new-word steps for one speaker's timed words.

    Each word starts at its rounded start frame (at least one frame after the
    previous word's tokens) and is padded up to the next word's start.
    """
    entries: list[Entry] = []
    steps: list[int] = []
    position = 0
    for i, (text, start, _end) in enumerate(words):
        spoken = f"{speaker_tag} {text}" if i == 0 else text
        tokens = tuple(tokenizer.encode(spoken, add_special_tokens=False))
        start_frame = max(position + 1, int(round(start * frame_rate)))
        end_frame = start_frame + len(tokens)
        steps.append(start_frame - 1)
        following = words[i + 1][1] if i + 1 < len(words) else words[-1][2]
        next_start = max(end_frame + 1, int(round(following * frame_rate)))
        entries.append(
            Entry(text=text, tokens=tokens, padding=max(0, next_start - start_frame - 1))
        )
        position = end_frame
    return entries, steps


def build_prefix(
    speakers: Sequence[np.ndarray],
    word_timer: WordTimer,
    *,
    tokenizer: Tokenizer,
    encode: Callable[[np.ndarray], np.ndarray],
    sample_rate: int = SAMPLE_RATE,
) -> Dia2Prefix:
    """Encode and transcribe 1 or 2 recordings into a `Dia2Prefix`.

    Args:
        speakers: mono float32 audio at `sample_rate`, speaker 1 first.
        word_timer: returns the timed words of one recording.
        tokenizer: the Dia2 tokenizer.
        encode: audio -> Mimi codes [Q, F].
    """
    if not 1 <= len(speakers) <= 2:
        raise PrefixError("A voice prefix has one or two recordings (speaker 1, then speaker 2).")
    entries: list[Entry] = []
    steps: list[int] = []
    codes: list[np.ndarray] = []
    all_words = []
    offset = SPEAKER1_OFFSET
    for index, audio in enumerate(speakers):
        words = tuple(w for w in (_as_timing(w) for w in word_timer(audio, sample_rate)) if w[0])
        if not words:
            raise PrefixError(f"No words were recognised in the speaker {index + 1} voice prefix.")
        speaker_entries, speaker_steps = words_to_entries(words, tokenizer, f"[S{index + 1}]")
        entries += speaker_entries
        steps += [step + offset for step in speaker_steps]
        speaker_codes = np.asarray(encode(audio), dtype=np.int64)
        codes.append(speaker_codes)
        all_words.append(words)
        offset = speaker_codes.shape[-1]
    return Dia2Prefix(
        codes=np.concatenate(codes, axis=-1),
        entries=tuple(entries),
        new_word_steps=tuple(steps),
        words=tuple(all_words),
    )
