"""Text in pieces a TTS backend can take, and audio pieces joined without clicks.

- `check_length` enforces `MAX_TEXT_CHARS` with a clear `InputTooLargeError`.
- `split_sentences` / `split_text`: sentence boundaries that know about
  abbreviations ("Dr. Smith"), decimals ("3.5") and code fences; pieces packed
  up to a backend's character limit, over-long sentences split at clauses,
  then at spaces.
- `TextSplitter` / `split_stream`: the incremental version for token streams,
  the one splitter every streamed reply goes through. A `Phrasing` says where it
  cuts: at sentence ends; in "phrase" mode (Dia2) also at clauses of a few words;
  any run of `max_words` words; and the first piece early (`first_phrase_words`,
  and before a word that opens a phrase), so speech starts before the reply is
  complete. With `growth`, a piece may be at most that factor longer than the one
  before it (up to `max_words`), so each piece is synthesized while the one before
  it plays.
- `fade_edges` / `join_audio`: short raised-cosine fades at each piece's edges,
  so back-to-back pieces meet at zero (no step, no click).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from voice_agent.core.errors import InputTooLargeError

FADE_MS = 8.0  # long enough to hide a step, short enough not to eat a consonant
SENTENCE_PAUSE_MS = 90.0  # the breath between two separately synthesized sentences
CLAUSE_PAUSE_MS = 40.0  # the shorter break after a comma when a sentence is spoken in phrases
# Words after which a period does not end a sentence.
ABBREVIATIONS = {
    "dr", "mr", "mrs", "ms", "prof", "st", "jr", "sr", "vs", "approx", "no", "fig", "inc", "ltd",
    "e.g", "i.e", "etc", "cf", "al", "mt", "ft", "jan", "feb", "mar", "apr", "jun", "jul", "aug",
    "sep", "sept", "oct", "nov", "dec", "u.s", "a.m", "p.m",
}  # fmt: skip
# These end a sentence when a capitalised word follows ("... at 5 p.m. Then ...").
SOFT_ABBREVIATIONS = {"etc", "a.m", "p.m", "u.s", "inc", "ltd"}
END = re.compile(r"[.!?]+[\"')\]*_]*(?=\s)|\n")
CLAUSE = re.compile(r"[,;:](?=\s)|\s[-–—]\s")
# The first phrase's comma as it arrives, before the space after it: after a letter it can
# only end a clause ("10,000" and "3,5" have digits), and the next token is ~0.15 s away.
FIRST_COMMA = re.compile(r"(?<=[^\W\d_]),$")
# Before a word that opens a new phrase ("It looks sunny | this afternoon", "closed | at
# ten"). The first phrase ends there the moment that word's first token arrives, two or
# three tokens before the comma or the 8th word; a later piece at its word limit goes back
# to one when it has no clause mark. The cut is at a space, so a word that only starts
# like one ("forecast") still leaves the phrase before it whole.
PHRASE_START = re.compile(
    r"(?=\s(?:with|and|but|or|so|because|since|although|though|which|who|when|where|while"
    r"|if|unless|until|after|before|this|these|in|on|at|for|from|during|then)(?:\W|$))"
)
FENCE = re.compile(r"```|~~~")
WHITESPACE = re.compile(r"\s+")
# The fewest whole words a hurried piece (`TextSplitter.hurry`) may have.
HURRY_MIN_WORDS = 2
# A run without spaces (Chinese, Japanese, or a random test model) counts this many
# characters as a word; generous, as an English word and its space average about 6.
CHARS_PER_WORD = 8
Mode = Literal["sentence", "phrase"]


@dataclass(frozen=True)
class Phrasing:
    """Where a stream of text is cut into pieces to speak. A word count of 0 turns its rule off.

    Attributes:
        mode: "sentence" cuts at sentence ends (and line breaks); "phrase" also cuts
            at clauses (, ; : and dashes) of `min_words` words or more, all along:
            Dia2 speaks word by word, so it should start early.
        min_words: the fewest words a clause needs to go out on its own.
        max_words: a run of this many words without a cut is cut there, so a
            run-on reply does not hold speech back.
        first_phrase_words: the first piece goes out after this many words, at its
            first clause of `min_words` words, or before a word that opens a phrase
            (`PHRASE_START`) after `min_words` words, without waiting for the sentence
            to end: the time to the first audio is what a listener notices most.
        growth: with `first_phrase_words`, a piece after the first is cut after
            `growth` times the previous piece's words (at least `later_min_words`, at
            most `max_words`), at its last clause, or else before its last word that
            opens a phrase, where it has one. A piece takes its length times the
            voice's real-time factor (RTF) to synthesize, so pieces that grow by at
            most 1 / RTF are ready before the one before them has played: no gap.
            0: off.
        later_min_words: with `growth`, the fewest words a later piece may run. The
            LLM writes the second piece while the first plays: after a 3-word first
            phrase ("It looks sunny"), 8 more words came 0.8-1.3 s too late on a
            2-core CPU (the voice bench), 5 are in time.
        hurry_s: when the audio made so far will have played out in less than this
            many seconds, the whole words waiting go to the voice at once
            (`TextSplitter.hurry`) instead of waiting for their rule's cut: a short
            piece now is better than silence. 0: off.
    """

    mode: Mode = "sentence"
    min_words: int = 3
    max_words: int = 0
    first_phrase_words: int = 0
    growth: float = 0.0
    later_min_words: int = 5
    hurry_s: float = 0.0

    def run_limit(self, made: int, last_words: int) -> int:
        """The most words piece number `made` (0: the first) may run without a cut (0: no limit),
        after a piece of `last_words` words."""
        if made == 0 and self.first_phrase_words:
            return self.first_phrase_words
        if self.growth and self.first_phrase_words:
            grown = max(self.later_min_words, math.ceil(last_words * self.growth))
            return min(grown, self.max_words) if self.max_words else grown
        return self.max_words

    @classmethod
    def of(cls, mode: Mode) -> Phrasing:
        """The standard phrasing of a mode: `SENTENCES` or `PHRASES`."""
        return PHRASES if mode == "phrase" else SENTENCES


SENTENCES = Phrasing()
PHRASES = Phrasing("phrase", max_words=10)


def check_length(text: str, limit: int) -> None:
    """Raise `InputTooLargeError` when `text` is longer than `limit` characters."""
    if len(text) > limit:
        raise InputTooLargeError(
            f"Text is {len(text):,} characters; the limit is {limit:,} (MAX_TEXT_CHARS). "
            "Send it in smaller parts."
        )


def _fence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each code fence block; an unclosed one runs to the end."""
    marks = [m.start() for m in FENCE.finditer(text)]
    spans = []
    for i in range(0, len(marks), 2):
        end = marks[i + 1] + 3 if i + 1 < len(marks) else len(text) + 1
        spans.append((marks[i], end))
    return spans


