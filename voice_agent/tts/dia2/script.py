"""Script text -> state-machine entries (one per word or break), batch or incremental.

Rules (those of the official runtime):

- `’` becomes `'` and `:` becomes a space; words are split on whitespace.
- `[S1]` / `[S2]` are not words: the next word is encoded as `"[S1] word"`
  (speaker token, then the word with a leading space). Other words are
  encoded alone, with no leading space.
- The script's first word always starts with the `[S1]` token: it is inserted
  when the word's tokens do not already start with it (so a script opening
  with `[S2]` gets `[S1][S2] word`, as in the official runtime).
- A word entry's padding is its token count (one pad per token follows it).
- `<break time="0.5s"/>` is a token-less entry with padding
  `round(seconds * 12.5)` steps (skipped when that is 0).

`ScriptParser.feed` accepts text in arbitrary pieces (LLM deltas): a word is
only emitted once whitespace or a break follows it, and an unclosed `<` is held
back until its `>` arrives, so piecewise parsing equals parsing the whole text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from voice_agent.tts.dia2.config import FRAME_RATE
from voice_agent.tts.dia2.errors import EmptyScriptError, NoSpeechError, UnknownTagError

BREAK = re.compile(r"<break\s+time=\"([0-9]+(?:\.[0-9]*)?)s\"\s*/?>")
EVENT = re.compile(BREAK.pattern + r"|\s+")
ANGLE_TAG = re.compile(r"<[^<>]*>")
BRACKET_TAG = re.compile(r"^\[[^\[\]]*\]$")
SPEAKER_TAGS = ("[S1]", "[S2]")


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True)
class Entry:
    """One unit of the state machine's input queue: a word, or a break when `tokens` is empty."""

    text: str
    tokens: tuple[int, ...]
    padding: int

    @property
    def is_word(self) -> bool:
        return bool(self.tokens)


def normalize(text: str) -> str:
    return text.replace("’", "'").replace(":", " ")


class ScriptParser:
    """Incremental script parser; `feed` pieces of text, then `close`."""

    def __init__(self, tokenizer: Tokenizer, spk1: int, frame_rate: float = FRAME_RATE):
        self.tokenizer = tokenizer
        self.spk1 = spk1
        self.frame_rate = frame_rate
        self.buffer = ""
        self.pending_speaker: str | None = None
        self.first_word = True
        self.words = 0
        self.saw_text = False
        self.closed = False

    def feed(self, text: str) -> list[Entry]:
        """Add text; return the entries that are now complete."""
        if self.closed:
            raise RuntimeError("ScriptParser.feed after close")
        self.buffer += normalize(text)
        if text.strip():
            self.saw_text = True
        return self._drain(final=False)

    def close(self) -> list[Entry]:
        """Flush the last word.

        Raises:
            EmptyScriptError: nothing but whitespace was fed.
            NoSpeechError: tags were fed but no word.
        """
        self.closed = True
        entries = self._drain(final=True)
        if not self.saw_text:
            raise EmptyScriptError("The script is empty; there is nothing to speak.")
        if self.words == 0:
            raise NoSpeechError(
                "The script has only tags ([S1], [S2], breaks) and no words to speak."
            )
        return entries

    def _drain(self, final: bool) -> list[Entry]:
        text = self.buffer
        limit = len(text)
        if not final:
            # Hold back an unclosed tag: its inner whitespace must not split words.
            open_at = text.rfind("<")
            if open_at != -1 and ">" not in text[open_at:]:
                limit = open_at
        for tag in ANGLE_TAG.finditer(text, 0, limit):
            if not BREAK.fullmatch(tag.group(0)):
                raise UnknownTagError(tag.group(0))
        entries: list[Entry] = []
        pos = 0
        for match in EVENT.finditer(text, 0, limit):
            if match.end() == limit and not final and match.group(1) is None:
                # Trailing whitespace: the word before it is complete, the run may grow.
                self._words(text[pos : match.start()], entries)
                pos = match.start()
                break
            self._words(text[pos : match.start()], entries)
            if match.group(1) is not None:
                padding = int(round(float(match.group(1)) * self.frame_rate))
                if padding > 0:
                    entries.append(Entry(text="", tokens=(), padding=padding))
            pos = match.end()
        else:
            if final:
                self._words(text[pos:], entries)
                pos = len(text)
        self.buffer = text[pos:]
        return entries

    def _words(self, segment: str, entries: list[Entry]) -> None:
        for word in segment.split():
            if word in SPEAKER_TAGS:
                self.pending_speaker = word
                continue
            if BRACKET_TAG.match(word):
                raise UnknownTagError(word)
            entries.append(self._word_entry(word))

    def _word_entry(self, word: str) -> Entry:
        if self.pending_speaker is not None:
            tokens = self.tokenizer.encode(
                f"{self.pending_speaker} {word}", add_special_tokens=False
            )
            self.pending_speaker = None
        else:
            tokens = self.tokenizer.encode(word, add_special_tokens=False)
        tokens = list(tokens)
        if self.first_word:
            if not tokens or tokens[0] != self.spk1:
                tokens.insert(0, self.spk1)
            self.first_word = False
        self.words += 1
        return Entry(text=word, tokens=tuple(tokens), padding=len(tokens))


def parse_script(
    text: str, tokenizer: Tokenizer, spk1: int, frame_rate: float = FRAME_RATE
) -> list[Entry]:
    """Parse a whole script (stripped, like the official runtime)."""
    parser = ScriptParser(tokenizer, spk1, frame_rate)
    entries = parser.feed(text.strip())
    return entries + parser.close()
