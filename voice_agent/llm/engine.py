"""`OpenSourceLLM`: load an instruct LLM through the fallback chain and chat with it, streaming.

Loading: resolve the model (`hub.ensure_model_exists`, offline-aware), load the tokenizer,
then run the strategy chain from `llm.strategies` through `loading.run_chain`; the
`LoadReport` (every attempt, skipped, failed or chosen) is `engine.report`.

Chatting: one generation at a time per engine. A caller waits for the model at most
`busy_timeout_s` and then gets `BusyError`. The prompt is built and trimmed to the context
under the same lock (Hugging Face tokenizers are not safe to share across threads while in
use), and `generate()` runs in a worker thread that feeds text pieces to the caller; the
lock is released when generation ends, whether or not the caller reads to the end.

Prompt cache: a conversation's next prompt starts with the last one (system prompt,
history, the last reply), so the KV cache of the last generation is kept with the
token ids it holds, cut back to the part the next prompt shares, and only the rest is
prefilled (`PromptCache`, `last_prefill`).

Tools: `stream_reply(tools=...)` renders them through the model's chat template and
parses what the model writes back (`llm.tool_calls`): the pieces carry only what the
model says, never the call itself, and `Reply.tool_calls` holds the calls.
"""

from __future__ import annotations

import copy
import itertools
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voice_agent.core.cancel import is_cancelled
from voice_agent.core.config import (
    DEFAULT_LLM_CPU,
    DEFAULT_LLM_CUDA,
    Settings,
    configured_models,
    get_settings,
)
from voice_agent.core.errors import BusyError
from voice_agent.core.hardware import HardwareInfo, probe_hardware
from voice_agent.core.hub import ModelNotFoundError, ensure_model_exists
from voice_agent.core.loading import LoadReport, explain_error, free_memory, run_chain
from voice_agent.core.threads import CPU_CORES
from voice_agent.llm.base import (
    ChatMessage,
    GenerationSettings,
    LLMCapabilities,
    Reply,
    ReplyStream,
    ToolSpec,
)
from voice_agent.llm.errors import GenerationError
from voice_agent.llm.prompt import (
    FALLBACK_CHAT_TEMPLATE,
    check_generation_settings,
    fit_to_context,
    normalize_messages,
    render,
)
from voice_agent.llm.strategies import LLMStrategy, plan_chain, to_strategies
from voice_agent.llm.streaming import Finished, TokenFeed, stop_signal
from voice_agent.llm.tool_calls import check_tools, forced_prefix, supports_tools, with_tool_calls

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Everything you write is spoken aloud, so answer in "
    "one to three short, natural sentences, as you would say them. Never use markdown, "
    "lists, headings, code, emoji or links; say numbers and symbols in words when that "
    "reads better aloud."
)
DEFAULT_BUSY_TIMEOUT_S = 30.0
# On the CPU a decode step (one token) leaves one core of the LLM's share free (at least
# one thread); the prompt's prefill takes all of it. One token's step is bound by moving
# the weights and by per-layer overhead, not by arithmetic: the Qwen2.5-1.5B int8 shape
# on 2 cores took 0.11-0.12 s a step on 1 thread and 0.12-0.13 s on 2, and beside a 35 %
# busy loop (what the browser takes) 0.10-0.11 s against 0.16 s, since two threads wait
# for each other at every barrier; its 18-token prefill took 0.36 s on 2 threads and
# 0.6-0.7 s on 1. The core left over serves the voice, the microphone and the browser.
# Measured on 2 cores only: on more, one core less keeps most of the decode's threads.
DECODE_LEAVE = 1
FALLBACK_CONTEXT = 2048
GENERIC_REASON = explain_error(
    Exception()
)  # what loading.explain_error says when it knows nothing  # when a config names no context length

Progress = Callable[[float, str], None]


@dataclass
class PromptCache:
    """The KV cache left by the last generation and the token ids it holds, in order."""

    ids: list[int]
    cache: Any