def _is_boundary(text: str, match: re.Match[str], final: bool) -> bool | None:
    """Whether `match` ends a sentence; None when the text after it has not arrived yet."""
    if match.group(0) == "\n":
        return True
    rest = text[match.end() :].lstrip()
    if not rest:
        return True if final else None
    if match.group(0).startswith(".") and len(match.group(0).rstrip("\"')]*_")) == 1:
        before = re.search(r"([A-Za-z][A-Za-z.]*)$", text[: match.start()])
        word = before.group(1).lower() if before else ""
        line_start = text.rfind("\n", 0, match.start()) + 1
        if re.fullmatch(r"\s*\d{1,3}", text[line_start : match.start()]):
            return False  # "1. " opens a list item
        if word in ABBREVIATIONS:
            return word in SOFT_ABBREVIATIONS and rest[0].isupper()
        if len(word) == 1 and word.isalpha() and text[match.start() - 1].isupper():
            return False  # an initial: "J. R. R. Tolkien"
    return True


def _cut_points(
    text: str, final: bool, phrasing: Phrasing, made: int, last_words: int = 0
) -> list[int]:
    """Offsets where complete sentences (or phrases) end, in order.

    Stops at the first sentence end it cannot decide yet (the next word has not
    arrived). `made`: pieces already released (`last_words`: words in the last
    one); while it is 0 and `phrasing.first_phrase_words` is set, the
    first-phrase rules apply.
    """
    first = made == 0 and phrasing.first_phrase_words > 0
    fences = _fence_spans(text)
    cuts: list[int] = []
    start = 0
    clauses = [*CLAUSE.finditer(text), *(FIRST_COMMA.finditer(text) if first else ())]
    breaks = PHRASE_START.finditer(text) if first else ()
    candidates = sorted(
        [(m, "end") for m in END.finditer(text)]
        + [(m, "clause") for m in clauses]
        + [(m, "break") for m in breaks],
        key=lambda item: item[0].end(),
    )

    def run_cut(end: int) -> int | None:
        last = (
            len(text[cuts[-2] if len(cuts) > 1 else 0 : cuts[-1]].split()) if cuts else last_words
        )
        limit = phrasing.run_limit(made + len(cuts), last)
        if not limit:
            return None
        at_clause = phrasing.growth > 0 and not first
        return _run_cut(
            text, start, end, limit, min(phrasing.min_words, limit), fences, at_clause=at_clause
        )

    i = 0
    while i < len(candidates):
        match, kind = candidates[i]
        # A word limit reached before this candidate cuts first (text order).
        run = run_cut(match.start()) if match.start() > start else None
        if run is not None:
            cuts.append(run)
            start, first = run, False
            continue
        i += 1
        pos = match.end()
        if pos <= start or any(a <= match.start() < b for a, b in fences):
            continue
        if kind == "end":
            decided = _is_boundary(text, match, final)
            if decided is None:
                break
            if not decided:
                continue
        elif kind == "break" and not first:
            continue  # only the first phrase ends before a word
        elif not (phrasing.mode == "phrase" or first) or not _phrase_ready(
            text[start:pos], phrasing.min_words
        ):
            continue
        cuts.append(pos)
        start, first = pos, False
    while (run := run_cut(len(text))) is not None:
        cuts.append(run)
        start, first = run, False
    return cuts


