"""Streaming out (audio chunks as frames become final) and in (text appended while speaking)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from tests.dia2_helpers import case_config, cases, fixture_dir, runtime
from voice_agent.core.cancel import CancelToken
from voice_agent.tts.dia2 import TextFeed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", ["c2_dialogue", "c5_prefix"])
def test_stream_equals_generate(name: str) -> None:
    """Same tokens as batch; the concatenated chunks match the batch Mimi decode within 1e-4."""
    rt, config = runtime(), case_config(name)
    batch = rt.generate(cases()[name]["script"], config)
    stream = rt.stream(cases()[name]["script"], config)
    chunks = list(stream)
    assert all(
        chunk.shape == (rt.samples_per_frame,) and chunk.dtype == np.float32 for chunk in chunks
    )
    assert np.array_equal(stream.result.audio_tokens, batch.audio_tokens)
    assert stream.result.timestamps == batch.timestamps
    assert np.abs(np.concatenate(chunks) - batch.audio).max() <= 1e-4


def test_first_audio_after_max_delay_steps() -> None:
    """The first chunk comes as soon as frame 0 is final (max_delay steps), not at the end."""
    rt = runtime()
    stream = rt.stream(cases()["c4_long_nocfg"]["script"], case_config("c4_long_nocfg"))
    next(stream)
    assert stream.first_audio_steps == rt.max_delay
    assert stream.generation.steps_run == rt.max_delay
    rest = list(stream)
    assert 1 + len(rest) == stream.result.audio_tokens.shape[1] == 95


def test_streaming_mimi_matches_batch_past_sliding_window() -> None:
    """Regression: frames past Mimi's 250-step (25 Hz) window must see the window, as batch decode does."""
    from voice_agent.tts.dia2.mimi_stream import MimiStreamDecoder

    mimi = runtime().mimi
    frames = 140  # 280 transformer positions > sliding_window 250
    codes = torch.randint(0, 128, (1, 6, frames), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        batch = mimi.decode(codes).audio_values.clamp(-1, 1)[0, 0]
    decoder = MimiStreamDecoder(mimi)
    streamed = torch.cat([decoder.decode(codes[:, :, f : f + 1]) for f in range(frames)])
    assert streamed.shape == batch.shape
    error = (streamed - batch).abs().max()
    assert error <= 1e-4
    # The window really matters here: without it the tail moves far more than the
    # streaming error (the tiny Mimi's layer scales are 0.01, so the effect is small).
    decoder.reset()
    decoder.transformer.window = None
    unwindowed = torch.cat([decoder.decode(codes[:, :, f : f + 10]) for f in range(0, frames, 10)])
    assert (unwindowed - batch).abs().max() > 10 * error


def _feed_words(feed: TextFeed, script: str, delay_s: float) -> None:
    for i, word in enumerate(script.split(" ")):
        feed.append(word if i == 0 else " " + word)
        time.sleep(delay_s)
    feed.close()


def test_text_feed_word_by_word_equals_batch() -> None:
    """Words arriving from another thread give the batch tokens when they keep ahead of speech."""
    rt, name = runtime(), "c2_dialogue"
    script = cases()[name]["script"]
    config = case_config(name, text_wait_s=10.0)
    feed = TextFeed()
    writer = threading.Thread(target=_feed_words, args=(feed, script, 0.002))
    writer.start()
    stream = rt.stream(feed, config)
    chunks = list(stream)
    writer.join()
    batch = rt.generate(script, config)
    assert stream.generation.text.held_steps == 0
    assert np.array_equal(stream.result.audio_tokens, batch.audio_tokens)
    assert np.abs(np.concatenate(chunks) - batch.audio).max() <= 1e-4


def test_text_feed_pieces_split_inside_words() -> None:
    """LLM deltas cut words and tags anywhere; a closed feed equals the whole script."""
    rt, name = runtime(), "c3_break"
    script = cases()[name]["script"]
    feed = TextFeed()
    for i in range(0, len(script), 3):
        feed.append(script[i : i + 3])
    feed.close()
    stream = rt.stream(feed, case_config(name))
    list(stream)
    assert np.array_equal(
        stream.result.audio_tokens, rt.generate(script, case_config(name)).audio_tokens
    )


def test_slow_text_holds_instead_of_ending() -> None:
    """While the feed is open and words are missing, the model pads; it never runs off the end."""
    rt = runtime()
    feed = TextFeed("[S1] Hello there. How ")
    stream = rt.stream(feed, case_config("c1_hello", text_wait_s=0.0))
    for _ in range(30):
        next(stream)
    state = stream.generation.text
    assert state.end_step is None
    assert state.held_steps > 0
    assert [w for w, _ in state.transcript] == ["Hello"]  # "there." needs two words after it
    feed.append("are you?")
    feed.close()
    list(stream)
    assert stream.result.stopped_by == "eos"
    assert [w for w, _ in stream.result.timestamps] == ["Hello", "there.", "How", "are", "you?"]


@pytest.mark.parametrize("token_kind", ["event", "cancel_token"])
def test_cancel_stops_the_stream(token_kind: str) -> None:
    rt = runtime()
    token = threading.Event() if token_kind == "event" else CancelToken()
    stream = rt.stream(
        cases()["c4_long_nocfg"]["script"], case_config("c4_long_nocfg"), cancel=token
    )
    next(stream)
    token.set()
    list(stream)
    assert stream.result.stopped_by == "cancelled"
    assert stream.result.steps_run <= rt.max_delay + 1


def test_prefix_from_wav_paths_is_cached_across_turns() -> None:
    calls = []
    rt = runtime()

    def timer(audio, rate):
        calls.append(len(audio))
        return [("Hi", 0.0, 0.3)]

    first = rt.prefix(fixture_dir() / "prefix_s1.wav", word_timer=timer)
    second = rt.prefix(fixture_dir() / "prefix_s1.wav", word_timer=timer)
    assert first is second and len(calls) == 1