@dataclass(frozen=True)
class Prefill:
    """What the last generation's prompt cost: its tokens, and how many came from the cache."""

    prompt_tokens: int
    reused_tokens: int

    @property
    def computed_tokens(self) -> int:
        return self.prompt_tokens - self.reused_tokens


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids `a` and `b` have in common."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def choose_model(
    model_name: str | None, settings: Settings, hardware: HardwareInfo
) -> tuple[str, str | None]:
    """The model reference to load and, for a default, the note saying why it was chosen."""
    if model_name:
        return model_name, None
    if settings.llm_model_name:
        return settings.llm_model_name, None
    # The same rule `doctor` and `prefetch` use, so they name the model that loads here.
    if configured_models(settings, hardware.cuda_available)["llm"] == DEFAULT_LLM_CUDA:
        return DEFAULT_LLM_CUDA, (
            f"MODEL_SERVER_MODEL_NAME is unset and a CUDA GPU is available: using {DEFAULT_LLM_CUDA} "
            "(7B in 4-bit needs about 5 GiB of GPU memory)."
        )
    return DEFAULT_LLM_CPU, (
        f"MODEL_SERVER_MODEL_NAME is unset and there is no usable CUDA GPU: using {DEFAULT_LLM_CPU}, "
        "a small instruct model a laptop CPU can run (a 7B model needs about 15 GiB of RAM in "
        "bf16 and is several times slower; see README, LLM benchmark). Set "
        "MODEL_SERVER_MODEL_NAME to override."
    )


