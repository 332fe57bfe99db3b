"""Chatting with the tiny LLM: streaming, cancel, stop strings, trimming, concurrency, bad input."""

from __future__ import annotations

import math
import queue
import threading
import time

import pytest

from voice_agent.core.cancel import CancelToken
from voice_agent.core.config import load_settings
from voice_agent.core.errors import BusyError, InputError, InputTooLargeError
from voice_agent.llm import errors
from voice_agent.llm.base import GenerationSettings
from voice_agent.llm.engine import DEFAULT_SYSTEM_PROMPT, OpenSourceLLM
from voice_agent.llm.prompt import fit_to_context, normalize_messages, render
from voice_agent.llm.streaming import Finished, TokenFeed
from voice_agent.testing import tiny_llm


def greedy(n: int = 24, **kw) -> GenerationSettings:
    return GenerationSettings(temperature=0, max_new_tokens=n, **kw)


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> OpenSourceLLM:
    import torch

    torch.set_num_threads(1)
    path = tiny_llm.build(tmp_path_factory.mktemp("tiny") / "llm")
    settings = load_settings({"HF_HUB_OFFLINE": "1", "LLM_DEVICE": "cpu", "MAX_TEXT_CHARS": "5000"})
    return OpenSourceLLM(str(path), settings, busy_timeout_s=10)


