"""Sentence splitting, piece packing, the streaming splitter and click-free joins."""

from __future__ import annotations

import re

import numpy as np
import pytest

from voice_agent.core.errors import InputTooLargeError
from voice_agent.tts.text.chunking import (
    Phrasing,
    TextSplitter,
    check_length,
    fade_edges,
    join_audio,
    split_sentences,
    split_stream,
    split_text,
)


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("Hello there. How are you?", ["Hello there.", "How are you?"]),
        ("Dr. Smith paid 3.5 dollars. Done!", ["Dr. Smith paid 3.5 dollars.", "Done!"]),
        ("J. R. R. Tolkien wrote it. Yes.", ["J. R. R. Tolkien wrote it.", "Yes."]),
        ("Use e.g. this one. Or not.", ["Use e.g. this one.", "Or not."]),
        ("We met at 5 p.m. Then we left.", ["We met at 5 p.m.", "Then we left."]),
        ("Visit example.com today. Now.", ["Visit example.com today.", "Now."]),
        ("Steps:\n1. Open it.\n2. Close it.", ["Steps:", "1. Open it.", "2. Close it."]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("Wait... what?! Really?", ["Wait...", "what?!", "Really?"]),
        (
            "Code:\n```py\nx = 1. \ny = 2\n```\nDone. ",
            ["Code:", "```py\nx = 1. \ny = 2\n```", "Done."],
        ),
        ("no punctuation at all", ["no punctuation at all"]),
        ("", []),
    ],
)
def test_split_sentences(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences


def test_split_text_packs_sentences_up_to_the_limit() -> None:
    text = "One. Two. Three is longer. Four."
    assert split_text(text, 20) == ["One. Two.", "Three is longer.", "Four."]
    assert split_text(text, 1000) == [text]


def test_split_text_cuts_long_sentences_at_clauses_then_spaces() -> None:
    sentence = "first clause here, second clause here, " + "word " * 30 + "end."
    pieces = split_text(sentence, 40)
    assert all(len(p) <= 40 for p in pieces)
    assert pieces[0] == "first clause here, second clause here,"
    assert " ".join(pieces).split() == sentence.split()
    assert split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


def test_fifty_thousand_characters_split_without_losing_a_word() -> None:
    text = " ".join(f"Sentence number {i} has a few words in it." for i in range(1200))
    assert len(text) > 50_000
    pieces = split_text(text, 400)
    assert all(len(p) <= 400 for p in pieces)
    assert " ".join(pieces).split() == text.split()


def test_check_length() -> None:
    check_length("x" * 10, 10)
    with pytest.raises(InputTooLargeError, match="11 characters; the limit is 10"):
        check_length("x" * 11, 10)


def test_streaming_splitter_releases_each_sentence_when_it_ends() -> None:
    splitter = TextSplitter()
    assert splitter.feed("Hello the") == []
    assert splitter.feed("re. ") == []  # "Dr. Smith" or a new sentence? wait for the next word
    assert splitter.feed("How") == ["Hello there."]
    assert splitter.feed(" are you? I am") == ["How are you?"]
    assert splitter.close() == ["I am"]


def test_phrase_mode_releases_clauses_and_long_runs() -> None:
    tokens = "Sure, I can help with that, it is easy. one two three four five six seven eight nine ten eleven"
    phrases = list(split_stream((t + " " for t in tokens.split()), mode="phrase"))
    assert phrases[0] == "Sure, I can help with that,"
    assert phrases[1] == "it is easy."
    assert phrases[2].split() == "one two three four five six seven eight nine ten".split()
    assert " ".join(phrases).split() == tokens.split()


def test_first_phrase_goes_early_and_run_ons_are_cut() -> None:
    """What a conversation asks of a sentence-at-a-time engine: the first phrase after
    `first_phrase_words` words or at its first clause of three words, later text a
    sentence at a time, any run of `max_words` words cut."""
    words = "Well I think that the weather will be fine today. And then it rains all day".split()
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    early = Phrasing(first_phrase_words=4, max_words=6)
    assert list(split_stream(iter(pieces), phrasing=early)) == [
        "Well I think that",
        "the weather will be fine today.",
        "And then it rains all day",
    ]
    assert list(split_stream(iter(pieces[10:]), phrasing=Phrasing(max_words=3))) == [
        "And then it",
        "rains all day",
    ]
    clause = split_stream(
        iter(["Sure", ",", " I", " can", ",", " yes"]), phrasing=Phrasing(first_phrase_words=8)
    )
    assert list(clause) == ["Sure, I can,", "yes"]
    # The first phrase leaves at its comma, not one token later (with the space after it).
    first = TextSplitter(Phrasing(first_phrase_words=8))
    out = [first.feed(p) for p in ["Yes", " it", " looks", " very", " sunny", ","]]
    assert out[-1] == ["Yes it looks very sunny,"], out
    # ... unless the comma may be inside a number: "10,000" waits for what follows.
    number = TextSplitter(Phrasing(first_phrase_words=8))
    out = [number.feed(p) for p in ["It", " costs", " about", " 10", ","]]
    assert out[-1] == [] and number.feed("000") == [] and number.feed(" dollars") == []
    assert number.close() == ["It costs about 10,000 dollars"]
    # Off: sentences only.
    assert list(split_stream(iter(pieces))) == [
        "Well I think that the weather will be fine today.",
        "And then it rains all day",
    ]
    # Text without spaces counts CHARS_PER_WORD characters as a word.
    assert [
        len(p) for p in split_stream(iter(["字" * 40]), phrasing=Phrasing(first_phrase_words=2))
    ] == [16, 24]


def test_phrase_mode_keeps_links_and_titles_whole() -> None:
    text = "See [the long and winding documentation page here](https://example.com/a, b) now, Dr. Who said."
    phrases = list(split_stream(iter([text]), mode="phrase"))
    assert any(
        "[the long and winding documentation page here](https://example.com/a, b)" in p
        for p in phrases
    )
    assert not any(p.endswith("Dr.") for p in phrases)


def max_step(audio: np.ndarray) -> float:
    return float(np.abs(np.diff(audio)).max())


def test_joins_have_no_discontinuity() -> None:
    """Pieces that end and start far from zero must meet without a step (a click)."""
    rate = 16_000
    t = np.arange(rate // 4) / rate
    pieces = [
        np.full(rate // 4, 0.8, np.float32),
        np.full(rate // 4, -0.8, np.float32),
        (0.9 * np.sin(2 * np.pi * 220 * t + 1.3)).astype(np.float32),
        (0.9 * np.cos(2 * np.pi * 330 * t)).astype(np.float32),
    ]
    raw = np.concatenate(pieces)
    assert max_step(raw) > 1.0  # the naive join clicks
    inner = max(max_step(p) for p in pieces)
    for pause_ms in (0.0, 90.0):
        joined = join_audio(pieces, rate, pause_ms=pause_ms)
        assert joined.dtype == np.float32
        assert max_step(joined) <= inner + 0.02


def test_fade_edges_start_and_end_at_zero() -> None:
    faded = fade_edges(np.ones(1000, np.float32), 16_000)
    assert faded[0] == 0.0 and faded[-1] == 0.0
    assert faded[500] == 1.0
    assert fade_edges(np.ones(3, np.float32), 16_000).shape == (3,)
    assert join_audio([], 16_000).size == 0


LATER = Phrasing("sentence", max_words=25, first_phrase_words=8, growth=1.5)


def _fed(splitter: TextSplitter, text: str) -> list[str]:
    out: list[str] = []
    for token in re.findall(r"\s*\S+", text):  # an LLM's tokens: the space leads the word
        out += splitter.feed(token)
    return out


def test_hurry_sends_the_waiting_words_at_their_last_clause():
    """The voice bench: after the 0.85 s first phrase "It looks sunny", the 5 words the next
    piece waited for came too late in every turn (0.3-0.8 s of silence). When the audio is
    about to run out, the words that have come go now, at their clause."""
    splitter = TextSplitter(LATER)
    assert _fed(splitter, "It looks sunny this") == ["It looks sunny"]
    assert _fed(splitter, " afternoon, with") == []  # the rules would wait for 5 words
    assert splitter.hurry() == ["this afternoon,"]
    assert _fed(splitter, " a light breeze from the") == ["with a light breeze"]
    assert splitter.hurry() == []  # one whole word ("from"; "the" may still be arriving)
    assert splitter.close() == ["from the"]


def test_hurry_cuts_before_a_phrase_word_else_at_the_last_whole_word():
    splitter = TextSplitter(LATER)
    assert _fed(splitter, "Sure thing, my friend, the shop is") == ["Sure thing, my friend,"]
    assert _fed(splitter, " open until ten") == []
    assert splitter.hurry() == ["the shop is open"]  # before "until", a phrase word
    assert _fed(splitter, " tonight sharp") == []
    # No clause, no phrase word after two words: up to the last space ("sharp" may be
    # the start of "sharpish").
    assert splitter.hurry() == ["until ten tonight"]
    assert splitter.close() == ["sharp"]


def test_hurry_leaves_the_first_phrase_and_code_to_their_rules():
    splitter = TextSplitter(LATER)
    assert _fed(splitter, "\nWell I think") == []
    assert splitter.hurry() == []  # the cut at the line break sent no words: none gone out
    splitter = TextSplitter(LATER)
    assert _fed(splitter, "Well I think") == []
    assert splitter.hurry() == []  # the first phrase has its own rules
    assert _fed(splitter, " that, yes") == ["Well I think that,"]
    assert _fed(splitter, " run ```pip install the package``` then") == []
    assert splitter.hurry() == []  # code is never cut


def test_split_stream_hurries_only_when_the_audio_runs_dry():
    tokens = re.findall(r"\s*\S+", "It looks sunny this afternoon, with a light breeze today.")
    calm = list(split_stream(tokens, phrasing=LATER, running_dry=lambda: False))
    dry = list(split_stream(tokens, phrasing=LATER, running_dry=lambda: True))
    assert calm == ["It looks sunny", "this afternoon, with a light", "breeze today."]
    assert dry[:2] == ["It looks sunny", "this afternoon,"]
    assert " ".join(dry) == " ".join(calm)  # no word lost or doubled
