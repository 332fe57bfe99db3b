"""The TTS engine: one interface over the backends, loaded through the shared loading chain.

    tts = LocalTTS()                      # TTS_BACKEND / TTS_MODEL_NAME / TTS_DEVICE
    rate, audio = tts.synthesize("It costs $3.50.")
    for chunk in tts.stream(llm_tokens):  # speaks before the reply is complete
        play(chunk.sample_rate, chunk.samples)

Backend choice (`TTS_BACKEND`):
- `auto`: Dia2 on CUDA when it fits (Dia2-1B when memory is short for the 2B),
  otherwise Piper (ONNX) on the CPU: Dia2 on a laptop CPU is far slower than speech.
- `dia2` / `dia` / `piper`: that backend first, then the light ones on the CPU as the
  fallback (`LIGHT`: Piper, then VITS). `vits`: VITS alone.

Every attempt (backend, model, device, dtype, seconds, reason) lands in
`self.report` (a `LoadReport`); if all fail, `ModelLoadError` carries it and
the app runs text-only. Text goes through `make_speakable` and is cut into
pieces the backend can take by the one splitter (`voice_agent.tts.text.chunking`),
as the caller's `Phrasing` says; pieces are joined with short fades. What the
loaded backend can do is declared in `capabilities` (a `TTSCapabilities`).
"""

from __future__ import annotations

import json
import logging
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np

from voice_agent.core.cancel import is_cancelled
from voice_agent.core.config import (
    DEFAULT_DIA,
    DEFAULT_DIA2,
    DEFAULT_DIA2_SMALL,
    DEFAULT_PIPER,
    DEFAULT_TTS,
    DEFAULT_VITS,
    Settings,
    get_settings,
)
from voice_agent.core.errors import InputTooLargeError
from voice_agent.core.hardware import cuda_free_bytes, probe_hardware, ram_available_bytes
from voice_agent.core.hub import ModelNotFoundError, ensure_model_exists
from voice_agent.core.loading import GIB, LoadReport, Strategy, estimate_bytes, run_chain
from voice_agent.tts.backends import NAMES, NothingToSpeakError, UnknownVoiceError, backend_class
from voice_agent.tts.backends.base import SpeechBackend, WordStreamingBackend, WordTimer
from voice_agent.tts.base import AudioChunk, TTSCapabilities, Voice
from voice_agent.tts.text.chunking import (
    CLAUSE_PAUSE_MS,
    SENTENCE_PAUSE_MS,
    Phrasing,
    check_length,
    fade_edges,
    join_audio,
    silence,
    split_stream,
    split_text,
)
from voice_agent.tts.text.speakable import make_speakable

log = logging.getLogger(__name__)

CPU_REASON = (
    "Dia2 on a laptop CPU is far slower than speech; the light backend (Piper) speaks in real time"
)
DIA_CPU_REASON = (
    "Dia on a CPU is far slower than speech; the light backend (Piper) speaks in real time"
)
# The CPU backends every plan ends with, fastest first (docs/tts.md has the numbers).
LIGHT = ("piper", "vits")
# Parameter counts of the published checkpoints, for planning before a download.
KNOWN_PARAMS = {DEFAULT_DIA2: 1.9e9, DEFAULT_DIA2_SMALL: 1.08e9, DEFAULT_DIA: 1.6e9}
MIMI_BYTES = int(0.4 * GIB)  # Mimi codec beside Dia2, float32
FOREIGN_SHARE = 0.15  # share of non-ASCII letters above which we warn an English-only voice
END_MS = 20.0  # the silent final chunk that marks the end of a stream


class Playout:
    """When the audio handed out so far will have played, if each chunk plays from the
    moment it is handed out or when the one before ends (a player starts later, so this
    errs early). Tells the splitter when the listener is about to hear silence."""

    def __init__(self) -> None:
        self._until: float | None = None

    def add(self, seconds: float) -> None:
        now = _now()
        self._until = max(self._until if self._until is not None else now, now) + seconds

    def left(self) -> float | None:
        """Seconds of audio still to play; None before the first chunk."""
        return None if self._until is None else self._until - _now()


def _now() -> float:
    return time.perf_counter()


class FastPathError(RuntimeError):
    """The CUDA fast path (graphs / compile) failed its warm-up; eager steps still work."""


def _cuda_status() -> tuple[bool, str]:
    """(usable, reason when not), torch availability checked."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if torch.cuda.is_available():
        return True, ""
    notes = probe_hardware().notes
    return False, notes[0] if notes else "torch sees no CUDA device"


def _local_dir(ref: str, settings: Settings) -> Path | None:
    """The model's local directory if it is already here (never downloads)."""
    try:
        return ensure_model_exists(ref, settings, required_files=(), download=False).path
    except ModelNotFoundError:
        return None