@pytest.fixture
def slow_steps(llm: OpenSourceLLM, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    """Make each forward pass take 20 ms and record (thread name, time) per step."""
    steps: list[tuple[str, float]] = []
    real_forward = llm.model.forward

    def forward(*args, **kwargs):
        steps.append((threading.current_thread().name, time.perf_counter()))
        time.sleep(0.02)
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(llm.model, "forward", forward)
    return steps


def test_streaming_yields_pieces_that_join_to_the_plain_reply(llm: OpenSourceLLM) -> None:
    whole = llm.generate_reply("Tell me a story", greedy())
    stream = llm.stream_reply("Tell me a story", greedy())
    pieces = list(stream)
    assert len(pieces) > 1 and all(pieces)
    assert "".join(pieces) == whole.text == stream.reply.text
    assert stream.reply.finish_reason == whole.finish_reason == "length"
    assert stream.reply.completion_tokens == 24
    assert stream.reply.prompt_tokens == whole.prompt_tokens > 0
    assert 0 < stream.reply.first_token_seconds <= stream.reply.seconds


def test_sampling_with_a_seed_is_reproducible(llm: OpenSourceLLM) -> None:
    settings = GenerationSettings(temperature=0.9, top_p=0.95, max_new_tokens=16, seed=7)
    assert llm.generate_reply("Hi", settings).text == llm.generate_reply("Hi", settings).text


def test_cancel_stops_within_one_step_and_returns_the_partial_reply(
    llm: OpenSourceLLM, slow_steps: list
) -> None:
    token = CancelToken()
    stream = llm.stream_reply("Tell me a story", greedy(200), cancel=token)
    pieces = [next(iter(stream))]
    steps_at_cancel = len(slow_steps)
    token.cancel("barge-in")
    pieces += list(stream)
    reply = stream.reply
    assert reply.finish_reason == "cancelled"
    assert len(slow_steps) <= steps_at_cancel + 1
    assert reply.text == "".join(pieces) and reply.text
    assert reply.completion_tokens < 200


def test_stop_button_cancels_the_running_generation(llm: OpenSourceLLM, slow_steps) -> None:
    assert llm.cancel() is False  # nothing running
    stream = llm.stream_reply("Hello", greedy(200))
    next(iter(stream))
    assert llm.cancel() is True
    list(stream)
    assert stream.reply.finish_reason == "cancelled" and stream.reply.completion_tokens < 200


def test_already_cancelled_does_no_work(llm: OpenSourceLLM, slow_steps) -> None:
    token = CancelToken()
    token.cancel()
    reply = llm.generate_reply("Hello", greedy(), cancel=token)
    assert reply.finish_reason == "cancelled" and reply.text == "" and not slow_steps


def test_closing_a_stream_early_frees_the_model(llm: OpenSourceLLM, slow_steps) -> None:
    stream = llm.stream_reply("Hello", greedy(200))
    next(iter(stream))
    stream.pieces.close()  # the client went away
    reply = llm.generate_reply("Hello again", greedy(4), wait_s=5)
    assert reply.completion_tokens == 4


def test_stop_strings_end_the_reply_before_them(llm: OpenSourceLLM) -> None:
    full = llm.generate_reply("Tell me a story", greedy(32)).text
    stop = full[10:13]
    assert stop.strip(), full
    stream = llm.stream_reply("Tell me a story", greedy(32, stop=(stop,)))
    pieces = list(stream)
    assert stream.reply.text == "".join(pieces) == full[: full.index(stop)]
    assert stream.reply.finish_reason == "stop"


def test_history_is_trimmed_oldest_first_keeping_the_system_prompt(llm: OpenSourceLLM) -> None:
    history = []
    for i in range(40):
        history.append(
            {"role": "user", "content": f"Question number {i}: what is the weather like today?"}
        )
        history.append(
            {"role": "assistant", "content": f"Answer {i}: it is sunny with a light breeze."}
        )
    history.append({"role": "user", "content": "And tomorrow?"})
    reply = llm.generate_reply(history, greedy(64))
    assert reply.trimmed_messages > 0 and reply.trimmed_messages % 2 == 0
    assert reply.prompt_tokens + 64 <= llm.context_length
    checked = normalize_messages(history, DEFAULT_SYSTEM_PROMPT, 5000)
    fitted = fit_to_context(llm.tokenizer, checked, 64, llm.context_length)
    assert fitted.messages[0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert fitted.messages[-1]["content"] == "And tomorrow?"
    assert fitted.messages[1]["role"] == "user"  # whole turns dropped, never half of one
    assert fitted.dropped == reply.trimmed_messages
    # Dropping one turn fewer would not have fitted: the trim is minimal.
    one_more = checked[:1] + checked[1 + fitted.dropped - 2 :]
    assert len(render(llm.tokenizer, one_more)) + 64 > llm.context_length


def test_short_history_is_not_trimmed(llm: OpenSourceLLM) -> None:
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]
    reply = llm.generate_reply(history, greedy(8))
    assert reply.trimmed_messages == 0
    assert reply.prompt_tokens == len(render(llm.tokenizer, history))


def test_two_callers_never_interleave(llm: OpenSourceLLM, slow_steps: list) -> None:
    results: dict[str, object] = {}

    def ask(name: str) -> None:
        threading.current_thread().name = name
        results[name] = llm.generate_reply(f"Hello from {name}", greedy(6))

    first = threading.Thread(target=ask, args=("a",))
    second = threading.Thread(target=ask, args=("b",))
    first.start()
    second.start()
    first.join(30)
    second.join(30)
    assert set(results) == {"a", "b"}
    # Each generation runs in its own numbered worker; their steps form two unbroken blocks.
    owners = [name for name, _ in slow_steps]
    assert len(owners) == 12 and len(set(owners)) == 2
    assert owners == [owners[0]] * 6 + [owners[-1]] * 6


def test_a_caller_beyond_the_bounded_wait_gets_busy(llm: OpenSourceLLM, slow_steps) -> None:
    stream = llm.stream_reply("Long answer please", greedy(40))
    errors_seen: queue.Queue = queue.Queue()
    waited: list[float] = []

    def third() -> None:
        start = time.perf_counter()
        try:
            llm.generate_reply("Me too", greedy(4), wait_s=0.1)
        except BusyError as exc:
            errors_seen.put(exc)
        waited.append(time.perf_counter() - start)

    worker = threading.Thread(target=third)
    worker.start()
    worker.join(10)
    busy = errors_seen.get_nowait()
    assert busy.retry_after_s > 0 and "busy" in str(busy)
    assert waited[0] < 1.0
    list(stream)  # the first caller is unaffected
    assert stream.reply.completion_tokens == 40


def test_concurrent_streams_run_one_after_the_other(llm: OpenSourceLLM, slow_steps) -> None:
    """The second caller waits for the first generation, then runs its own: no overlap."""
    first = llm.stream_reply("First", greedy(5))
    done: list = []
    second = threading.Thread(target=lambda: done.append(llm.generate_reply("Second", greedy(5))))
    second.start()
    list(first)
    second.join(30)
    assert done and done[0].completion_tokens == 5
    names = [name for name, _ in slow_steps]
    assert len(names) == 10 and len(set(names)) == 2
    assert names == [names[0]] * 5 + [names[-1]] * 5


BAD_MESSAGES = [
    ([], errors.EmptyConversationError),
    ([{"role": "system", "content": "Only a system prompt"}], errors.EmptyConversationError),
    ("", errors.EmptyMessageError),
    ("   \n", errors.EmptyMessageError),
    ([{"role": "robot", "content": "beep"}], errors.UnknownRoleError),
    ([{"role": "user", "content": 42}], errors.InvalidContentError),
    ([{"role": "user", "content": None}], errors.InvalidContentError),
    ([{"role": "user", "content": ["a", "list"]}], errors.InvalidContentError),
    (["just a string"], errors.InvalidMessageError),
    ([{"content": "no role"}], errors.InvalidMessageError),
    ([{"role": "user", "content": "x" * 5001}], errors.MessageTooLongError),
]


@pytest.mark.parametrize(("messages", "error"), BAD_MESSAGES)
def test_bad_messages_get_their_specific_error(llm: OpenSourceLLM, messages, error) -> None:
    with pytest.raises(error) as caught:
        llm.generate_reply(messages, greedy(4))
    assert isinstance(caught.value, InputError) and caught.value.code == error.code
    assert 400 <= caught.value.status_code < 500
    assert not llm._lock.locked()


@pytest.mark.parametrize("messages", [None, 42, {"role": "user", "content": "hi"}])
def test_messages_that_are_not_a_list_are_an_input_error(llm: OpenSourceLLM, messages) -> None:
    """Regression: `messages=None` or a number crashed with TypeError (a 500) while the engine
    looked for a system message, instead of the InvalidMessageError every other bad list gets."""
    with pytest.raises(errors.InvalidMessageError):
        llm.generate_reply(messages, greedy(4))
    with pytest.raises(errors.InvalidMessageError):
        llm.count_tokens(messages)
    assert not llm._lock.locked()


BAD_SETTINGS = [
    (dict(max_new_tokens=0), errors.MaxNewTokensError),
    (dict(max_new_tokens=-3), errors.MaxNewTokensError),
    (dict(max_new_tokens=10**9), errors.MaxNewTokensError),
    (dict(max_new_tokens=512), errors.MaxNewTokensError),  # the whole tiny context
    (dict(max_new_tokens=2.5), errors.MaxNewTokensError),
    (dict(max_new_tokens=True), errors.MaxNewTokensError),
    (dict(temperature=-0.1), errors.TemperatureError),
    (dict(temperature=math.nan), errors.TemperatureError),
    (dict(temperature=math.inf), errors.TemperatureError),
    (dict(temperature=5), errors.TemperatureError),
    (dict(top_p=0), errors.InvalidGenerationSettingsError),
    (dict(top_p=1.5), errors.InvalidGenerationSettingsError),
    (dict(stop=("",)), errors.InvalidGenerationSettingsError),
    (dict(stop="\n"), errors.InvalidGenerationSettingsError),
    (dict(seed=-1), errors.InvalidGenerationSettingsError),
]


@pytest.mark.parametrize(("overrides", "error"), BAD_SETTINGS)
def test_bad_generation_settings_get_their_specific_error(
    llm: OpenSourceLLM, overrides, error
) -> None:
    with pytest.raises(error) as caught:
        llm.generate_reply("Hello", GenerationSettings(**overrides))
    assert caught.value.code == error.code


def test_prompt_too_long_even_after_trimming(llm: OpenSourceLLM) -> None:
    history = [
        {"role": "user", "content": "an old question"},
        {"role": "assistant", "content": "an old answer"},
        {"role": "user", "content": "weather today " * 300},
    ]
    with pytest.raises(errors.PromptTooLongError) as caught:
        llm.generate_reply(history, greedy(64))
    assert isinstance(caught.value, InputTooLargeError) and caught.value.status_code == 413
    assert "512 tokens" in str(caught.value)
    assert llm.generate_reply("Still fine?", greedy(4), wait_s=0).completion_tokens == 4


def test_unicode_and_emoji_reach_the_model_untouched(llm: OpenSourceLLM) -> None:
    text = "Grüße aus Zürich 😀👍🏽 — 日本語, naïve café"
    ids = render(llm.tokenizer, normalize_messages(text, "", 5000))
    assert text in llm.tokenizer.decode(ids)
    reply = llm.generate_reply(text, greedy(8))
    assert reply.completion_tokens == 8


def _feed(llm: OpenSourceLLM, text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], TokenFeed]:
    """Push `text`'s tokens one by one through a TokenFeed, as generate() would."""
    import torch

    out: queue.Queue = queue.Queue()
    feed = TokenFeed(llm.tokenizer, out, stop, time.perf_counter())
    feed.put(torch.tensor([[1, 2, 3]]))  # the prompt comes first and is skipped
    for token in llm.tokenizer(text, add_special_tokens=False)["input_ids"]:
        feed.put(torch.tensor([token]))
    feed.end()
    pieces = []
    while not out.empty():
        item = out.get()
        assert not isinstance(item, Finished)
        pieces.append(item)
    return pieces, feed


