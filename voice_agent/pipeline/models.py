"""The cached loader: every engine loads once per process and is shared by everyone.

`get_models()` returns the process-wide `LoadedModels`. It loads the LLM, then
Whisper, then the TTS (in that order, so the biggest model gets first pick of
memory), warms each up once, and hands the same instances to every browser
session and API request. Loading is eager at launch by default and lazy (each
model on first use) with `MODEL_LOADING=lazy`; `background=True` loads on a
thread so the UI can show progress meanwhile.

A model that fails to load does not stop the others: its `LoadReport` and a
plain reason are recorded, `require()` raises `ModelUnavailableError` with that
reason, and the agent runs degraded (text only without TTS, typed input only
without STT, no reply without the LLM). A failure that may fix itself (the LLM
server of `LLM_BACKEND=openai` not up yet) is looked at again when the
component is next needed (a turn, a request, /health, Diagnostics), at most
every `RECOVER_EVERY_S`: one quick check, and once it passes the component
loads again and is ready.

The LLM is loaded here (`OpenSourceLLM`), or with `LLM_BACKEND=openai` it is
a client of a serving engine at `LLM_BASE_URL` (`OpenAICompatLLM`); with
`MODEL_SERVER_REMOTE=1` the engines are those of a `serve` process (the LLM too,
unless `LLM_BACKEND=openai` sends it to its serving engine).

The models also hold one admission gate per engine (`gates`, see
`voice_agent.pipeline.admission`): REST requests and conversation turns on the
same engine queue in the same line. An engine that serves several callers at
once (`capabilities.concurrency`, an LLM on a batching server) gets that many
slots in its gate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast, overload

from voice_agent.core.config import Settings, get_settings
from voice_agent.core.errors import ModelLoadError, ModelUnavailableError
from voice_agent.core.loading import Attempt, LoadReport, explain_error
from voice_agent.pipeline.admission import EngineGate, engine_gates

if TYPE_CHECKING:
    from voice_agent.llm.base import LLMEngine
    from voice_agent.stt.base import STTEngine, WordTimingSTT
    from voice_agent.tts.base import TTSEngine

log = logging.getLogger(__name__)

COMPONENTS = ("llm", "stt", "tts")
LABELS = {"llm": "language model", "stt": "speech recognition", "tts": "speech synthesis"}
Status = Literal["pending", "loading", "ready", "failed"]
Progress = Callable[[str, float, str], None]
StepProgress = Callable[[float, str], None]  # (fraction of this component, message)
Component = Literal["llm", "stt", "tts"]
# Returns the engine (an `LLMEngine`, `STTEngine` or `TTSEngine`, by component).
Loader = Callable[[Settings, StepProgress], Any]
# A failed component whose failure may fix itself is checked again at most this often
# (one quick request to a server that is down costs next to nothing).
RECOVER_EVERY_S = 2.0


def _load_llm(settings: Settings, progress: StepProgress) -> Any:
    if settings.llm_backend == "openai":  # on a serving engine (vLLM, SGLang, ...), not here
        from voice_agent.llm.openai_compat import OpenAICompatLLM

        return OpenAICompatLLM(settings, progress=progress)
    from voice_agent.llm.engine import OpenSourceLLM

    return OpenSourceLLM(settings=settings, progress=progress)


def _load_stt(settings: Settings, progress: StepProgress) -> Any:
    from voice_agent.stt.whisper import WhisperSTT

    # Warm-up runs in `warm_up` below, so its progress is reported like the others'.
    return WhisperSTT(settings=settings, warmup=False, progress=progress)  # conversion progress


def _load_tts(settings: Settings, progress: StepProgress) -> Any:
    from voice_agent.tts.engine import LocalTTS

    return LocalTTS(settings=settings)


DEFAULT_LOADERS: dict[str, Loader] = {"llm": _load_llm, "stt": _load_stt, "tts": _load_tts}


def warm_up(component: str, engine: Any) -> None:
    """Run each engine once so the first user does not pay for lazy initialisation.

    An engine's own `warmup()` is used when it has one; otherwise a minimal call.
    """
    own = getattr(engine, "warmup", None) or getattr(engine, "warm_up", None)
    if callable(own):
        own()
        return
    if component == "llm":
        from voice_agent.llm.base import GenerationSettings

        engine.generate_reply("Hi", GenerationSettings(max_new_tokens=2, temperature=0.0))
    elif component == "stt":
        import numpy as np

        # One second of a quiet tone: enough to run the feature extractor and decoder.
        t = np.arange(16_000, dtype=np.float32) / 16_000
        engine.transcribe((16_000, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)))
    elif component == "tts" and getattr(engine, "device", "cpu") != "cuda":
        # On CUDA the TTS engine already warmed up while proving its device path.
        engine.synthesize("Hello.")


def _failure_report(component: str, settings: Settings, exc: BaseException) -> LoadReport:
    """A report with one failed attempt, for errors raised outside the engine's chain."""
    from voice_agent.core.config import configured_models

    try:
        from voice_agent.core.hardware import probe_hardware

        ref = configured_models(settings, probe_hardware().cuda_available)[component]
    except Exception:  # the report must be built even when probing fails too
        ref = None
    message = str(exc).strip()
    return LoadReport(
        component,
        ref,
        attempts=[
            Attempt(
                "load",
                "-",
                "-",
                None,
                "failed",
                error_type=type(exc).__name__,
                error=message.splitlines()[0][:500] if message else "",
                reason=explain_error(exc),
            )
        ],
    )