def detect_backend(ref: str, settings: Settings) -> str | None:
    """Which backend a checkpoint is for: from its config when local, else from its name."""
    path = _local_dir(ref, settings)
    if path is not None:
        if any(path.glob("*.onnx.json")):
            return "piper"
        if (path / "dia2" / "config.json").is_file():
            return "dia2"
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
        if {"data", "model", "runtime"} <= set(config):
            return "dia2"
        if config.get("model_type") in ("vits", "dia"):
            return config["model_type"]
    name = ref.lower()
    if "piper" in name:
        return "piper"
    if "dia2" in name or "dia-2" in name:
        return "dia2"
    if "dia" in name:
        return "dia"
    if "vits" in name or "mms-tts" in name:
        return "vits"
    return None


class LocalTTS:
    """The project's TTS engine: runs whichever local backend (Dia2, Dia, Piper or VITS) the
    loading chain chose, behind the `TTSEngine` Protocol (the seed called it `Dia2TTS`).

    Args:
        backend: "auto", "dia2", "dia", "piper" or "vits"; default `TTS_BACKEND`.
        model_name: checkpoint of the first backend tried; default `TTS_MODEL_NAME`,
            else that backend's default model.
        settings: default `get_settings()`.

    Raises:
        ModelLoadError: every backend failed; `.report` says why each one did.
    """

    def __init__(
        self,
        backend: str | None = None,
        model_name: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        requested = (backend or self.settings.tts_backend).strip().lower()
        if requested not in ("auto", *NAMES):
            raise ValueError(
                f"Unknown TTS backend {requested!r}; choose one of: auto, {', '.join(NAMES)}."
            )
        self.requested = requested
        model = model_name or self.settings.tts_model_name
        self.report = LoadReport("tts", model_ref=model or DEFAULT_TTS.get(requested))
        self._loaded: dict[tuple[str, str, str, str], SpeechBackend] = {}
        strategies = self._plan(requested, model)
        self._backend: SpeechBackend = run_chain(self.report, strategies)
        chosen = self._backend
        self.backend: str = chosen.name
        self.model_id: str = chosen.model_id
        self.sample_rate: int = chosen.sample_rate
        self.device: str = chosen.device
        self.dtype: str = chosen.dtype
        self.capabilities = TTSCapabilities(
            sample_rate=chosen.sample_rate,
            streaming_text_in=chosen.streams_text,
            streaming_audio_out=chosen.streams_text,
            voices=chosen.offers_voices,
            word_timer=chosen.uses_word_timer,
        )
        self.report.model_ref = chosen.model_id
        self._loaded.clear()
        try:
            found = ensure_model_exists(
                chosen.model_id, self.settings, required_files=(), download=False
            )
            self.report.resolved_path, self.report.source = str(found.path), found.source
        except ModelNotFoundError:
            pass  # loaded by the backend's own resolution (e.g. a checkpoint subfolder)
        log.info("TTS ready: %s", self.report.summary())

    # -- loading plan -----------------------------------------------------------------------

    def _plan(self, requested: str, model: str | None) -> list[Strategy[SpeechBackend]]:
        settings = self.settings
        cuda_ok, cuda_why = _cuda_status()
        wants = settings.tts_device
        if wants == "cuda" and not cuda_ok:
            self.report.notes.append(f"TTS_DEVICE=cuda, but {cuda_why}: using the CPU.")
        device = "cuda" if cuda_ok and wants in ("auto", "cuda") else "cpu"
        if wants == "auto" and not cuda_ok:
            self.report.notes.append(f"No CUDA for TTS ({cuda_why}).")
        plan: list[Strategy[SpeechBackend]] = []
        light = {"piper": DEFAULT_PIPER, "vits": DEFAULT_VITS}
        if requested == "auto":
            # A checkpoint of unknown kind goes to the backend auto would pick first.
            kind = detect_backend(model, settings) if model else None
            if kind is None and model is not None:
                kind = "dia2" if device == "cuda" else "vits"
            if kind in (None, "dia2"):
                ref = model or DEFAULT_DIA2
                if device == "cuda":
                    plan += self._dia2_strategies(ref, "cuda", small=model is None)
                else:
                    plan.append(self._strategy("dia2", ref, "cpu", "float32", why_not=CPU_REASON))
                    self.report.notes.append(CPU_REASON + ".")
            elif kind == "dia":
                ref = model or DEFAULT_DIA
                if device == "cuda":
                    plan.append(self._strategy("dia", ref, "cuda", self._half()))
                else:
                    plan.append(
                        self._strategy("dia", ref, "cpu", "float32", why_not=DIA_CPU_REASON)
                    )
            elif kind == "piper":
                light["piper"] = model or DEFAULT_PIPER
            elif model:
                # A light checkpoint of another kind is a VITS one: it comes first.
                plan.append(self._strategy("vits", model, "cpu", "float32"))
            tried = {a.name.split()[0] for a in plan}
            plan += [self._strategy(n, light[n], "cpu", "float32") for n in LIGHT if n not in tried]
            return plan
        ref = model or DEFAULT_TTS[requested]
        if wants == "cuda" and not cuda_ok:
            plan.append(
                self._strategy(
                    requested, ref, "cuda", "float16", why_not=f"TTS_DEVICE=cuda, but {cuda_why}"
                )
            )
        if requested == "dia2":
            plan += (
                self._dia2_strategies(ref, "cuda", small=model is None)
                if device == "cuda"
                else [self._strategy("dia2", ref, "cpu", "float32")]
            )
        elif requested == "dia":
            plan.append(
                self._strategy("dia", ref, device, self._half() if device == "cuda" else "float32")
            )
        elif requested == "piper":
            plan.append(self._strategy("piper", ref, "cpu", "float32"))  # onnxruntime's CPU
        else:
            plan.append(self._strategy("vits", ref, device, "float32"))
        if requested != "vits":
            plan += [self._strategy(n, light[n], "cpu", "float32") for n in LIGHT if n != requested]
        return plan

    @staticmethod
    def _half() -> str:
        gpus = probe_hardware().gpus
        return "bfloat16" if gpus and gpus[0].bf16 else "float16"

    def _dia2_strategies(
        self, ref: str, device: str, *, small: bool
    ) -> list[Strategy[SpeechBackend]]:
        # The runtime runs float32 or bfloat16; float16 GPUs (pre-Ampere) get float32.
        dtype = "bfloat16" if self._half() == "bfloat16" else "float32"
        refs = [ref, DEFAULT_DIA2_SMALL] if small and ref == DEFAULT_DIA2 else [ref]
        out: list[Strategy[SpeechBackend]] = []
        for i, r in enumerate(refs):
            # A runtime without a fast path is said once, not once per checkpoint.
            if i == 0 or self._fast_path_missing() is None:
                out.append(self._strategy("dia2", r, device, dtype, variant="fast path"))
            out.append(self._strategy("dia2", r, device, dtype, variant="eager"))
        return out

    def _strategy(
        self,
        name: str,
        ref: str,
        device: str,
        dtype: str,
        *,
        variant: str | None = None,
        why_not: str | None = None,
    ) -> Strategy[SpeechBackend]:
        label = f"{name} {ref}" + (f" ({variant})" if variant else "")
        unavailable: Callable[[], str | None] | None = (lambda: why_not) if why_not else None
        if variant == "fast path":
            unavailable = self._fast_path_missing
        free = partial(cuda_free_bytes, 0) if device == "cuda" else ram_available_bytes
        return Strategy(
            name=label,
            device=device,
            dtype=dtype,
            load=partial(self._load, name, ref, device, dtype, variant),
            needed_bytes=partial(self._needed_bytes, name, ref, dtype),
            free_bytes=free,
            unavailable=unavailable,
        )

    @staticmethod
    def _fast_path_missing() -> str | None:
        from voice_agent.tts.dia2 import Dia2Runtime

        if callable(getattr(Dia2Runtime, "enable_fast_path", None)):
            return None
        return "the Dia2 runtime offers no fast path (CUDA graphs / compile) here; eager steps"

    def _needed_bytes(self, name: str, ref: str, dtype: str) -> int | None:
        """Memory the model needs, from local safetensors headers or the published size."""
        path = _local_dir(ref, self.settings)
        extra = MIMI_BYTES if name == "dia2" else 0
        if name == "piper":  # the ONNX graph plus onnxruntime's working buffers
            graphs = list(path.glob("*.onnx")) if path is not None else []
            return 2 * sum(g.stat().st_size for g in graphs) + int(0.2 * GIB) if graphs else None
        try:
            if path is not None:
                model_dir = path / "dia2" if (path / "dia2").is_dir() else path
                return estimate_bytes(model_dir, dtype) + extra
        except (OSError, ValueError):
            return None  # unreadable weights: let loading say what is wrong
        params = KNOWN_PARAMS.get(ref)
        if params is None:
            return None
        per_param = 4 if dtype == "float32" else 2
        return int(params * per_param * 1.15) + extra

    def _load(
        self, name: str, ref: str, device: str, dtype: str, variant: str | None
    ) -> SpeechBackend:
        key = (name, ref, device, dtype)
        # The registry hands back classes by name; `runtime` and `fast_path` are Dia2's own.
        backend: Any = self._loaded.pop(key, None)
        if backend is None:
            cls: Any = backend_class(name)
            backend = cls.load(ref, device=device, dtype=dtype, settings=self.settings)
        if variant == "fast path":
            runtime = backend.runtime
            try:
                runtime.enable_fast_path()
                _warm_up(backend)
            except Exception as exc:
                disable = getattr(runtime, "disable_fast_path", None)
                if callable(disable):
                    disable()
                # The eager attempt that follows reuses these weights instead of reloading.
                self._loaded[key] = backend
                raise FastPathError(
                    f"fast path failed its warm-up ({type(exc).__name__}: {exc}); trying eager steps"
                ) from exc
            backend.fast_path = str(getattr(runtime, "fast_path", "fast"))
        elif device == "cuda":
            _warm_up(backend)  # proves the CUDA path works before the app relies on it
        return backend

    # -- the TTSEngine interface ------------------------------------------------------------

    @property
    def fast_path(self) -> str | None:
        return getattr(self._backend, "fast_path", None)

    def voices(self) -> list[Voice]:
        return self._backend.voices()

    def set_word_timer(self, timer: WordTimer | None) -> None:
        """Word timings for Dia2 voice prefixes (e.g. Whisper); other backends ignore it."""
        if self._backend.uses_word_timer:
            cast(WordStreamingBackend, self._backend).set_word_timer(timer)

    def describe(self) -> dict[str, object]:
        """What is loaded, for diagnostics."""
        return {
            "backend": self.backend,
            "model": self.model_id,
            "device": self.device,
            "dtype": self.dtype,
            "sample_rate": self.sample_rate,
            "fast_path": self.fast_path,
            "max_chars_per_piece": self._backend.max_chars,
            "voices": [v.id for v in self.voices()],
        }

    def _check_voice(self, voice: str | None) -> None:
        if voice in (None, "", "default"):
            return
        known = [v.id for v in self.voices()]
        if voice not in known:
            raise UnknownVoiceError(f"Unknown voice {voice!r}; available: {', '.join(known)}.")

    def _prepare(self, text: str) -> tuple[str, bool]:
        """(speakable text in a form this backend reads, whether it looked non-English).

        The text is "" when nothing is left.
        """
        spoken = make_speakable(text)
        if not spoken or not self._backend.english_only:
            return spoken, False
        letters = [ch for ch in spoken if ch.isalpha()]
        foreign = (
            bool(letters) and sum(not ch.isascii() for ch in letters) / len(letters) > FOREIGN_SHARE
        )
        # Accents off ("café" -> "cafe"); letters of other scripts cannot be read.
        spoken = "".join(
            ch
            for ch in unicodedata.normalize("NFKD", spoken)
            if not unicodedata.combining(ch) and (ch.isascii() or not ch.isalpha())
        )
        return (" ".join(spoken.split()) if any(ch.isalnum() for ch in spoken) else ""), foreign

    def _warn_foreign(self, text: str) -> None:
        log.warning(
            "The %s voice reads English only; this text looks like another language and is "
            "read as well as it can be: %.60r",
            self.backend,
            text,
        )

    def synthesize(self, text: str, voice: str | None = None) -> tuple[int, np.ndarray]:
        """Speak `text` (markdown and all); returns (sample_rate, float32 mono audio).

        Raises:
            NothingToSpeakError: empty text, or nothing speakable in it.
            InputTooLargeError: longer than MAX_TEXT_CHARS.
            UnknownVoiceError: `voice` is not offered (see `voices()`).
        """
        check_length(text or "", self.settings.max_text_chars)
        if not text or not text.strip():
            raise NothingToSpeakError("The text is empty; there is nothing to say.")
        self._check_voice(voice)
        spoken, foreign = self._prepare(text)
        if foreign:
            self._warn_foreign(text)
        if not spoken:
            raise NothingToSpeakError(
                "Nothing speakable is left once markup, code, emoji and unreadable characters are removed."
            )
        audio = [
            self._backend.synthesize(p, voice) for p in split_text(spoken, self._backend.max_chars)
        ]
        joined = join_audio(audio, self.sample_rate, pause_ms=self._pause_ms)
        return self.sample_rate, joined.astype(np.float32, copy=False)

    @property
    def _pause_ms(self) -> float:
        # Dia2 utterances carry their own leading and trailing silence.
        return 0.0 if self.backend == "dia2" else SENTENCE_PAUSE_MS

    def _join_ms(self, previous: str) -> float:
        """The pause after `previous`: a breath after a sentence, a short one after a
        clause, none inside a run of words cut only for length (natural joins)."""
        end = previous.rstrip()[-1:]
        if end in ".!?" or not self._pause_ms:
            return self._pause_ms
        return CLAUSE_PAUSE_MS if end in ",;:-–—" else 0.0

    def stream(
        self,
        text: str | Iterable[str],
        voice: str | None = None,
        cancel: object | None = None,
        *,
        phrasing: Phrasing | None = None,
    ) -> Iterator[AudioChunk]:
        """Speak text that may still be arriving; chunks come as soon as they are ready.

        `text` is a whole string or an iterator of pieces (LLM tokens). `phrasing`
        says where the pieces are cut into what is spoken (default
        `capabilities.phrasing`): Dia2 takes the words as they come (a phrase at a
        time); the other backends speak each sentence once it ends. The last chunk
        has `final=True` (a few ms of silence). A bad whole string raises here, at
        the call; a stream that grows past MAX_TEXT_CHARS raises
        `InputTooLargeError` when it does.
        """
        self._check_voice(voice)
        if isinstance(text, str):
            check_length(text, self.settings.max_text_chars)
            if not text.strip():
                raise NothingToSpeakError("The text is empty; there is nothing to say.")
            if not self._prepare(text)[0]:
                raise NothingToSpeakError(
                    "Nothing speakable is left once markup, code, emoji and unreadable characters are removed."
                )
            pieces: Iterable[str] = [text]
        else:
            pieces = text
        return self._stream(pieces, voice, cancel, phrasing or self.capabilities.phrasing)

    def _bounded(self, pieces: Iterable[str]) -> Iterator[str]:
        total = 0
        limit = self.settings.max_text_chars
        for piece in pieces:
            total += len(piece)
            if total > limit:
                raise InputTooLargeError(
                    f"The streamed text passed {limit:,} characters (MAX_TEXT_CHARS); speech stopped there."
                )
            yield piece

    def _speakable_pieces(
        self,
        pieces: Iterable[str],
        phrasing: Phrasing,
        running_dry: Callable[[], bool] | None = None,
    ) -> Iterator[str]:
        warned = False
        text = self._bounded(pieces)
        for sentence in split_stream(text, phrasing=phrasing, running_dry=running_dry):
            spoken, foreign = self._prepare(sentence)
            if foreign and not warned:
                self._warn_foreign(sentence)
                warned = True
            # A clause cut early keeps its mark: the voice reads it as a clause, not a
            # sentence end, and the join after it is a short break (`_join_ms`).
            mark = sentence.rstrip()[-1:]
            if spoken and mark in ",;:" and not self._backend.streams_text:
                spoken = spoken.rstrip(".!?") + mark
            if spoken:
                yield from split_text(spoken, self._backend.max_chars)

    def _stream(
        self, pieces: Iterable[str], voice: str | None, cancel: object | None, phrasing: Phrasing
    ) -> Iterator[AudioChunk]:
        rate = self.sample_rate
        playout = Playout()

        def running_dry() -> bool:
            left = playout.left()
            return left is not None and left < phrasing.hurry_s

        hurry = phrasing.hurry_s > 0 and not self._backend.streams_text
        phrases = self._speakable_pieces(pieces, phrasing, running_dry if hurry else None)
        if self._backend.streams_text:
            streamer = cast(WordStreamingBackend, self._backend)
            for samples in streamer.stream_phrases(phrases, voice, cancel):
                yield AudioChunk(rate, samples)
        else:
            previous = ""
            for piece in phrases:
                if is_cancelled(cancel):
                    return
                audio = fade_edges(self._backend.synthesize(piece, voice), rate)
                if previous:
                    audio = np.concatenate([silence(rate, self._join_ms(previous)), audio])
                previous = piece
                playout.add(len(audio) / rate)
                yield AudioChunk(rate, audio, text=piece)
        if not is_cancelled(cancel):
            yield AudioChunk(rate, silence(rate, END_MS), final=True)


def _warm_up(backend: SpeechBackend) -> None:
    """One short utterance; for Dia2 straight on the runtime, so no voice is kept from it."""
    runtime = getattr(backend, "runtime", None)
    if runtime is not None:
        runtime.generate("[S1] Hello there.")
    else:
        backend.synthesize("Hello there.")


# The seed's name, kept for code written against it.
Dia2TTS = LocalTTS
