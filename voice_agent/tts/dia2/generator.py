"""The Dia2 step loop: one `Generation` per utterance, advanced one 80 ms frame per `step()`.

At step t the transformer is fed `[main, second, a_0 .. a_{Q-1}]` at RoPE
position t, where `a_c = grid[c, t]` (audio_bos while `t < delay[c]`). The
codes sampled at step t go to grid column t+1. Batch row 0 is the
conditional branch; row 1, present only when CFG is on, is fed `[zero, pad]`
text and shares the audio history.

Undelayed output: `aligned[c, f] = grid[c, f + delay[c]]`, so frame f is
final once step `f + max_delay - 1` has run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from voice_agent.tts.dia2.config import MAX_PADDING, Dia2Config
from voice_agent.tts.dia2.fast_path import DeviceStep, FastPath, StaticSteps, StepBuffers
from voice_agent.tts.dia2.model import Dia2Model
from voice_agent.tts.dia2.sampling import StepSettings
from voice_agent.tts.dia2.script import Entry
from voice_agent.tts.dia2.state_machine import StateMachine, TextIds, TextState

StopReason = Literal["eos", "max_context", "cancelled"]


@dataclass
class PrefixPlan:
    """Teacher-forced warm-up: prefix codes [Q, F] and the steps where its words start."""

    entries: list[Entry]
    new_word_steps: list[int]
    codes: torch.Tensor

    @property
    def frames(self) -> int:
        return int(self.codes.shape[-1])


@dataclass
class StepTrace:
    """Per-step records for debugging against the fixture's steps.npz."""

    step: list[int] = field(default_factory=list)
    input_tokens: list[np.ndarray] = field(default_factory=list)
    audio_generated: list[np.ndarray] = field(default_factory=list)
    text: list[tuple[int, int]] = field(default_factory=list)