class OpenSourceLLM:
    """An instruct causal LM with a chat template, loaded by the fallback chain.

    It streams and stops within a token of a cancel (`capabilities`).

    Args:
        model_name: hub id or local directory; default MODEL_SERVER_MODEL_NAME, else a model
            that fits the hardware (see `choose_model`).
        settings: default `get_settings()`.
        max_memory: per-device caps in bytes on top of free memory, e.g. {"cpu": 8 << 30, 0: ...}.
        strategies: an explicit order of strategy names (`strategies.all_strategies`)
            instead of the planned chain.
        busy_timeout_s: how long a caller waits for a busy model before `BusyError`.
        system_prompt: used when a request brings none.
        progress: called as `progress(fraction, message)` while loading.
        reuse_prompt_cache: keep the last generation's KV cache and prefill only the part
            of the next prompt it does not hold (off: every prompt is prefilled whole).

    Raises:
        ModelNotFoundError: the model is nowhere (fails fast offline); `.report` is set.
        ModelLoadError: every strategy was skipped or failed; `.report` says why.
    """

    def __init__(
        self,
        model_name: str | None = None,
        settings: Settings | None = None,
        *,
        max_memory: Mapping[int | str, int] | None = None,
        strategies: Sequence[str] | None = None,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        progress: Progress | None = None,
        reuse_prompt_cache: bool = True,
    ) -> None:
        self.settings = settings or get_settings()
        self.reuse_prompt_cache = reuse_prompt_cache
        self._prompt_cache: PromptCache | None = None
        self.last_prefill: Prefill | None = None
        self.busy_timeout_s = busy_timeout_s
        self.system_prompt = system_prompt
        self._lock = threading.Lock()
        self._current_stop: threading.Event | None = None
        self._generations = itertools.count(1)  # numbers the worker threads, for logs
        hardware = probe_hardware()
        ref, note = choose_model(model_name, self.settings, hardware)
        self.model_id = ref
        self.report = LoadReport("llm", ref)
        if note:
            self.report.notes.append(note)
            log.info("%s", note)
        report_progress = progress or (lambda fraction, message: None)
        self._progress = report_progress
        report_progress(0.0, f"resolving {ref}")
        try:
            resolved = ensure_model_exists(ref, self.settings)
        except ModelNotFoundError as exc:
            exc.report = self.report
            self.report.notes.append(str(exc))
            raise
        self.path: Path = resolved.path
        self.report.resolved_path, self.report.source = str(resolved.path), resolved.source
        report_progress(0.05, "loading the tokenizer")
        self.tokenizer = self._load_tokenizer()
        chain = plan_chain(self.settings, hardware, strategies)
        self.report.notes.append("strategy order: " + " -> ".join(s.name for s in chain))
        if not self.settings.prefer_4bit:
            self.report.notes.append("MODEL_SERVER_PREFER_4BIT=0: quantized strategies left out.")
        self._strategies = {s.name: s for s in chain}
        steps = to_strategies(
            chain, self.path, self.settings, hardware, self._load_model, max_memory
        )
        self.model = run_chain(self.report, steps)
        chosen = self.report.chosen
        assert chosen is not None  # run_chain raises otherwise
        self.strategy: LLMStrategy = self._strategies[chosen.strategy]
        self.context_length = self._context_length()
        self.capabilities = LLMCapabilities(streaming=True, cancel=True, tools=True)
        # Tools go through the model's own template when it has them, else the generic form.
        self.tool_format = "template" if supports_tools(self.tokenizer) else "generic-json"
        report_progress(1.0, self.report.summary())

    # --- loading --------------------------------------------------------------------------

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=self.settings.offline)
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
            self.report.notes.append(
                "the checkpoint has no chat template; using ChatML (replies may be worse)."
            )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def _load_model(self, strategy: LLMStrategy, kwargs: dict[str, Any]) -> Any:
        from transformers import AutoModelForCausalLM

        tried = list(self._strategies).index(strategy.name)
        self._progress(0.1 + 0.85 * tried / len(self._strategies), f"loading with {strategy.name}")
        try:
            model = AutoModelForCausalLM.from_pretrained(self.path, **kwargs)
        except Exception as exc:
            if strategy.quantization and explain_error(exc) == GENERIC_REASON:
                # transformers reports quantization trouble as a generic conversion error;
                # say which library failed so the report's reason points at it.
                raise RuntimeError(
                    f"bitsandbytes {strategy.quantization} quantization failed: "
                    f"{type(exc).__name__}: {str(exc).strip()[:300]}"
                ) from exc
            raise
        model.eval()
        if strategy.quantization == "int8-dynamic":
            from voice_agent.llm.strategies import quantize_int8_dynamic

            self._progress(0.1 + 0.85 * tried / len(self._strategies), "int8 weights")
            model = quantize_int8_dynamic(model)
        # device_map="auto" may quietly put layers on the CPU or leave them on disk ("meta");
        # an all-GPU strategy that did so would be slow, so it counts as not fitting.
        placed = {p.device.type for p in model.parameters()}
        if strategy.device == "cuda" and not strategy.offload and placed != {"cuda"}:
            del model
            free_memory()
            raise MemoryError(
                "out of memory: the model did not fit on the GPU (accelerate placed weights on "
                f"{', '.join(sorted(placed - {'cuda'}))})"
            )
        return model

    def _context_length(self) -> int:
        config = self.model.config
        n = getattr(config, "max_position_embeddings", None) or FALLBACK_CONTEXT
        tokenizer_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_max, int) and 0 < tokenizer_max < n:
            n = tokenizer_max
        return int(n)

    @property
    def device(self) -> str:
        return str(self.model.device)

    def describe(self) -> dict[str, object]:
        """For diagnostics: what is loaded, how, and the load report."""
        return {
            "model_id": self.model_id,
            "path": str(self.path),
            "strategy": self.strategy.name,
            "device": self.device,
            "dtype": self.strategy.dtype,
            "quantization": self.strategy.quantization,
            "context_length": self.context_length,
            "tool_format": self.tool_format,
            "busy": self._lock.locked(),
            "report": self.report.as_dict(),
        }

    def close(self) -> None:
        """Drop the model and free its memory (after any running generation)."""
        with self._lock:
            self.model = None
            self._prompt_cache = None
        free_memory()

    # --- chatting -------------------------------------------------------------------------

    def count_tokens(
        self,
        messages: list[ChatMessage] | str,
        system_prompt: str | None = None,
        *,
        tools: Sequence[ToolSpec] | None = None,
    ) -> int:
        """Prompt tokens for `messages` through the chat template (system prompt and tools
        included)."""
        checked = self._messages(messages, system_prompt)
        specs = check_tools(tools)
        with self._acquire(None):
            return len(render(self.tokenizer, checked, specs or None))

    def generate_reply(
        self,
        messages: list[ChatMessage] | str,
        settings: GenerationSettings | None = None,
        cancel: object | None = None,
        system_prompt: str | None = None,
        *,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: str = "auto",
        wait_s: float | None = None,
    ) -> Reply:
        """Answer `messages` (or one user string) and return the whole reply.

        Args:
            messages: the conversation, oldest first, or a single user message.
            settings: sampling settings; temperature 0 is greedy.
            cancel: a `CancelToken` or `threading.Event`; when set, generation stops after
                the current token and the partial reply comes back with finish_reason
                "cancelled".
            system_prompt: replaces the conversation's system message; "" for none.
            tools: function tools the model may call (OpenAI's shape); its calls come
                back in `Reply.tool_calls` (finish_reason "tool_calls").
            tool_choice: "auto", "none" (tools not shown), "required" (some call) or a
                tool's name (that call): the last two start the model's turn with the call.
            wait_s: how long to wait for a busy model (default `busy_timeout_s`).

        Raises:
            InputError: a specific subclass for each kind of bad input (llm.errors).
            BusyError: another request held the model for longer than `wait_s`.
            GenerationError: the model failed while generating.
        """
        return self.stream_reply(
            messages,
            settings,
            cancel,
            system_prompt,
            tools=tools,
            tool_choice=tool_choice,
            wait_s=wait_s,
        ).collect()

    def stream_reply(
        self,
        messages: list[ChatMessage] | str,
        settings: GenerationSettings | None = None,
        cancel: object | None = None,
        system_prompt: str | None = None,
        *,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: str = "auto",
        wait_s: float | None = None,
    ) -> ReplyStream:
        """Like `generate_reply`, but iterate the returned stream for text pieces as they come.

        Bad input and `BusyError` are raised here, before iteration. Generation starts at
        once; `stream.reply` is set when the iterator is exhausted. Closing the iterator
        early (or dropping it) cancels the generation.
        """
        start = time.perf_counter()
        gen = settings or GenerationSettings()
        check_generation_settings(gen, self.context_length)
        checked = self._messages(messages, system_prompt)
        specs = check_tools(tools, tool_choice)
        if tool_choice == "none":
            specs = []
        template_tools = self.tool_format == "template"
        prefix = forced_prefix(tool_choice, template_tools=template_tools) if specs else ""
        if self.model is None:
            raise GenerationError("The language model was closed.")
        self._acquire(wait_s)
        try:
            fitted = fit_to_context(
                self.tokenizer, checked, gen.max_new_tokens, self.context_length, specs, prefix
            )
        except BaseException:
            self._lock.release()
            raise
        if fitted.dropped:
            log.info("dropped %d old messages to fit the context", fitted.dropped)
        stop_event = threading.Event()
        self._current_stop = stop_event
        pieces: queue.Queue = queue.Queue()
        feed = TokenFeed(self.tokenizer, pieces, gen.stop, start)

        on_cpu = self.device == "cpu"

        def halted() -> bool:
            return is_cancelled(cancel) or stop_event.is_set()

        def should_stop() -> bool:  # in the generation thread, once per step
            if on_cpu:
                # The voice making a phrase goes first; then the cores are split anew. The
                # prompt is in (this runs after each step): the next steps decode.
                CPU_CORES.give_way("llm", halted, leave=DECODE_LEAVE)
            if is_cancelled(cancel):
                stop_event.set()
            return stop_event.is_set() or feed.stop_hit

        worker = threading.Thread(
            target=self._generate,
            args=(fitted.input_ids, gen, feed, should_stop, stop_event, pieces, on_cpu),
            name=f"llm-generate-{next(self._generations)}",
            daemon=True,
        )
        stream = ReplyStream(pieces=iter(()))
        stream.pieces = self._pieces(stream, pieces, worker, feed, stop_event, gen, fitted, start)
        # A stream dropped unread never runs its generator's cleanup; stop generating for
        # nobody when it is collected instead of running on to max_new_tokens.
        weakref.finalize(stream, stop_event.set)
        if specs:
            with_tool_calls(stream, prefix)
        if is_cancelled(cancel):
            stop_event.set()
            self._release(stop_event)
            pieces.put(Finished())
        else:
            worker.start()
        return stream

    def cancel(self) -> bool:
        """Stop the generation running now, if any (the Stop button). True if one was running."""
        event = self._current_stop
        if event is None or not self._lock.locked():
            return False
        event.set()
        return True

    # --- internals ------------------------------------------------------------------------

    def _messages(
        self, messages: list[ChatMessage] | str, system_prompt: str | None
    ) -> list[ChatMessage]:
        # Only a real list is scanned here: None, a number or a dict must reach
        # normalize_messages, which rejects them with InvalidMessageError (not a TypeError).
        has_system = (
            isinstance(messages, Sequence)
            and not isinstance(messages, str | bytes | bytearray)
            and any(isinstance(m, Mapping) and m.get("role") == "system" for m in messages)
        )
        if system_prompt is None and not has_system:
            system_prompt = self.system_prompt
        return normalize_messages(messages, system_prompt, self.settings.max_text_chars)

    def _acquire(self, wait_s: float | None) -> _Held:
        wait = self.busy_timeout_s if wait_s is None else wait_s
        if not self._lock.acquire(timeout=max(wait, 0.0)):
            raise BusyError(
                f"The language model is busy with another request (waited {wait:g} s); try again shortly.",
                retry_after_s=max(1.0, min(wait, 10.0)),
            )
        return _Held(self._lock)

    def _release(self, stop_event: threading.Event) -> None:
        if self._current_stop is stop_event:
            self._current_stop = None
        self._lock.release()

    def _generate(
        self,
        input_ids: list[int],
        gen: GenerationSettings,
        feed: TokenFeed,
        should_stop: Callable[[], bool],
        stop_event: threading.Event,
        pieces: queue.Queue,
        on_cpu: bool = False,
    ) -> None:
        """Worker thread: run `generate()`, then release the model and mark the end."""
        import torch
        from transformers import StoppingCriteriaList

        error: BaseException | None = None
        if on_cpu:
            CPU_CORES.working("llm")  # shares the cores with the voice while both compute
        try:
            model = self.model
            ids = torch.tensor([input_ids], device=model.device)
            config = copy.deepcopy(model.generation_config)
            config.max_new_tokens = gen.max_new_tokens
            config.max_length = None
            if gen.temperature > 0:
                config.do_sample, config.temperature, config.top_p = (
                    True,
                    gen.temperature,
                    gen.top_p,
                )
            else:
                # Greedy: sampling knobs at transformers' neutral values, or generate() would
                # fill them from the checkpoint's sampling defaults and warn.
                config.update(
                    do_sample=False, temperature=1.0, top_p=1.0, top_k=50, typical_p=1.0, min_p=None
                )
            if config.pad_token_id is None:
                config.pad_token_id = self.tokenizer.pad_token_id
            if gen.seed is not None:
                torch.manual_seed(gen.seed)
            cache, reused = self._take_cache(input_ids)
            self.last_prefill = Prefill(len(input_ids), reused)
            log.debug("prompt of %d tokens, %d of them from the kept cache", len(input_ids), reused)
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    generation_config=config,
                    streamer=feed,
                    stopping_criteria=StoppingCriteriaList([stop_signal(should_stop)]),
                    cache=cache,
                )
            if self.reuse_prompt_cache and cache is not None:
                held = cache.get_seq_length()
                sequences = getattr(out, "sequences", out)
                self._prompt_cache = PromptCache(sequences[0, :held].tolist(), cache)
        except BaseException as exc:  # handed to the reader, who raises it
            error = exc
            log.exception("LLM generation failed")
        finally:
            if on_cpu:
                CPU_CORES.working("llm", False)
            try:
                self._release(stop_event)
            finally:  # the reader must hear the end whatever happens
                pieces.put(Finished(error))

    def _take_cache(self, input_ids: list[int]) -> tuple[Any, int]:
        """A KV cache for `input_ids` and how many of them it already holds.

        The kept cache is taken (a failed generation leaves none behind) and cut back
        to the prefix it shares with `input_ids`, less at least one token: `generate`
        needs one to compute the first logits from.
        """
        from transformers import DynamicCache

        kept, self._prompt_cache = self._prompt_cache, None
        if not self.reuse_prompt_cache:
            return None, 0
        fresh = DynamicCache(config=self.model.config)
        if kept is None or not kept.cache.is_croppable:
            return fresh, 0
        keep = min(shared_prefix(kept.ids, input_ids), len(input_ids) - 1)
        held = kept.cache.get_seq_length()
        if keep <= 0 or held != len(kept.ids):
            return fresh, 0
        if held > keep:
            kept.cache.crop(keep - held)
        return kept.cache, keep

    def _pieces(
        self,
        stream: ReplyStream,
        pieces: queue.Queue,
        worker: threading.Thread,
        feed: TokenFeed,
        stop_event: threading.Event,
        gen: GenerationSettings,
        fitted: Any,
        start: float,
    ) -> Iterator[str]:
        finished = False
        try:
            while True:
                item = pieces.get()
                if isinstance(item, Finished):
                    finished = True
                    if worker.ident is not None:
                        # Its last act was queueing this: wait until it is gone, so nothing
                        # of the generation outlives the reply (interpreter exit included).
                        worker.join()
                    if item.error is not None:
                        raise GenerationError(
                            f"The language model failed while answering: {type(item.error).__name__}: {item.error}"
                        ) from item.error
                    break
                yield item
        finally:
            if not finished:
                stop_event.set()  # the reader went away: stop generating for nobody
        if stop_event.is_set() and not feed.stop_hit:
            reason = "cancelled"
        elif feed.stop_hit or feed.completion_tokens < gen.max_new_tokens:
            reason = "stop"
        else:
            reason = "length"
        stream.reply = Reply(
            text=feed.emitted,
            finish_reason=reason,  # type: ignore[arg-type]
            prompt_tokens=len(fitted.input_ids),
            completion_tokens=feed.completion_tokens,
            seconds=time.perf_counter() - start,
            first_token_seconds=feed.first_token_seconds,
            trimmed_messages=fitted.dropped,
        )


class _Held:
    """Context manager releasing a lock that `_acquire` already took."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