def test_streamed_pieces_never_split_a_character(llm: OpenSourceLLM) -> None:
    text = "Emoji 😀👍🏽 and 日本語 stream whole."
    tokens = llm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(tokens) > len(text.split())  # byte-level BPE splits the emoji across tokens
    pieces, _ = _feed(llm, text)
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces) and len(pieces) > 3


def test_streamed_pieces_never_show_part_of_a_stop_string(llm: OpenSourceLLM) -> None:
    pieces, feed = _feed(llm, "Sure, here it is.\nUser: and more text", stop=("\nUser:",))
    assert "".join(pieces) == "Sure, here it is." and feed.stop_hit
    assert not any(piece.endswith("\n") for piece in pieces)


def test_a_stream_dropped_unread_stops_generating(llm: OpenSourceLLM) -> None:
    """Regression: a stream dropped before it was read never ran its generator's cleanup, so
    generation ran on to max_new_tokens holding the model for nobody."""
    import gc

    stream = llm.stream_reply(
        "Tell me a long story.", GenerationSettings(temperature=0, max_new_tokens=200)
    )
    stop = llm._current_stop
    assert stop is not None and not stop.is_set()
    del stream
    gc.collect()
    assert stop.is_set()
    reply = llm.generate_reply("Hi", GenerationSettings(temperature=0, max_new_tokens=4), wait_s=30)
    assert reply.completion_tokens > 0