class Generation:
    """Decoding state of one utterance: caches, audio grid, text state.

    The device work of a step runs eager (fresh buffers, int positions) or, when
    `fast_path` lends static programs, as CUDA-graph replays / compiled calls on
    their buffers; the host side (text state machine) is the same either way.
    """

    def __init__(
        self,
        model: Dia2Model,
        config: Dia2Config,
        settings: StepSettings,
        entries: list[Entry],
        *,
        bos_id: int,
        closed: bool = True,
        prefix: PrefixPlan | None = None,
        generator: torch.Generator | None = None,
        trace: StepTrace | None = None,
        fast_path: FastPath | None = None,
        seed: int | None = None,
    ) -> None:
        data = config.data
        self.model, self.config, self.settings = model, config, settings
        self.trace = trace
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.cfg = settings.cfg_scale != 1.0
        # Without CFG the unconditional branch is never read, so it is not computed.
        self.branches = 2 if self.cfg else 1
        self.max_delay = data.max_delay
        self.max_context = config.runtime.max_context_steps
        self.delays = torch.tensor(data.delay_pattern, device=self.device)
        self.machine = StateMachine(
            TextIds(
                new_word=data.text_new_word_token_id,
                pad=data.text_pad_token_id,
                action_pad=data.action_pad_token_id,
                action_new_word=data.action_new_word_token_id,
            ),
            data.second_stream_ahead,
        )
        prefix_entries = list(prefix.entries) if prefix else []
        self.prefix_words = sum(1 for e in prefix_entries if e.tokens)
        self.text = self.machine.new_state(
            prefix_entries + list(entries), settings.initial_padding, closed
        )
        self.prefix_frames = prefix.frames if prefix else 0

        # Capacity: prefix warm-up + max_context steps (+1: the restart step is fed twice).
        capacity = self.prefix_frames + self.max_delay + self.max_context + 1
        self.capacity = capacity
        self.released = False
        self.static: StaticSteps | None = None
        if fast_path is not None:
            self.static = fast_path.acquire(self, settings, self.branches, capacity, seed)
        if self.static is not None:
            self.buffers = self.static.buffers
            self.device_step = self.static.step
        else:
            self.buffers = StepBuffers.allocate(model, config, self.branches, capacity)
            self.device_step = DeviceStep(model, config, settings, self.buffers, generator)
        self.grid = self.buffers.grid
        self.tokens = self.buffers.tokens
        self.tokens[0, 0], self.tokens[0, 1] = bos_id, data.text_pad_token_id
        if self.cfg:
            self.tokens[1, 0], self.tokens[1, 1] = data.text_zero_token_id, data.text_pad_token_id
        on_cuda = self.device.type == "cuda"
        self.action_host = torch.zeros((), dtype=torch.long, pin_memory=on_cuda)
        self.action_ready = torch.cuda.Event() if on_cuda else None

        # Streaming text in: called (with the text state) when the model wants a word
        # that has not arrived; it may wait for text and append entries.
        self.on_text_needed: Callable[[TextState], None] | None = None
        self.t = 0  # next step (also its RoPE position)
        self.slot = 0  # next KV-cache index; one ahead of t after a prefix
        self.start_step = 0
        self.last_step = -1
        self.eos_cutoff: int | None = None
        self.first_word_frame: int | None = None
        self.stopped_by: StopReason | None = None
        if prefix is not None:
            self._warmup(prefix)

    # -- progress ---------------------------------------------------------------------------

    @property
    def steps_run(self) -> int:
        return self.last_step - self.start_step + 1

    @property
    def done(self) -> bool:
        if self.stopped_by is None:
            if self.eos_cutoff is not None and self.t >= self.eos_cutoff:
                self.stopped_by = "eos"
            elif self.t - self.start_step >= self.max_context or self.t + 1 >= self.capacity:
                self.stopped_by = "max_context"
        return self.stopped_by is not None

    @property
    def crop(self) -> int:
        """Frames cut from the front of the aligned grid (the prefix, when there is one)."""
        if self.first_word_frame is not None:
            return max(self.first_word_frame, 0)
        return self.start_step

    def final_frames(self) -> int:
        """Aligned frames that no later step can change: frame f is final after step f + max_delay - 1."""
        return max(self.last_step + 2 - self.max_delay, 0)

    def aligned(self, start: int, stop: int) -> torch.Tensor:
        """Undelayed codes [Q, stop - start] for aligned frames start..stop-1."""
        index = torch.arange(start, stop, device=self.device)[None, :] + self.delays[:, None]
        return self.grid.gather(1, index)

    def release(self) -> None:
        """Hand shared static buffers back once no step will run; keeps a copy of the codes."""
        if self.static is not None and not self.released:
            self.grid = self.grid[:, : self.t + 2].clone()
            self.buffers = self.device_step = self.tokens = None  # type: ignore[assignment]
        self.released = True

    # -- the step ---------------------------------------------------------------------------

    def _warmup(self, prefix: PrefixPlan) -> None:
        """Teacher-force the prefix frames 0..F-1, then restart at F-1 like the official runtime."""
        codes = prefix.codes.to(self.device)
        frames = prefix.frames
        for c, delay in enumerate(self.config.data.delay_pattern):
            self.grid[c, delay : delay + frames] = codes[c]
        new_word_steps = set(prefix.new_word_steps)
        ids = self.machine.ids
        b, step = self.buffers, self.device_step
        with torch.inference_mode():
            for t in range(frames):
                self.tokens[:, 2:] = torch.where(step.delays > t, step.bos, self.grid[:, t])
                self.model.transformer(self.tokens, b.rope, t, b.cache, t)
                action = ids.action_new_word if t in new_word_steps else ids.action_pad
                main, second = self.machine.step(t, self.text, action, forced=True)
                self.tokens[0, 0], self.tokens[0, 1] = main, second
        # Position F-1 is fed a second time (cache index F) and its codes regenerated.
        self.slot = frames
        self.t = self.start_step = max(frames - 1, 0)
        self.last_step = self.start_step - 1

    def step(self) -> bool:
        """Run one step; False when generation has stopped (EOS, context cap, cancel)."""
        if self.done:
            self.release()
            return False
        t = self.t
        with torch.inference_mode():
            if self.static is not None:
                self.static.main(t, self.slot)
            else:
                self.device_step.main(t, self.slot)
            self.slot += 1
            # On CUDA the action travels to the host while the depformer runs; the
            # only wait in the step is for that one number, with the GPU still busy.
            self.action_host.copy_(self.buffers.action, non_blocking=True)
            if self.action_ready is not None:
                self.action_ready.record()
            if self.static is not None:
                self.static.depformer()
            else:
                self.device_step.depformer(t)
            if self.action_ready is not None:
                self.action_ready.synchronize()
            action_id = int(self.action_host)
            if self.trace is not None:
                self.trace.step.append(t)
                self.trace.input_tokens.append(self.tokens.cpu().numpy().copy())
                self.trace.audio_generated.append(self.grid[:, t + 1].cpu().numpy().copy())

            if self.on_text_needed is not None and self.machine.wants_word(self.text, action_id):
                if self.machine.lacks_text(self.text):
                    self.on_text_needed(self.text)
            main, second = self.machine.step(t, self.text, action_id)
            self.tokens[0, 0], self.tokens[0, 1] = main, second
            if self.first_word_frame is None and main == self.machine.ids.new_word:
                self.first_word_frame = t - self.settings.initial_padding
            if self.trace is not None:
                self.trace.text.append((main, second))
        self.last_step = t
        self.t = t + 1
        if self.eos_cutoff is None and self.text.end_step is not None:
            self.eos_cutoff = self.text.end_step + self.max_delay + MAX_PADDING
        return True

    def cancel(self) -> None:
        self.stopped_by = "cancelled"
        self.release()
