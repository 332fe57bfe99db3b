"""The prompt's KV cache is reused across turns: the same tokens, less prefill."""

from __future__ import annotations

import pytest

from voice_agent.core.config import load_settings
from voice_agent.llm.base import ChatMessage, GenerationSettings
from voice_agent.llm.engine import OpenSourceLLM, shared_prefix
from voice_agent.testing import tiny_llm

GREEDY = GenerationSettings(temperature=0, max_new_tokens=12)
TURNS = ["Hello there", "What is the weather like today?", "And tomorrow?"]


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> tuple[OpenSourceLLM, OpenSourceLLM]:
    import torch

    torch.set_num_threads(1)
    path = tiny_llm.build(tmp_path_factory.mktemp("tiny") / "llm")
    settings = load_settings({"HF_HUB_OFFLINE": "1", "LLM_DEVICE": "cpu"})
    # Float weights: int8-dynamic (the CPU default) quantizes activations per call, so a
    # prefill of only the new tokens rounds slightly differently from a prefill of all of
    # them, and random weights' near-ties can then pick another token (docs/llm.md).
    reusing = OpenSourceLLM(str(path), settings, strategies=["cpu-float32"])
    plain = OpenSourceLLM(str(path), settings, reuse_prompt_cache=False, strategies=["cpu-float32"])
    return reusing, plain


def conversation(
    llm: OpenSourceLLM, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], list[int], list[int]]:
    """Three turns of one conversation: the replies, prompt tokens and the tokens the
    model's first forward pass of each turn really computed."""
    fed: list[int] = []
    real_forward = llm.model.forward

    def forward(*args, **kwargs):
        fed.append(int(kwargs["input_ids"].shape[1]))
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(llm.model, "forward", forward)
    history: list[ChatMessage] = []
    replies, prompts, computed = [], [], []
    for text in TURNS:
        history.append({"role": "user", "content": text})
        fed.clear()
        reply = llm.generate_reply(list(history), GREEDY)
        history.append({"role": "assistant", "content": reply.text})
        assert llm.last_prefill is not None
        assert fed[0] == llm.last_prefill.computed_tokens  # what it says is what it did
        replies.append(reply.text)
        prompts.append(llm.last_prefill.prompt_tokens)
        computed.append(fed[0])
    monkeypatch.undo()
    return replies, prompts, computed


def test_later_turns_prefill_only_what_the_cache_lacks_and_say_the_same(
    engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug: every turn prefilled its whole prompt (system prompt and history) again, so the
    first token came seconds after the transcript on a CPU; nothing was reused across turns."""
    reusing, plain = engines
    replies, prompts, computed = conversation(reusing, monkeypatch)
    plain_replies, plain_prompts, plain_computed = conversation(plain, monkeypatch)
    assert replies == plain_replies  # greedy: the cache changes the cost, not the words
    assert prompts == plain_prompts and plain_computed == plain_prompts
    assert computed[0] == prompts[0]  # nothing to reuse on the first turn
    for turn in (1, 2):
        # Only the new user message (and the template's tokens around it) is prefilled.
        assert computed[turn] < prompts[turn] // 2, (computed, prompts)


def test_a_different_conversation_reuses_only_the_shared_start(engines) -> None:
    """A prompt that shares only the system prompt reuses that much and still answers like
    an engine without a cache (the kept cache is cut back, not trusted whole)."""
    reusing, plain = engines
    reusing.generate_reply("Tell me a long story about a dragon", GREEDY)
    other = reusing.generate_reply("Hi", GREEDY)
    assert reusing.last_prefill is not None
    assert 0 < reusing.last_prefill.reused_tokens < reusing.last_prefill.prompt_tokens
    assert other.text == plain.generate_reply("Hi", GREEDY).text


def test_shared_prefix() -> None:
    assert shared_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert shared_prefix([], [1]) == 0
    assert shared_prefix([1, 2], [1, 2]) == 2