def _run_cut(
    text: str,
    start: int,
    end: int,
    limit: int,
    min_words: int,
    fences: list[tuple[int, int]],
    *,
    at_clause: bool = False,
) -> int | None:
    """Where `text[start:end]` reaches `limit` words without a cut, or None.

    The cut goes at the space after the `limit`-th word, once that space has
    arrived (`at_clause`: after the run's last clause mark instead, when `min_words`
    come before it); a stretch longer than `limit * CHARS_PER_WORD` characters is
    cut at its last space before that length (anywhere when it has none). Code
    fences are never cut.
    """
    if any(a < end and b > start for a, b in fences):
        return None
    segment = text[start:end]
    words = 0
    last = 0
    for space in WHITESPACE.finditer(segment):
        if segment[last : space.start()].strip():
            words += 1
        last = space.start()
        if words >= limit and _phrase_ready(segment[: space.start()], min_words):
            cut = _mark_cut(segment, space.start(), min_words) if at_clause else None
            return start + (space.start() if cut is None else cut)
    most = limit * CHARS_PER_WORD
    if len(segment) <= most:
        return None
    spaces = [
        m.start() for m in WHITESPACE.finditer(segment, 0, most) if segment[: m.start()].strip()
    ]
    return start + (spaces[-1] if spaces else most)


def _mark_cut(text: str, stop: int, min_words: int, upto: int | None = None) -> int | None:
    """Where `text` may be cut before `stop` (regex end position): after its last clause
    mark, else before its last word that opens a phrase, with `min_words` words before
    the cut and the cut at most at `upto`; None when there is neither."""
    for marks in (CLAUSE, PHRASE_START):
        cuts = [
            m.end()
            for m in marks.finditer(text, 0, stop)
            if (upto is None or m.end() <= upto) and _phrase_ready(text[: m.start()], min_words)
        ]
        if cuts:
            return cuts[-1]
    return None


def _phrase_ready(phrase: str, min_words: int) -> bool:
    """A clause can go out alone when it has a few words and no open bracket or quote."""
    if len(phrase.split()) < min_words:
        return False
    if phrase.count("(") > phrase.count(")") or phrase.count("[") > phrase.count("]"):
        return False
    last = re.search(r"([A-Za-z.]+)\W*$", phrase)
    return not (last and last.group(1).lower().rstrip(".") in ABBREVIATIONS)


def split_sentences(text: str) -> list[str]:
    """Sentences (and lines) of `text`, in order, whitespace-trimmed, empty ones dropped."""
    splitter = TextSplitter()
    return splitter.feed(text) + splitter.close()