def _plain_reason(exc: BaseException, report: LoadReport) -> str:
    """One paragraph a person can act on: what failed and why, without a stack trace."""
    message = str(exc).strip()
    if isinstance(exc, ModelLoadError):
        reasons = [a.line() for a in report.attempts if a.outcome != "chosen"]
        if not reasons:  # resolution failed before any strategy (e.g. offline, not downloaded)
            return message
        why = "; ".join(reasons[-3:])
        return f"could not load {report.model_ref or component_name(report.component)}: {why}"
    if message and type(exc).__module__.startswith("voice_agent"):
        return message  # our own errors are written for people already
    return f"{explain_error(exc)} ({type(exc).__name__}: {message.splitlines()[0][:300] if message else 'no message'})"


def component_name(component: str) -> str:
    return LABELS.get(component, component)


class LoadedModels:
    """The three engines of one process, their load reports and status.

    Args:
        settings: what to load.
        loaders: component -> `loader(settings, progress)` returning the engine
            (tests pass fakes here); defaults to the real engines. `progress`
            takes (fraction of this component's load, message).
        progress: `progress(component, fraction, message)` called while loading.
        warmup: run each engine once after loading.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        loaders: dict[str, Loader] | None = None,
        progress: Progress | None = None,
        warmup: bool = True,
    ) -> None:
        self.settings = settings
        self.llm: LLMEngine | None = None
        self.stt: STTEngine | None = None
        self.tts: TTSEngine | None = None
        # One admission gate per engine, shared by the REST API and the conversation.
        self.gates: dict[str, EngineGate] = engine_gates(settings.server_queue_size)
        self.reports: dict[str, LoadReport] = {}
        self.status: dict[str, Status] = dict.fromkeys(COMPONENTS, "pending")
        self.errors: dict[str, str] = {}
        self.progress: dict[str, tuple[float, str]] = {c: (0.0, "waiting") for c in COMPONENTS}
        self.seconds: dict[str, float] = {}
        self._loaders = {**DEFAULT_LOADERS, **(loaders or {})}
        self._callbacks: list[Progress] = [progress] if progress else []
        self._warmup = warmup
        self._locks = {c: threading.Lock() for c in COMPONENTS}
        # Failures that may fix itself: the quick check, and when it may run next.
        self._rechecks: dict[str, Callable[[], bool]] = {}
        self._recheck_at: dict[str, float] = {}
        self.recover_every_s = RECOVER_EVERY_S
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    # --- queries ------------------------------------------------------------------------

    def engine(self, component: str) -> LLMEngine | STTEngine | TTSEngine | None:
        _check_component(component)
        return cast("LLMEngine | STTEngine | TTSEngine | None", getattr(self, component))

    def ready(self) -> bool:
        """True when all three engines are loaded."""
        return all(self.status[c] == "ready" for c in COMPONENTS)

    def settled(self) -> bool:
        """True when no component is pending or loading (each is ready or failed)."""
        return all(self.status[c] in ("ready", "failed") for c in COMPONENTS)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for loading started by `load_all`/background to finish; True if it did."""
        if self.settled():
            return True
        return self._done.wait(timeout)

    @overload
    def require(self, component: Literal["llm"]) -> LLMEngine: ...
    @overload
    def require(self, component: Literal["stt"]) -> STTEngine: ...
    @overload
    def require(self, component: Literal["tts"]) -> TTSEngine: ...
    @overload
    def require(self, component: str) -> LLMEngine | STTEngine | TTSEngine: ...

    def require(self, component: str) -> LLMEngine | STTEngine | TTSEngine:
        """The engine for `component`, loading it now if it is still pending (lazy mode).

        Raises:
            ModelUnavailableError: it failed to load (the reason is in the message)
                or another thread is still loading it.
        """
        _check_component(component)
        status = self.status[component]
        if status == "pending":
            self.load(component)
            status = self.status[component]
        elif status == "failed" and self.recover(component):
            status = self.status[component]
        if status == "ready":
            return cast("LLMEngine | STTEngine | TTSEngine", getattr(self, component))
        label = component_name(component)
        label = label if label.endswith("model") else f"{label} model"
        if status == "loading":
            fraction, message = self.progress[component]
            raise ModelUnavailableError(
                f"The {label} is still loading ({fraction:.0%}: {message}); try again shortly."
            )
        raise ModelUnavailableError(
            f"The {label} is not available: {self.errors.get(component, 'it failed to load')}"
        )

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per component: status, progress, error and load report (JSON-able)."""
        out: dict[str, dict[str, Any]] = {}
        for c in COMPONENTS:
            report = self.reports.get(c)
            out[c] = {
                "status": self.status[c],
                "progress": self.progress[c][0],
                "message": self.progress[c][1],
                "error": self.errors.get(c),
                "seconds": self.seconds.get(c),
                "report": report.as_dict() if report is not None else None,
            }
        return out

    # --- loading ------------------------------------------------------------------------

    def recover(self, component: str) -> bool:
        """Load a failed component again if its failure has fixed itself; True when it is ready.

        Only a failure that says how to tell (`ModelLoadError.recheck`: an LLM server
        that could not be reached) is looked at, at most every `recover_every_s`; a
        check already running is not waited for. When the check passes the component
        loads again, and its status, error and load report follow.
        """
        _check_component(component)
        recheck = self._rechecks.get(component)
        if self.status[component] != "failed" or recheck is None:
            return self.status[component] == "ready"
        lock = self._locks[component]
        if not lock.acquire(blocking=False):  # loading, or another caller is checking
            return False
        try:
            now = time.monotonic()
            if self.status[component] != "failed" or now < self._recheck_at.get(component, 0.0):
                return self.status[component] == "ready"
            self._recheck_at[component] = now + self.recover_every_s
            try:
                back = recheck()
            except Exception:  # a broken check means "not yet", never a broken turn
                log.debug("%s: the recovery check failed", component, exc_info=True)
                back = False
            if not back:
                return False
            log.info("%s: what failed at load now answers; loading again", component)
            del self._rechecks[component]
            self.status[component] = "pending"
        finally:
            lock.release()
        self.load(component)
        return self.status[component] == "ready"

    def recoverable(self, component: str) -> bool:
        """Whether `component` failed in a way that may fix itself (`recover` may load it)."""
        _check_component(component)
        return self.status[component] == "failed" and component in self._rechecks

    def recover_failed(self) -> list[str]:
        """`recover` every failed component; returns those ready now."""
        return [c for c in COMPONENTS if self.status[c] == "failed" and self.recover(c)]

    def add_progress_callback(self, callback: Progress) -> None:
        self._callbacks.append(callback)

    def _report_progress(self, component: str, fraction: float, message: str) -> None:
        self.progress[component] = (fraction, message)
        log.info("%s: %s", component, message)
        for callback in list(self._callbacks):
            try:
                callback(component, fraction, message)
            except Exception:  # a broken progress display must not break loading
                log.debug("progress callback failed", exc_info=True)

    def _step_progress(self, component: str) -> StepProgress:
        def step(fraction: float, message: str) -> None:
            # The engine's own 0..1 maps onto the loading part (before warm-up).
            self._report_progress(component, 0.05 + 0.75 * min(max(fraction, 0.0), 1.0), message)

        return step

    def load(self, component: str) -> Any | None:
        """Load one component (once; concurrent callers wait for the first). Never raises."""
        _check_component(component)
        with self._locks[component]:
            if self.status[component] in ("ready", "failed"):
                return getattr(self, component)
            self.status[component] = "loading"
            label = component_name(component)
            self._report_progress(component, 0.05, f"loading the {label} model")
            t0 = time.perf_counter()
            try:
                engine = self._loaders[component](self.settings, self._step_progress(component))
            except Exception as exc:  # recorded and shown; the other models stay usable
                report = getattr(exc, "report", None)
                if not isinstance(report, LoadReport):
                    report = _failure_report(component, self.settings, exc)
                self.reports[component] = report
                self.errors[component] = _plain_reason(exc, report)
                self.seconds[component] = time.perf_counter() - t0
                recheck = getattr(exc, "recheck", None)
                if callable(recheck):
                    self._rechecks[component] = recheck
                    self._recheck_at[component] = time.monotonic() + self.recover_every_s
                self.status[component] = "failed"
                log.error("%s failed to load: %s", component, self.errors[component])
                self._report_progress(component, 1.0, f"failed: {self.errors[component]}")
                return None
            report = getattr(engine, "report", None)
            if isinstance(report, LoadReport):
                self.reports[component] = report
            if self._warmup:
                self._report_progress(component, 0.8, f"warming up the {label} model")
                w0 = time.perf_counter()
                try:
                    warm_up(component, engine)
                    note = f"warm-up took {time.perf_counter() - w0:.2f} s"
                except Exception as exc:  # a model that loads but fails warm-up still serves
                    note = f"warm-up failed: {type(exc).__name__}: {exc}"
                    log.warning("%s %s", component, note)
                if isinstance(report, LoadReport):
                    report.notes.append(note)
            # An engine that serves several callers at once (an LLM on a batching server)
            # says so; its gate then lets that many through together.
            concurrency = getattr(getattr(engine, "capabilities", None), "concurrency", 1)
            if isinstance(concurrency, int) and concurrency > 1:
                self.gates[component].set_slots(concurrency)
            setattr(self, component, engine)
            self.seconds[component] = time.perf_counter() - t0
            self.errors.pop(component, None)
            self.status[component] = "ready"
            self._report_progress(
                component, 1.0, f"ready in {self.seconds[component]:.1f} s ({_describe(engine)})"
            )
            self._connect()
            return engine

    def _connect(self) -> None:
        """Give the TTS Whisper's word timings (Dia2 aligns its voice prefix with them)."""
        stt, tts = self.stt, self.tts
        if stt is None or tts is None:
            return
        if not (stt.capabilities.timestamps and tts.capabilities.word_timer):
            return
        timer = cast("WordTimingSTT", stt).transcribe_words

        def word_timer(samples: Any, sample_rate: int) -> Sequence[Any]:
            return list(timer((int(sample_rate), samples)).words)

        tts.set_word_timer(word_timer)

    def load_all(self) -> LoadedModels:
        """Load every pending component in order (LLM, STT, TTS); returns self."""
        try:
            for component in COMPONENTS:
                self.load(component)
        finally:
            self._done.set()
        return self

    def start_background(self) -> None:
        """Load everything on a daemon thread (once); `wait()` or poll `status`."""
        with self._thread_lock:
            if self.settled():
                self._done.set()
                return
            if self._thread is not None:
                return
            # The probes import torch, torch._dynamo and bitsandbytes. Run them here,
            # before the loader thread, because the same imports racing between that
            # thread and a /health or Diagnostics request fail half-initialised
            # ("partially initialized module 'torch._inductor.utils'") and the model
            # then fails to load. This covers the app and `serve` alike.
            from voice_agent.core.hardware import probe_bitsandbytes, probe_hardware

            probe_hardware()
            probe_bitsandbytes()
            self._thread = threading.Thread(target=self.load_all, name="model-loader", daemon=True)
            self._thread.start()


