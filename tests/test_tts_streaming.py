"""Streaming speech: audio starts before the text is complete, joins are clean, cancel stops it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from voice_agent.core.cancel import CancelToken
from voice_agent.core.config import get_settings
from voice_agent.core.errors import InputTooLargeError
from voice_agent.tts.engine import LocalTTS

REPLY = (
    "Sure, I can help with that. The weather today is sunny and warm, about 25 degrees. "
    "Tomorrow it may rain in the afternoon, so take an umbrella. Have a great day!"
)


class RecordingTokens:
    """An LLM-like token iterator that records how far it was consumed."""

    def __init__(self, text: str, gate: threading.Event | None = None, gate_after: int = 0) -> None:
        self.tokens = [w + " " for w in text.split()]
        self.consumed = 0
        self.gate = gate
        self.gate_after = gate_after

    def __iter__(self) -> Iterator[str]:
        for i, token in enumerate(self.tokens):
            if self.gate is not None and i == self.gate_after:
                # Hold the rest of the reply back until the test has heard audio.
                assert self.gate.wait(60), "no audio arrived while the reply was incomplete"
            self.consumed = i + 1
            yield token


def engine(monkeypatch: pytest.MonkeyPatch, backend: str, model: Path, **env: str) -> LocalTTS:
    monkeypatch.setenv("TTS_DEVICE", "cpu")
    monkeypatch.setenv("TTS_BACKEND", backend)
    monkeypatch.setenv("TTS_MODEL_NAME", str(model))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    return LocalTTS()


def boundary_steps(chunks: list[np.ndarray]) -> list[float]:
    return [
        abs(float(b[0]) - float(a[-1]))
        for a, b in zip(chunks[:-1], chunks[1:], strict=True)
        if a.size and b.size
    ]


def test_vits_speaks_the_first_sentence_before_the_reply_ends(
    monkeypatch, tiny_models: Path
) -> None:
    tts = engine(monkeypatch, "vits", tiny_models / "vits")
    tokens = RecordingTokens(REPLY)
    stream = tts.stream(iter(tokens))
    first = next(stream)
    assert tokens.consumed < len(tokens.tokens) // 2
    assert first.text == "Sure, I can help with that."
    assert first.sample_rate == 16_000 and first.samples.dtype == np.float32
    rest = list(stream)
    assert tokens.consumed == len(tokens.tokens)
    assert rest[-1].final and not any(c.final for c in [first, *rest[:-1]])
    chunks = [first.samples] + [c.samples for c in rest]
    assert max(boundary_steps(chunks)) <= 1e-6  # every piece meets the next at zero


def test_dia2_speaks_word_by_word_before_the_reply_ends(monkeypatch, tiny_models: Path) -> None:
    tts = engine(monkeypatch, "dia2", tiny_models / "dia2")
    heard = threading.Event()
    tokens = RecordingTokens(REPLY, gate=heard, gate_after=8)
    chunks = []
    for chunk in tts.stream(iter(tokens)):
        if not heard.is_set():
            assert tokens.consumed <= 8  # audio came out while the reply was held back
            heard.set()
        chunks.append(chunk)
    assert tokens.consumed == len(tokens.tokens)
    assert chunks[-1].final
    samples = [c.samples for c in chunks]
    assert all(c.sample_rate == 24_000 and c.samples.dtype == np.float32 for c in chunks)
    # Utterance joins (the reply is longer than one tiny-model utterance) add no step
    # larger than the steps inside the audio itself.
    inner = max(float(np.abs(np.diff(s)).max()) for s in samples if s.size > 1)
    assert max(boundary_steps(samples)) <= inner + 1e-6
    assert sum(s.size for s in samples) > 24_000  # more than a second of speech


def test_cancel_stops_the_stream(monkeypatch, tiny_models: Path) -> None:
    tts = engine(monkeypatch, "vits", tiny_models / "vits")
    cancel = CancelToken()
    stream = tts.stream(REPLY, cancel=cancel)
    next(stream)
    cancel.cancel("barge-in")
    assert list(stream) == []


def test_dia2_cancel_stops_the_stream(monkeypatch, tiny_models: Path) -> None:
    tts = engine(monkeypatch, "dia2", tiny_models / "dia2")
    cancel = CancelToken()
    count = 0
    for _ in tts.stream(iter(RecordingTokens(REPLY * 3)), cancel=cancel):
        count += 1
        if count == 3:
            cancel.cancel("barge-in")
        assert count < 40, "the stream kept going after cancel"


def test_stream_over_the_limit_raises_when_it_gets_there(monkeypatch, tiny_models: Path) -> None:
    tts = engine(monkeypatch, "vits", tiny_models / "vits", MAX_TEXT_CHARS="300")
    with pytest.raises(InputTooLargeError, match="MAX_TEXT_CHARS"):
        for _ in tts.stream(iter(RecordingTokens(REPLY * 3))):
            pass


def test_markup_only_pieces_are_skipped_in_a_stream(monkeypatch, tiny_models: Path) -> None:
    tts = engine(monkeypatch, "vits", tiny_models / "vits")
    pieces = ["```python\n", "x = 1\n", "```\n", "😀 ", "Done. "]
    chunks = list(tts.stream(iter(pieces)))
    assert [c.text for c in chunks if not c.final] == ["Done."]


def test_the_words_that_have_come_go_when_the_audio_runs_dry(
    monkeypatch, tiny_models: Path
) -> None:
    """The voice bench: after the 0.85 s first phrase the next piece's words came too late
    in every turn. The engine knows when the audio it handed out will have played; when
    that is under `hurry_s` away, the splitter sends the words that have come."""
    import re

    import voice_agent.tts.engine as engine_module
    from voice_agent.tts.text.chunking import Phrasing

    tts = engine(monkeypatch, "vits", tiny_models / "vits")
    phrasing = Phrasing("sentence", max_words=25, first_phrase_words=8, growth=1.5, hurry_s=0.5)
    clock = [0.0]
    monkeypatch.setattr(engine_module, "_now", lambda: clock[0])

    def said(seconds_per_token: float) -> list[str]:
        def tokens() -> Iterator[str]:
            for token in re.findall(
                r"\s*\S+", "It looks sunny this afternoon, with a light breeze today."
            ):
                clock[0] += seconds_per_token
                yield token

        return [c.text for c in tts.stream(tokens(), phrasing=phrasing) if c.text]

    # The audio never plays out: the pieces follow the rules alone.
    assert said(0.0) == ["It looks sunny", "this afternoon, with a light", "breeze today."]
    # Each token comes after the audio before it has played: the whole words that have
    # come go at once, two at least.
    hurried = ["It looks sunny", "this afternoon,", "with a", "light breeze", "today."]
    assert said(100.0) == hurried
    # Off without hurry_s.
    phrasing = Phrasing("sentence", max_words=25, first_phrase_words=8, growth=1.5)
    assert said(100.0) == ["It looks sunny", "this afternoon, with a light", "breeze today."]


def test_a_quiet_llm_still_gets_the_waiting_words_spoken(monkeypatch, tiny_models: Path) -> None:
    """The voice bench: one token took 0.55 s to come while the first phrase played out,
    and "this afternoon," waited for it (a 0.37 s stall). The speak stage's text feed
    sends "" after each 50 ms without text; the splitter then hurries what waits."""
    import re

    import voice_agent.tts.engine as engine_module
    from voice_agent.pipeline.speak import SpeechStop, TextFeed
    from voice_agent.tts.text.chunking import Phrasing

    tts = engine(monkeypatch, "vits", tiny_models / "vits")
    clock = [0.0]
    monkeypatch.setattr(engine_module, "_now", lambda: clock[0])
    feed = TextFeed()
    for token in re.findall(r"\s*\S+", "It looks sunny this afternoon, with"):
        feed.put(token)
    spoken: list[str] = []
    before_more: list[str] = []

    token = CancelToken()
    timer = threading.Timer(10.0, token.cancel)  # a feed that never speaks up fails, not hangs
    timer.start()

    def text() -> Iterator[str]:
        for piece in feed.pieces(SpeechStop(token)):
            if piece == "" and not before_more:
                clock[0] += 100.0  # the LLM is quiet while the audio plays out
            yield piece
            if piece == "" and spoken[-1:] == ["this afternoon,"] and not before_more:
                before_more.extend(spoken)
                feed.put(" a light breeze.")
                feed.close()

    phrasing = Phrasing("sentence", max_words=25, first_phrase_words=8, growth=1.5, hurry_s=0.3)
    try:
        for chunk in tts.stream(text(), phrasing=phrasing):
            if chunk.text:
                spoken.append(chunk.text)
    finally:
        timer.cancel()
    assert before_more == ["It looks sunny", "this afternoon,"]
    assert spoken == ["It looks sunny", "this afternoon,", "with a light breeze."]
