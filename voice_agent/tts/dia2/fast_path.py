"""The device side of a Dia2 step, eager or static (CUDA graphs, torch.compile), with fallback.

A step is two device programs around one host decision:

1. `main`: feed the audio codes of grid column t, run the transformer at
   position t, sample the action (pad / new word) and codebook 0;
2. `depformer`: the Q-1 depformer stages, each sampling the next codebook;
   the frame's codes go to grid column t+1.

Between the two the action is copied to the host (asynchronously on CUDA), and
the host's text state machine reads it once the depformer is queued: the only
wait in a step is for that one number, while the GPU is still busy.

*Eager* steps take positions as Python ints and slice the KV cache; this is
the reference path (bit-exact parity on CPU). *Static* steps keep the position
and the cache index in device tensors and attend over the whole preallocated
cache with a mask, so every step has the same shapes and reads nothing from
the host. That is what a `torch.cuda.CUDAGraph` captures (two graphs, one per
program) and what `torch.compile` compiles once. Static programs own their
buffers (KV caches, audio grid, step inputs), so one generation at a time uses
them; a second concurrent generation runs eager.

`FastPath` picks the path, builds the static programs, and falls back to eager
steps if capture or compilation fails; `used` and `note` say what runs and why.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Literal

import torch

from voice_agent.tts.dia2.config import Dia2Config
from voice_agent.tts.dia2.model import Dia2Model, KVCache, Rotary, StaticSlot
from voice_agent.tts.dia2.sampling import (
    SamplingConfig,
    StepSettings,
    cfg_filter,
    mask_special,
    sample,
)

log = logging.getLogger(__name__)

FastPathMode = Literal["auto", "eager", "compile", "cuda_graph", "static"]
# "static" runs the static programs without capture or compilation: what the CUDA
# graphs replay, runnable on any device (tests and debugging).
FAST_PATHS: tuple[str, ...] = ("auto", "eager", "compile", "cuda_graph", "static")
# Static caches are sized in these steps, so a slightly longer prefix reuses the programs.
CAPACITY_QUANTUM = 256


@dataclass
class StepBuffers:
    """Everything a step reads and writes on the device, allocated once per generation
    (eager) or once per static program (reused by every generation)."""

    tokens: torch.Tensor  # [B, 2 + Q] long: step inputs; the host writes the text columns
    grid: torch.Tensor  # [Q, capacity] long: delayed audio codes
    cache: KVCache
    dep_cache: KVCache
    rope: Rotary
    dep_rope: Rotary | None
    hidden: torch.Tensor  # [B, 1, D]: the transformer's output, read by the depformer
    action: torch.Tensor  # [] long
    codes: torch.Tensor  # [Q] long: the frame being sampled
    pos: torch.Tensor  # [1] long: step / RoPE position (static steps)
    slot: torch.Tensor  # [1] long: KV-cache index (static steps)
    positions: torch.Tensor  # [capacity] long: 0..capacity-1, for the attention mask

    @classmethod
    def allocate(
        cls, model: Dia2Model, config: Dia2Config, branches: int, capacity: int
    ) -> StepBuffers:
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        data = config.data
        rope, dep_rope = model.rotaries(capacity, device)
        cache, dep_cache = model.allocate_caches(branches, capacity, device, dtype)
        return cls(
            tokens=torch.zeros((branches, data.channels), dtype=torch.long, device=device),
            grid=torch.full((data.num_codebooks, capacity), data.audio_pad_token_id, device=device),
            cache=cache,
            dep_cache=dep_cache,
            rope=rope,
            dep_rope=dep_rope,
            hidden=torch.zeros(
                (branches, 1, config.model.decoder.n_embd), dtype=dtype, device=device
            ),
            action=torch.zeros((), dtype=torch.long, device=device),
            codes=torch.zeros(data.num_codebooks, dtype=torch.long, device=device),
            pos=torch.zeros(1, dtype=torch.long, device=device),
            slot=torch.zeros(1, dtype=torch.long, device=device),
            positions=torch.arange(capacity, device=device),
        )

    @property
    def capacity(self) -> int:
        return int(self.grid.shape[1])


class DeviceStep:
    """The two device programs of a step over one set of buffers.

    `pos` and `slot` are ints (eager: exact, slices the cache) or the buffers'
    device tensors (static: fixed shapes, no host reads).
    """

    def __init__(
        self,
        model: Dia2Model,
        config: Dia2Config,
        settings: StepSettings,
        buffers: StepBuffers,
        generator: torch.Generator | None,
    ) -> None:
        data = config.data
        self.model, self.settings, self.buffers = model, settings, buffers
        self.generator = generator
        device = buffers.grid.device
        self.cfg = settings.cfg_scale != 1.0
        self.branches = int(buffers.tokens.shape[0])
        self.delays = torch.tensor(data.delay_pattern, device=device)
        self.bos = torch.full((data.num_codebooks,), data.audio_bos_token_id, device=device)
        self.specials = torch.tensor(
            [data.audio_pad_token_id, data.audio_bos_token_id], device=device
        )

    def main(self, pos: int | torch.Tensor, slot: int | torch.Tensor) -> None:
        """Transformer step at `pos`: writes `hidden`, `action` and `codes[0]`."""
        b, audio = self.buffers, self.settings.audio
        if isinstance(pos, torch.Tensor):
            column = b.grid.index_select(1, pos)[:, 0]
            index: int | StaticSlot = StaticSlot(slot, (b.positions <= slot)[None])
        else:
            column, index = b.grid[:, pos], slot
        b.tokens[:, 2:] = torch.where(self.delays > pos, self.bos, column)
        hidden, action_logits, cb0_logits = self.model.transformer(
            b.tokens, b.rope, pos, b.cache, index
        )
        b.hidden.copy_(hidden)
        b.action.copy_(self.pick(action_logits, self.settings.text))
        cb0 = mask_special(self.filtered(cb0_logits), self.specials)
        b.codes[0].copy_(sample(cb0, audio, self.generator))

    def depformer(self, pos: int | torch.Tensor) -> None:
        """The depformer stages for the frame of `main`: codes[1:], then grid column pos+1."""
        b, audio, depformer = self.buffers, self.settings.audio, self.model.depformer
        projected = depformer.project(b.hidden)
        code = b.codes[0]
        for stage in range(b.codes.shape[0] - 1):
            logits = depformer(
                stage, code.expand(self.branches), projected, b.dep_rope, b.dep_cache
            )
            code = self.pick(logits, audio)
            b.codes[stage + 1].copy_(code)
        if isinstance(pos, torch.Tensor):
            b.grid.index_copy_(1, pos + 1, b.codes[:, None])
        else:
            b.grid[:, pos + 1] = b.codes

    def filtered(self, logits: torch.Tensor) -> torch.Tensor:
        """Conditional-branch logits [V], CFG-filtered when CFG is on."""
        if not self.cfg:
            return logits[0]
        return cfg_filter(logits[0], logits[1], self.settings.cfg_scale, self.settings.cfg_filter_k)

    def pick(self, logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
        return sample(self.filtered(logits), sampling, self.generator)


def _stochastic(settings: StepSettings) -> bool:
    return any(s.temperature > 0 and s.top_k != 1 for s in (settings.text, settings.audio))


class StaticSteps:
    """Static-shape step programs for one (batch, capacity, sampling) key.

    mode "cuda_graph" replays two captured graphs, "compile" calls the
    torch.compile'd programs, and "static" calls them eagerly (what the graphs
    capture, runnable on CPU; the tests use it to check the static path).
    """

    def __init__(
        self,
        model: Dia2Model,
        config: Dia2Config,
        settings: StepSettings,
        branches: int,
        capacity: int,
        mode: str,
        compile_backend: str = "inductor",
    ) -> None:
        self.mode, self.settings, self.branches = mode, settings, branches
        self.buffers = StepBuffers.allocate(model, config, branches, capacity)
        device = self.buffers.grid.device
        self.generator = torch.Generator(device=device)
        self.step = DeviceStep(model, config, settings, self.buffers, self.generator)
        self.pad = config.data.audio_pad_token_id
        self._main, self._depformer = self.step.main, self.step.depformer
        self._graphs: tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph] | None = None
        if mode == "compile":
            self._main = torch.compile(self.step.main, backend=compile_backend, dynamic=False)
            self._depformer = torch.compile(
                self.step.depformer, backend=compile_backend, dynamic=False
            )
        elif mode == "cuda_graph" and device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        elif mode not in ("cuda_graph", "static"):
            raise ValueError(f"unknown static step mode {mode!r}")

    def matches(self, settings: StepSettings, branches: int, capacity: int) -> bool:
        return (
            self.settings == settings
            and self.branches == branches
            and self.buffers.capacity >= capacity
        )

    def prepare(self) -> None:
        """Warm up (compiles) and, for CUDA graphs, capture. Raises on any failure."""
        b = self.buffers
        if self.mode != "cuda_graph":
            with torch.inference_mode():
                for _ in range(2):
                    self._main(b.pos, b.slot)
                    self._depformer(b.pos)
            self.reset(0)
            return
        # Kernel selection and lazy allocations happen in the warm-up, on a side
        # stream as capture requires; the graphs then replay the same kernels.
        stream = torch.cuda.Stream(device=b.grid.device)
        stream.wait_stream(torch.cuda.current_stream(b.grid.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):
                self.step.main(b.pos, b.slot)
                self.step.depformer(b.pos)
        torch.cuda.current_stream(b.grid.device).wait_stream(stream)
        graphs = []
        for program in (lambda: self.step.main(b.pos, b.slot), lambda: self.step.depformer(b.pos)):
            graph = torch.cuda.CUDAGraph()
            if _stochastic(self.settings):
                register = getattr(graph, "register_generator_state", None)
                if register is None:
                    raise RuntimeError(
                        "this PyTorch cannot capture a seeded generator in a CUDA graph "
                        "(no CUDAGraph.register_generator_state); greedy sampling would work"
                    )
                register(self.generator)
            with torch.inference_mode(), torch.cuda.graph(graph):
                program()
            graphs.append(graph)
        self._graphs = (graphs[0], graphs[1])
        self.reset(0)

    def reset(self, seed: int | None) -> None:
        """Ready the buffers for a new generation (caches need no clearing: masked)."""
        self.buffers.grid.fill_(self.pad)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def main(self, t: int, slot: int) -> None:
        b = self.buffers
        # fill_ with a Python number is a kernel launch on CUDA, not a sync.
        b.pos.fill_(t)
        b.slot.fill_(slot)
        if self._graphs is not None:
            self._graphs[0].replay()
        else:
            self._main(b.pos, b.slot)

    def depformer(self) -> None:
        if self._graphs is not None:
            self._graphs[1].replay()
        else:
            self._depformer(self.buffers.pos)


class FastPath:
    """Which step path a runtime uses, with its static programs and the fallback record.

    Attributes:
        requested: what the caller asked for (one of `FAST_PATHS`).
        used: the path that actually runs: "eager", "compile", "cuda_graph" or "static".
        note: why `used` differs from what was asked (None when it does not).
    """

    def __init__(
        self,
        model: Dia2Model,
        config: Dia2Config,
        requested: str = "eager",
        *,
        compile_backend: str = "inductor",
    ) -> None:
        if requested not in FAST_PATHS:
            raise ValueError(f"fast_path must be one of {', '.join(FAST_PATHS)}, got {requested!r}")
        self.model, self.config = model, config
        self.requested, self.compile_backend = requested, compile_backend
        self.device = next(model.parameters()).device
        self.note: str | None = None
        self._steps: StaticSteps | None = None
        self._owner: weakref.ref | None = None
        self._lock = threading.Lock()
        if requested == "auto":
            self.used = "cuda_graph" if self.device.type == "cuda" else "eager"
            if self.device.type != "cuda":
                self.note = "auto on CPU: eager steps (CUDA graphs need CUDA; compile is opt-in)"
        elif requested == "cuda_graph" and self.device.type != "cuda":
            self.used = "eager"
            self._fall_back("CUDA graphs need a CUDA device; this model is on " + str(self.device))
        else:
            self.used = requested

    @property
    def static(self) -> bool:
        return self.used in ("compile", "cuda_graph", "static")

    def capacity(self, needed: int) -> int:
        return -(-needed // CAPACITY_QUANTUM) * CAPACITY_QUANTUM

    def acquire(
        self, owner: object, settings: StepSettings, branches: int, needed: int, seed: int | None
    ) -> StaticSteps | None:
        """Static programs for a new generation `owner`, or None to run it eager.

        Builds (captures / compiles) them when none match; a failure switches the
        runtime to eager steps for good and records why. The programs stay lent
        to `owner` until it is released (`owner.released`) or garbage-collected.
        """
        if not self.static:
            return None
        with self._lock:
            current = self._owner() if self._owner is not None else None
            if current is not None and not getattr(current, "released", True):
                log.debug("Dia2 static step buffers busy; this generation runs eager")
                return None
            steps = self._build(settings, branches, needed)
            if steps is None:
                return None
            steps.reset(seed)
            self._owner = weakref.ref(owner)
            return steps

    def prepare(self, settings: StepSettings, branches: int, needed: int) -> None:
        """Build the static programs now (at load time) so a failure shows before any request."""
        if self.static:
            with self._lock:
                self._build(settings, branches, needed)

    def _build(self, settings: StepSettings, branches: int, needed: int) -> StaticSteps | None:
        if self._steps is not None and self._steps.matches(settings, branches, needed):
            return self._steps
        self._steps = None  # frees the old buffers and graphs first
        try:
            steps = StaticSteps(
                self.model,
                self.config,
                settings,
                branches,
                self.capacity(needed),
                self.used,
                self.compile_backend,
            )
            steps.prepare()
        except Exception as exc:  # any capture / compile failure: eager from now on
            self._fall_back(f"{self.used} failed: {type(exc).__name__}: {exc}")
            return None
        self._steps = steps
        return steps

    def _fall_back(self, reason: str) -> None:
        asked = self.used if self.used != "eager" else self.requested
        self.used, self.note, self._steps = "eager", reason, None
        log.warning("Dia2 fast path %s unavailable, using eager steps: %s", asked, reason)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
