"""Count the tokens the real LLM engine generates, whether or not anyone still reads them.

A reader that stops early (barge-in, client disconnect) sees the same events whether the
engine stopped generating or ran on to `max_new_tokens` in its worker thread; only the
engine's own output tells them apart. `generate()` calls the streamer (`TokenFeed.put`)
once with the prompt and then once per new token, so counting those calls counts what was
really generated.
"""

from __future__ import annotations

from typing import Any

import pytest

from voice_agent.llm.streaming import TokenFeed


def count_generated_tokens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on (for this test), tokens generated per generation, in start order.

    Read a generation's count only after it has ended: a later request on the same
    engine waits for the engine, so once that one has run the earlier ones are done.
    """
    counts: list[int] = []
    original = TokenFeed.put

    def put(feed: TokenFeed, value: Any) -> None:
        index = feed.__dict__.get("_probe_index")
        if index is None:  # the first call carries the prompt
            feed.__dict__["_probe_index"] = len(counts)
            counts.append(0)
        else:
            counts[index] += int(value.numel())
        original(feed, value)

    monkeypatch.setattr(TokenFeed, "put", put)
    return counts