def split_text(text: str, max_chars: int) -> list[str]:
    """Pieces of at most `max_chars` characters, cut at sentence boundaries where possible.

    Consecutive short sentences are packed together; a sentence longer than
    `max_chars` is cut at clause punctuation, then at spaces, then (a single
    word longer than the limit) anywhere.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    pieces: list[str] = []
    current = ""
    for sentence in split_sentences(text):
        for part in _split_long(sentence, max_chars):
            if current and len(current) + 1 + len(part) <= max_chars:
                current += " " + part
            else:
                if current:
                    pieces.append(current)
                current = part
    if current:
        pieces.append(current)
    return pieces


def _split_long(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    for pattern in (r"(?<=[,;:])\s+", r"\s+"):
        parts = [p for p in re.split(pattern, sentence) if p]
        if len(parts) > 1:
            out: list[str] = []
            current = ""
            for part in parts:
                if current and len(current) + 1 + len(part) <= max_chars:
                    current += " " + part
                else:
                    if current:
                        out.append(current)
                    current = part
            out.append(current)
            return [chunk for piece in out for chunk in _split_long(piece, max_chars)]
    return [sentence[i : i + max_chars] for i in range(0, len(sentence), max_chars)]


class TextSplitter:
    """Incremental splitter for streamed text (LLM tokens).

    `feed(piece)` returns the sentences completed so far; `close()` returns
    what is left. A sentence is released as soon as the character after its
    end has arrived (needed to tell "Dr. Smith" from "... the end. Then").

    Args:
        phrasing: where to cut (`SENTENCES`, `PHRASES` or your own `Phrasing`);
            a mode name stands for its standard phrasing.
    """

    def __init__(self, phrasing: Phrasing | Mode = SENTENCES) -> None:
        self.phrasing = Phrasing.of(phrasing) if isinstance(phrasing, str) else phrasing
        self._made = 0  # pieces released so far (the first-phrase and growth rules count them)
        self._last_words = 0  # words in the last piece released
        self._buffer = ""

    def feed(self, piece: str) -> list[str]:
        self._buffer += piece
        return self._release(final=False)

    def hurry(self) -> list[str]:
        """The listener is about to hear silence: the whole words waiting go now.

        Only after the first piece (the first phrase has its own rules), and only
        `HURRY_MIN_WORDS` or more whole words (the last word may still be arriving:
        the cut is at a space that has come). The cut is at the last clause mark,
        else before the last word that opens a phrase, else at the last space.
        """
        text = self._buffer
        if not self._last_words or FENCE.search(text):  # a piece has gone out; code is never cut
            return []
        spaces = [m.start() for m in WHITESPACE.finditer(text) if text[: m.start()].strip()]
        if not spaces or not _phrase_ready(text[: spaces[-1]], HURRY_MIN_WORDS):
            return []
        end = spaces[-1]
        cut = _mark_cut(text, end + 1, HURRY_MIN_WORDS, upto=end)
        if cut is None:
            cut = end
        piece = text[:cut].strip()
        self._buffer = text[cut:]
        self._made += 1
        self._last_words = len(piece.split())
        return [piece]

    def close(self) -> list[str]:
        out = self._release(final=True)
        rest = self._buffer.strip()
        self._buffer = ""
        return out + ([rest] if rest else [])

    def _release(self, final: bool) -> list[str]:
        cuts = _cut_points(self._buffer, final, self.phrasing, self._made, self._last_words)
        self._made += len(cuts)
        out: list[str] = []
        start = 0
        for cut in cuts:
            piece = self._buffer[start:cut].strip()
            if piece:
                out.append(piece)
                self._last_words = len(piece.split())
            start = cut
        self._buffer = self._buffer[start:]
        return out


def split_stream(
    pieces: Iterable[str],
    mode: Mode = "sentence",
    *,
    phrasing: Phrasing | None = None,
    running_dry: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """Sentences (or phrases) from an iterator of text pieces, each as soon as it is complete.

    `phrasing` (default: the standard one of `mode`) says where to cut. `running_dry`,
    asked after each piece that completed nothing, says the listener is about to hear
    silence: what waits then goes at once (`TextSplitter.hurry`).
    """
    splitter = TextSplitter(phrasing or mode)
    for piece in pieces:
        # "" is a feed's sign of life while no text comes: only the hurry can act on it.
        out = splitter.feed(piece) if piece else []
        if not out and running_dry is not None and running_dry():
            out = splitter.hurry()
        yield from out
    yield from splitter.close()


def fade_edges(samples: np.ndarray, sample_rate: int, fade_ms: float = FADE_MS) -> np.ndarray:
    """A float32 copy with raised-cosine fades in and out, so it starts and ends at zero."""
    out = np.asarray(samples, dtype=np.float32).copy()
    n = min(int(sample_rate * fade_ms / 1000), len(out) // 2)
    if n > 0:
        ramp = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n, dtype=np.float32))).astype(np.float32)
        out[:n] *= ramp
        out[-n:] *= ramp[::-1]
    return out


def silence(sample_rate: int, ms: float) -> np.ndarray:
    return np.zeros(int(sample_rate * ms / 1000), dtype=np.float32)


def join_audio(
    pieces: Iterable[np.ndarray],
    sample_rate: int,
    *,
    fade_ms: float = FADE_MS,
    pause_ms: float = SENTENCE_PAUSE_MS,
) -> np.ndarray:
    """Pieces back to back, each faded at its edges, with `pause_ms` of silence between."""
    out: list[np.ndarray] = []
    for piece in pieces:
        if len(piece) == 0:
            continue
        if out and pause_ms > 0:
            out.append(silence(sample_rate, pause_ms))
        out.append(fade_edges(piece, sample_rate, fade_ms))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
