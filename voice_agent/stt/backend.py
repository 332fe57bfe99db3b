"""What every recogniser runtime behind `WhisperSTT` implements, and what they share.

A runtime (transformers' manual Whisper `generate`, transformers' pipeline,
CTranslate2, Moonshine) is loaded by one strategy of the engine's loading chain
and then only decodes: the engine does the audio intake, the speech gate,
language checks, locking and timing once for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from voice_agent.audio.io import SAMPLE_RATE

StrategyKind = Literal["ctranslate2", "manual", "pipeline", "moonshine"]
STRATEGY_KINDS: tuple[StrategyKind, ...] = ("ctranslate2", "manual", "pipeline", "moonshine")
CHUNK_SECONDS = 30  # Whisper's window; longer audio is decoded window by window


@dataclass
class Decoded:
    """What a backend returns for one clip."""

    text: str
    language: str | None
    words: list[tuple[str, float, float]] = field(default_factory=list)
    tokens: int = 0  # generated tokens (manual and ctranslate2 backends; 0 when unknown)


class Backend(Protocol):
    """A loaded recogniser: the manual Whisper model, a transformers pipeline, CTranslate2
    or Moonshine.

    Attributes:
        kind: the strategy kind that loaded it.
        multilingual: it takes a language; False for English-only models.
        timestamps: `decode(words=True)` gives word timings (alignment heads, or a CTC
            model's frames); Moonshine has neither.
    """

    kind: StrategyKind
    multilingual: bool
    timestamps: bool

    def detect_language(self, samples: np.ndarray) -> str | None: ...

    def decode(
        self,
        samples: np.ndarray,
        *,
        language: str | None,
        words: bool = False,
        generate_kwargs: dict[str, Any] | None = None,
    ) -> Decoded: ...


def decode_windows(
    decode: Callable[..., Decoded],
    samples: np.ndarray,
    *,
    window_s: int = CHUNK_SECONDS,
    **kwargs: Any,
) -> Decoded:
    """`decode` run on each `window_s` window of `samples` (16 kHz), joined: the text, and the
    word timings shifted to their window's place."""
    window = window_s * SAMPLE_RATE
    parts = [decode(samples[i : i + window], **kwargs) for i in range(0, samples.shape[0], window)]
    merged = [
        (w, s + n * window_s, e + n * window_s)
        for n, part in enumerate(parts)
        for (w, s, e) in part.words
    ]
    text = " ".join(p.text for p in parts if p.text)
    return Decoded(text, parts[0].language, merged, tokens=sum(p.tokens for p in parts))


def language_tokens(generation_config: Any) -> dict[int, str]:
    """Token id -> language code, from a multilingual generation config."""
    table = getattr(generation_config, "lang_to_id", None) or {}
    return {int(i): token.strip("<|>") for token, i in table.items()}


def is_multilingual(generation_config: Any) -> bool:
    """Whether a Whisper generation config takes language and task tokens."""
    flag = getattr(generation_config, "is_multilingual", None)
    has_languages = bool(getattr(generation_config, "lang_to_id", None))
    return has_languages if flag is None else bool(flag) and has_languages


def group_words(
    tokenizer: Any, tokens: list[int], times: list[float]
) -> list[tuple[str, float, float]]:
    """Group text tokens into words; a token starting with a space starts a word.

    `times[i]` is when token i starts (cross-attention alignment, DTW); a word
    ends where its last token's successor starts. Tokens from `<|endoftext|>` up
    (prompt, special and timestamp tokens) are skipped.
    """
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    words: list[tuple[str, float, float]] = []
    current: list[int] = []
    start = 0.0
    for i, token in enumerate(tokens):
        if token >= eot:
            continue
        piece = tokenizer.decode([token])
        if current and piece.startswith(" "):
            end = times[i] if i < len(times) else times[-1]
            words.append((tokenizer.decode(current).strip(), start, max(end, start)))
            current = []
        if not current:
            start = float(times[i]) if i < len(times) else float(times[-1])
        current.append(token)
    if current:
        end = float(times[-1])
        words.append((tokenizer.decode(current).strip(), start, max(end, start)))
    return [(w, round(s, 2), round(e, 2)) for (w, s, e) in words if w]
