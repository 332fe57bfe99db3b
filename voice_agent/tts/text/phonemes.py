"""English text -> IPA (gruut, MIT) -> a Piper voice's phoneme ids.

Piper voices are trained on espeak-ng's IPA, one id per symbol (code point) in
the voice's `phoneme_id_map`. gruut gives the same IPA alphabet from its own
lexicon and a CRF model for unknown words (no espeak, no GPL), so its phonemes
are split into code points and mapped; the few symbols where the two disagree
are rewritten (`ALIASES`). The id sequence is Piper's: BOS, pad, then every
phoneme followed by pad, then EOS.

    ids = PhonemeIds(config["phoneme_id_map"]).encode("Hello there.")
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PAD, BOS, EOS, WORD_GAP = "_", "^", "$", " "
# gruut symbol -> espeak-ng's spelling of it (Piper's maps hold the espeak form).
ALIASES = {"g": "ɡ", "r": "ɹ", "ʤ": "dʒ", "ʧ": "tʃ", "ɝ": "ɜː", "ɫ": "l", "ʦ": "ts"}
# gruut's break markers stand for the punctuation it read; Piper reads the punctuation.
BREAKS = {"|": ",", "‖": "."}
LANG = "en-us"
_lock = threading.Lock()  # one gruut processor and lexicon serve every caller


class PhonemizerUnavailableError(ImportError):
    """gruut or its English data (gruut-lang-en) is not installed."""


@lru_cache(maxsize=1)
def _processor() -> Any:
    """gruut's English text processor, one for the process, with its lexicon indexed.

    `gruut.sentences` keeps a processor per thread, and each opens the lexicon's
    sqlite file anew with an empty word cache; its table has no index on the word,
    so every word not yet cached is a scan of 135,000 rows (6-12 ms). Every turn
    speaks on a new thread, so every phrase paid 60-180 ms of lookups before its
    audio could start. Here one processor serves every thread (under `_lock`), and
    its lexicon is an in-memory copy of gruut's with an index on the word: a lookup
    costs microseconds and a word once seen stays cached.
    """
    try:
        from gruut import TextProcessor
        from gruut.lang import DelayedSqlitePhonemizer
        from gruut.phonemize import SqlitePhonemizer
    except ImportError as exc:
        raise PhonemizerUnavailableError(
            f"The Piper voice needs the gruut phonemizer ({exc}). Install: pip install "
            "'gruut==2.4.0' 'gruut-lang-en==2.0.1'"
        ) from exc
    processor = TextProcessor(default_lang=LANG)
    lookup = processor.get_settings(LANG).lookup_phonemes
    if not isinstance(lookup, DelayedSqlitePhonemizer) or not Path(lookup.db_path).is_file():
        raise PhonemizerUnavailableError(
            "gruut has no English lexicon (pip install 'gruut-lang-en==2.0.1')."
        )
    source = sqlite3.connect(f"file:{lookup.db_path}?mode=ro", uri=True)
    try:
        lexicon = sqlite3.connect(":memory:", check_same_thread=False)  # used under _lock
        source.backup(lexicon)
    finally:
        source.close()
    lexicon.execute("CREATE INDEX IF NOT EXISTS word_phonemes_word ON word_phonemes (word)")
    # gruut's lazy phonemizer connects on first use; hand it the indexed copy instead,
    # with gruut's own arguments (its fallbacks for case and punctuation).
    lookup.phonemizer = SqlitePhonemizer(db_conn=lexicon, **lookup.phonemizer_args)
    return processor


def phonemize(text: str) -> list[list[str]]:
    """IPA of `text`: a list of words, each a list of phonemes (punctuation as its own word)."""
    words: list[list[str]] = []
    with _lock:  # also makes the first callers build one processor, not one each
        processor = _processor()
        graph, root = processor(text, lang=LANG)
        for sentence in processor.sentences(graph, root):
            for word in sentence:
                if word.is_break:
                    words.append(
                        [
                            word.text
                            if word.text in ",.;:!?"
                            else BREAKS.get((word.phonemes or ["|"])[0], ",")
                        ]
                    )
                elif word.phonemes:
                    words.append(list(word.phonemes))
    return words


def _symbols(phoneme: str) -> Iterator[str]:
    phoneme = ALIASES.get(phoneme, phoneme)
    for ch in phoneme:
        yield ALIASES.get(ch, ch)


class PhonemeIds:
    """Maps IPA to one voice's ids (its `phoneme_id_map`)."""

    def __init__(self, id_map: Mapping[str, Sequence[int]]) -> None:
        missing = [s for s in (PAD, BOS, EOS) if s not in id_map]
        if missing:
            raise ValueError(f"phoneme_id_map lacks Piper's {', '.join(missing)} symbols")
        self.id_map = {k: list(v) for k, v in id_map.items()}
        self.unknown: set[str] = set()

    def ids(self, words: Sequence[Sequence[str]]) -> list[int]:
        """Piper's sequence for phonemized words: ^ _ (phoneme _)* $ ; words apart by " "."""
        pad = self.id_map[PAD]
        out = [*self.id_map[BOS], *pad]
        for i, word in enumerate(words):
            punctuation = len(word) == 1 and word[0] in ",.;:!?"
            if i and not punctuation and WORD_GAP in self.id_map:
                out += [*self.id_map[WORD_GAP], *pad]
            for phoneme in word:
                for symbol in _symbols(phoneme):
                    found = self.id_map.get(symbol)
                    if found is None:
                        if symbol not in self.unknown:
                            self.unknown.add(symbol)
                            log.debug("phoneme %r is not in this voice's map; skipped", symbol)
                        continue
                    out += [*found, *pad]
        out += self.id_map[EOS]
        return out

    def encode(self, text: str) -> list[int]:
        """Piper ids of English `text`."""
        return self.ids(phonemize(text))

    def spoken(self, ids: Sequence[int]) -> int:
        """How many ids in `ids` are phonemes (not BOS, EOS, pad or word gaps)."""
        frame = {i for s in (PAD, BOS, EOS, WORD_GAP) for i in self.id_map.get(s, [])}
        return sum(i not in frame for i in ids)