def _describe(engine: Any) -> str:
    report = getattr(engine, "report", None)
    if isinstance(report, LoadReport) and report.chosen is not None:
        return report.summary()
    return str(getattr(engine, "model_id", type(engine).__name__))


def _check_component(component: str) -> None:
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; choose one of {', '.join(COMPONENTS)}")


_models: LoadedModels | None = None
_models_lock = threading.Lock()


def get_models(
    settings: Settings | None = None,
    *,
    progress: Progress | None = None,
    eager: bool | None = None,
    background: bool = False,
) -> LoadedModels:
    """The process-wide loaded models (created on first call, the same object afterwards).

    Args:
        settings: used on the first call only (default `get_settings()`).
        progress: `progress(component, fraction, message)`; added to the callbacks.
        eager: load everything now; default from `MODEL_LOADING` (eager unless `lazy`).
            Lazy models load on first `require()`.
        background: with eager loading, load on a thread and return at once.
    """
    global _models
    with _models_lock:
        if _models is None:
            settings = settings or get_settings()
            loaders = None
            if settings.remote_models:  # MODEL_SERVER_REMOTE=1: a `serve` process holds the models
                from voice_agent.client.remote import remote_loaders

                loaders = remote_loaders()
                if settings.llm_backend == "openai":
                    # The LLM comes from LLM_BASE_URL (a serving engine), Whisper and the
                    # voice from the `serve` at MODEL_SERVER_URL.
                    del loaders["llm"]
            _models = LoadedModels(settings, loaders=loaders, progress=progress)
            created = True
        else:
            created = False
            if progress is not None:
                _models.add_progress_callback(progress)
            if settings is not None and settings != _models.settings:
                log.warning(
                    "get_models: models are already loaded with other settings; reusing them"
                )
        models = _models
    if eager is None:
        eager = models.settings.model_loading == "eager"
    if eager:
        if background:
            models.start_background()
        else:
            models.load_all()
    elif created:
        log.info("lazy model loading: each model loads on first use")
    return models


def current_models() -> LoadedModels | None:
    """The process-wide models if `get_models` has created them, else None (loads nothing)."""
    return _models


def reset_models() -> None:
    """Forget the process-wide models (tests only; a background load is waited for)."""
    global _models
    with _models_lock:
        models, _models = _models, None
    if models is not None and models._thread is not None:
        models._thread.join(timeout=60)
