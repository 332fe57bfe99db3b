"""The text side of a Dia2 step: turn the model's pad/new-word action into two text tokens.

The model only decides *when* the next word starts. Each step, the machine
takes the sampled action and returns the tokens fed on the main and second
text streams at the next step:

- A new word pops the next entry and records its step. Its tokens go out on
  the main stream one per step; at the new-word step itself main carries the
  first token and second carries `new_word`. Then the tokens of the word
  `second_stream_ahead` (2) entries further go out on the second stream.
- Pending tokens block new words; after a word, `padding` pads are forced
  (`len(tokens)` for words, the break length for breaks); after
  `MAX_PADDING` (6) pads in a row a new word is forced.
- When the queue is empty and the input is closed, that step is `end_step`.

Streaming text in adds one rule: while the input is open, a new word is only
taken when the queue holds the word plus the `second_stream_ahead` words its
lookahead needs. Otherwise the step is held as a pad (`held_steps` counts
them) and the word starts as soon as enough text has arrived. With the whole
text known up front nothing is ever held, so the tokens equal batch mode.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from voice_agent.tts.dia2.config import MAX_PADDING
from voice_agent.tts.dia2.script import Entry


@dataclass(frozen=True)
class TextIds:
    """Text-stream ids the machine emits."""

    new_word: int
    pad: int
    action_pad: int = 0
    action_new_word: int = 1


@dataclass
class TextState:
    """Mutable state of one generation's text stream."""

    entries: deque[Entry]
    padding_budget: int
    forced_padding: int
    closed: bool = True
    pending: deque[int] = field(default_factory=deque)
    lookahead: deque[int] = field(default_factory=deque)
    end_step: int | None = None
    consumed_steps: list[int] = field(default_factory=list)
    transcript: list[tuple[str, int]] = field(default_factory=list)
    words_consumed: int = 0
    held_steps: int = 0

    def peek_tokens(self, ahead: int) -> tuple[int, ...]:
        """Tokens of the `ahead`-th word still queued (breaks do not count)."""
        for entry in self.entries:
            if entry.tokens:
                ahead -= 1
                if ahead == 0:
                    return entry.tokens
        return ()

    def queued_words(self, limit: int) -> int:
        """Number of word entries queued, counting no further than `limit`."""
        count = 0
        for entry in self.entries:
            count += bool(entry.tokens)
            if count >= limit:
                break
        return count


class StateMachine:
    """Stateless rules; all state lives in `TextState`."""

    def __init__(self, ids: TextIds, second_stream_ahead: int, max_padding: int = MAX_PADDING):
        self.ids = ids
        self.ahead = second_stream_ahead
        self.max_padding = max_padding

    def new_state(
        self, entries: list[Entry], initial_padding: int, closed: bool = True
    ) -> TextState:
        return TextState(
            entries=deque(entries),
            padding_budget=initial_padding,
            forced_padding=initial_padding,
            closed=closed,
        )

    def step(self, t: int, state: TextState, action: int, forced: bool = False) -> tuple[int, int]:
        """Apply the action sampled at step `t`; return (main, second) text tokens.

        Args:
            action: 1 for new word, anything else is pad.
            forced: teacher forcing (voice prefix warm-up): take the action as given.
        """
        new_word, pad = self.ids.new_word, self.ids.pad
        token = self._take_word(t, state) if self.wants_word(state, action, forced) else pad

        if token == pad:
            if state.padding_budget > 0:
                state.padding_budget -= 1
            if state.forced_padding > 0:
                state.forced_padding -= 1
            main = state.pending.popleft() if state.pending else pad
        else:
            main = new_word

        if not self.ahead:
            return main, main
        if main == new_word:
            return (state.pending.popleft() if state.pending else pad), new_word
        return main, (state.lookahead.popleft() if state.lookahead else pad)

    def wants_word(self, state: TextState, action: int, forced: bool = False) -> bool:
        """Whether this step starts the next entry, after the constraints (in the official order)."""
        if state.pending:
            return False
        if forced:
            return action == self.ids.action_new_word
        if state.forced_padding > 0:
            return False
        return state.padding_budget <= 0 or action == self.ids.action_new_word

    def lacks_text(self, state: TextState) -> bool:
        """True while the input is open and the next word or its lookahead has not arrived."""
        need = 1 + self.ahead
        return not state.closed and state.queued_words(need) < need

    def _take_word(self, t: int, state: TextState) -> int:
        """Pop the next entry for a new-word action; return new_word or pad."""
        ids = self.ids
        if self.lacks_text(state):
            # Not enough text for the word and its lookahead: hold with a pad.
            state.held_steps += 1
            return ids.pad
        if state.entries:
            entry = state.entries.popleft()
            state.consumed_steps.append(t)
            state.forced_padding = entry.padding
            if not entry.tokens:
                return ids.pad
            state.transcript.append((entry.text, t))
            state.words_consumed += 1
            state.pending.extend(entry.tokens)
            if self.ahead:
                state.lookahead.extend(state.peek_tokens(self.ahead))
            state.padding_budget = self.max_padding
            return ids.new_word
        # Script exhausted: this step is the end; the official runtime emits
        # new_word on the main path here, which the multiplexing turns into
        # (pad, new_word).
        if state.end_step is None:
            state.end_step = t
            return ids.new_word if self.ahead else ids.pad
        return ids.pad
