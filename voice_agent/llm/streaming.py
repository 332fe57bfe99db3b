"""From token ids to text pieces while `generate()` runs, with stop strings and cancel.

`TokenFeed` is the streamer handed to `model.generate` (it runs in the generation worker
thread): it decodes the reply so far after every token and queues only the new, stable
text. Text is held back while it ends in an incomplete UTF-8 sequence (byte-level BPE
splits emoji across tokens) or in what could be the start of a stop string, so no piece
ever carries a broken character or part of a stop string. `StopSignal` is the stopping
criterion that ends generation after the current step when the caller cancels or a stop
string appears.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Sequence
from typing import Any

REPLACEMENT = "\ufffd"  # what decode() writes for an incomplete UTF-8 sequence


class Finished:
    """Queue marker: generation ended (normally or not)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class TokenFeed:
    """A transformers streamer that turns generated ids into text deltas on a queue.

    Args:
        tokenizer: decodes the ids (only from the generation thread while it runs).
        out: receives `str` pieces, then one `Finished`.
        stop: stop strings; the reply ends before the first one.
        start: `time.perf_counter()` at the request, for the first-token time.
    """

    def __init__(self, tokenizer: Any, out: queue.Queue, stop: Sequence[str], start: float) -> None:
        self.tokenizer = tokenizer
        self.out = out
        self.stop = tuple(stop)
        self.start = start
        self.ids: list[int] = []
        self.emitted = ""
        self.stop_hit = False
        self.first_token_seconds: float | None = None
        self._prompt_seen = False

    @property
    def completion_tokens(self) -> int:
        return len(self.ids)

    def put(self, value: Any) -> None:
        """Called by `generate` with the prompt first, then each new token."""
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if self.stop_hit:
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        if self.first_token_seconds is None:
            self.first_token_seconds = time.perf_counter() - self.start
        self._emit(final=False)

    def end(self) -> None:
        """Called by `generate` when it finishes: flush what was held back."""
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = self._stop_index(text)
        if cut is not None:
            self.stop_hit = True
            text, final = text[:cut], True
        safe = len(text) if final else self._safe_length(text)
        if safe > len(self.emitted):
            # Earlier text is stable (only an incomplete tail was held back), so the new
            # piece is what follows what was already sent.
            piece = text[len(self.emitted) : safe]
            self.out.put(piece)
            self.emitted += piece

    def _stop_index(self, text: str) -> int | None:
        # Search only the tail a new token can have changed.
        begin = max(0, len(self.emitted) - max((len(s) for s in self.stop), default=0))
        hits = [i for s in self.stop if (i := text.find(s, begin)) >= 0]
        return min(hits) if hits else None

    def _safe_length(self, text: str) -> int:
        """Length of `text` that later tokens cannot change or turn into a stop string."""
        end = len(text)
        while end > len(self.emitted) and text[end - 1] == REPLACEMENT:
            end -= 1
        hold = 0
        for s in self.stop:
            hold = max(
                hold, next((n for n in range(len(s) - 1, 0, -1) if text.endswith(s[:n], 0, end)), 0)
            )
        return max(len(self.emitted), end - hold)


def stop_signal(should_stop: Callable[[], bool]) -> Any:
    """A transformers `StoppingCriteria` that ends generation after the current step."""
    import torch
    from transformers import StoppingCriteria

    class StopSignal(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> Any:
            flag = should_stop()
            return torch.full(
                (input_ids.shape[0],), flag, dtype=torch.bool, device=input_ids.device
            )

    return StopSignal()
