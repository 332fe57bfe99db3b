"""Speech to text (Whisper, or Moonshine), loaded by the project's strategy chain.

The checkpoint's `config.json` `model_type` picks the family. A Moonshine
checkpoint (`moonshine`, English only, no word timings) loads with the Moonshine
strategies whether STT_BACKEND is auto or transformers: int8 then fp32 on the
CPU, fp16 first on CUDA (`STT_BACKEND=ctranslate2` is refused: it converts
Whisper only). Everything else is treated as Whisper, as follows.

`STT_BACKEND=auto` on the CPU first tries CTranslate2 with int8 weights
(`whisper_ct2`, skipped with the reason when the package is missing); the
transformers strategies follow. With transformers, loading tries, in order: the manual `WhisperForConditionalGeneration` +
`WhisperProcessor` load (full control over decoding), then transformers'
`automatic-speech-recognition` pipeline (which also loads non-Whisper
recognisers such as wav2vec2 CTC checkpoints). On CUDA both run in fp16 and the
CPU fp32 pair follows as the fallback; on the CPU it is fp32 only. Every
attempt lands in `self.report`.

Audio goes through `voice_agent.audio.io.load_audio` (any format, any rate, mono
16 kHz) and a speech gate, so silence and noise give "" instead of Whisper's
hallucinated "Thank you.". A `Speech` value (what the turn passes) was decoded
and gated by its caller already and goes straight to the model. Audio over 30 s
uses Whisper's sequential long-form decoding (window by window on CTranslate2
and Moonshine).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from voice_agent.audio.gate import is_speech
from voice_agent.audio.io import SAMPLE_RATE, load_audio
from voice_agent.core.config import (
    ASSETS_DIR,
    DEFAULT_STT_CPU,
    DEFAULT_STT_CPU_BESIDE_GPU,
    DEFAULT_STT_CUDA,
    Settings,
    SettingsError,
    STTBackendName,
    default_stt,
    get_settings,
    names_moonshine,
)
from voice_agent.core.errors import BusyError, InputError
from voice_agent.core.hub import ModelNotFoundError, ensure_model_exists
from voice_agent.core.loading import LoadReport, Strategy, estimate_bytes, run_chain
from voice_agent.core.threads import CPU_CORES, in_own_thread
from voice_agent.stt import moonshine, whisper_ct2
from voice_agent.stt.backend import (
    CHUNK_SECONDS,
    STRATEGY_KINDS,
    Backend,
    Decoded,
    StrategyKind,
    decode_windows,
    group_words,
    is_multilingual,
    language_tokens,
)
from voice_agent.stt.base import (
    AudioInput,
    Speech,
    STTCapabilities,
    Transcript,
    WordTimestampsUnsupportedError,
)
from voice_agent.stt.whisper_ct2 import Progress, Quantization

log = logging.getLogger(__name__)

BACKENDS = ("auto", "transformers", "ctranslate2")
WARMUP_CLIP = ASSETS_DIR / "hello.wav"
WARMUP_TOKENS = 8


def why_cpu_default(model_id: str) -> str:
    """The load report's note on why `model_id` is the CPU default (by its family)."""
    if names_moonshine(model_id):
        size = "tiny" if "tiny" in model_id.lower() else "base"
        seconds = {"tiny": 0.32, "base": 0.34}[size]  # README, STT benchmark, side by side
        return (
            f"{model_id} is the CPU default: on 2 cores, with int8 weights, the moonshine-{size} "
            f"shape transcribes a 3.4 s turn in {seconds:.2f} s where whisper-base.en on "
            "CTranslate2, which pads every clip to 30 s, takes 0.87 s; English only, no word "
            "timings (README, STT benchmark)."
        )
    return (
        f"{model_id} is the CPU default: on 2 cores it transcribes 10 s of speech in "
        "1-1.4 s (real-time factor 0.11-0.14), leaving the cores to the LLM; small.en is "
        "2.6-4x slower (README, STT benchmark)."
    )


WHY_CPU_DEFAULT = why_cpu_default(DEFAULT_STT_CPU)


def _detect(model: Any, feature_extractor: Any, samples: np.ndarray) -> str | None:
    """Whisper's language detection on the first 30 s window."""
    import torch

    ids = language_tokens(model.generation_config)
    if not ids:
        return None
    first = samples[: CHUNK_SECONDS * SAMPLE_RATE]
    inputs = feature_extractor(first, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    features = inputs.input_features.to(model.device, model.dtype)
    with torch.inference_mode():
        token = int(model.detect_language(features)[0])
    return ids.get(token)


class ManualBackend:
    """`WhisperForConditionalGeneration.generate` driven directly."""

    kind: StrategyKind = "manual"
    timestamps = True  # alignment heads (dynamic time warping over cross-attention)

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor
        self.multilingual = is_multilingual(model.generation_config)

    def detect_language(self, samples: np.ndarray) -> str | None:
        return _detect(self.model, self.processor.feature_extractor, samples)

    def decode(
        self,
        samples: np.ndarray,
        *,
        language: str | None,
        words: bool = False,
        generate_kwargs: dict[str, Any] | None = None,
    ) -> Decoded:
        import torch

        window = CHUNK_SECONDS * SAMPLE_RATE
        if words and samples.shape[0] > window:
            # Word timings come from short-form decoding; long clips go window by window.
            return decode_windows(self.decode, samples, language=language, words=True)
        long_form = samples.shape[0] > window
        extractor = self.processor.feature_extractor
        if long_form:
            inputs = extractor(
                samples,
                sampling_rate=SAMPLE_RATE,
                return_tensors="pt",
                truncation=False,
                padding="longest",
                return_attention_mask=True,
            )
        else:
            inputs = extractor(
                samples, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True
            )
        kwargs: dict[str, Any] = {
            "attention_mask": inputs.attention_mask.to(self.model.device),
            **(generate_kwargs or {}),
        }
        if self.multilingual:
            kwargs.update(language=language, task="transcribe")
        if long_form:
            kwargs["return_timestamps"] = True  # sequential long-form decoding needs them
        if words:
            kwargs.update(return_token_timestamps=True, return_dict_in_generate=True)
        features = inputs.input_features.to(self.model.device, self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(features, **kwargs)
        sequences = out["sequences"] if isinstance(out, dict) or hasattr(out, "keys") else out
        tokenizer = self.processor.tokenizer
        text = tokenizer.batch_decode(sequences, skip_special_tokens=True)[0].strip()
        found: list[tuple[str, float, float]] = []
        if words:
            found = self._words(sequences[0].tolist(), out["token_timestamps"][0].tolist())
        return Decoded(text, language, found, tokens=int(sequences.shape[-1]))

    def _words(self, tokens: list[int], times: list[float]) -> list[tuple[str, float, float]]:
        return group_words(self.processor.tokenizer, tokens, times)


class PipelineBackend:
    """transformers' `automatic-speech-recognition` pipeline (Whisper or CTC models)."""

    kind: StrategyKind = "pipeline"

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.is_whisper = pipe.model.config.model_type == "whisper"
        self.multilingual = self.is_whisper and is_multilingual(pipe.model.generation_config)
        # Whisper aligns with its cross-attention heads, CTC models with their frames; other
        # sequence-to-sequence models (Moonshine) have no word timings in the pipeline.
        self.timestamps = self.is_whisper or getattr(pipe, "type", "") != "seq2seq"

    def detect_language(self, samples: np.ndarray) -> str | None:
        if not self.is_whisper:
            return None
        return _detect(self.pipe.model, self.pipe.feature_extractor, samples)

    def decode(
        self,
        samples: np.ndarray,
        *,
        language: str | None,
        words: bool = False,
        generate_kwargs: dict[str, Any] | None = None,
    ) -> Decoded:
        call: dict[str, Any] = {}
        long_form = samples.shape[0] > CHUNK_SECONDS * SAMPLE_RATE
        if self.is_whisper:
            gen = dict(generate_kwargs or {})
            if self.multilingual:
                gen.update(language=language, task="transcribe")
            call["generate_kwargs"] = gen
            if long_form:
                call["return_timestamps"] = True  # sequential long-form decoding needs them
        elif long_form:
            call["chunk_length_s"] = CHUNK_SECONDS  # CTC: strided chunks bound memory
        if words:
            call["return_timestamps"] = "word"
        out = self.pipe({"raw": samples, "sampling_rate": SAMPLE_RATE}, **call)
        found = [
            (c["text"].strip(), float(c["timestamp"][0] or 0.0), float(c["timestamp"][1] or 0.0))
            for c in out.get("chunks", [])
            if c.get("text", "").strip()
        ]
        return Decoded(out["text"].strip(), language, found)


def choose_device(requested: str) -> Literal["cpu", "cuda"]:
    """WHISPER_DEVICE to a device: `auto` takes CUDA when torch sees a GPU."""
    if requested == "cpu":
        return "cpu"
    if requested == "cuda":
        return "cuda"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def normalize_language(language: str | None) -> str | None:
    """A Whisper language code from a code or English name; None for `auto`.

    Raises:
        InputError: unknown language (the message gives examples).
    """
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    if language is None:
        return None
    if not isinstance(language, str):
        raise InputError(f"language must be a string such as 'en' or 'auto', not {language!r}.")
    value = language.strip().lower()
    if value in ("auto", ""):
        return None
    if value in LANGUAGES:
        return value
    if value in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[value]
    raise InputError(
        f"Unknown language {language!r}: use a Whisper language code such as en, de, fr, es, "
        "zh or ja, an English language name, or 'auto' to detect it."
    )


class WhisperSTT:
    """Speech to text with Whisper or Moonshine (the seed's `WhisperSTT()` name).

    Args:
        model_name: hub id or local directory; default STT_MODEL_NAME, else
            `config.default_stt`: `DEFAULT_STT_CUDA` on CUDA, `DEFAULT_STT_CPU_BESIDE_GPU`
            on the CPU of a CUDA machine, `DEFAULT_STT_CPU` on a CPU-only one.
        settings: defaults to the process settings.
        backend: "auto", "transformers" or "ctranslate2"; default STT_BACKEND.
            auto = CTranslate2 int8 first on the CPU (skipped with the reason when the
            package is missing, failing over to transformers), transformers on CUDA.
            A Moonshine checkpoint loads with the "moonshine" strategies under auto and
            transformers; ctranslate2 raises `SettingsError` for it.
        strategies: loading strategies to try, in order ("ctranslate2", "manual",
            "pipeline", "moonshine"); default: those of `backend` for the checkpoint.
        warmup: decode the bundled clip once after loading.
        busy_timeout_s: how long `transcribe` waits for a running one before
            raising `BusyError` (default MODEL_SERVER_TIMEOUT_S).
        ct2_quantization: the CTranslate2 conversion's weights ("float32" reproduces
            transformers' fp32 decoding exactly; tests compare the two with it).
        progress: told `(fraction, message)` about long loading work (the conversion).

    Raises:
        ModelLoadError: nothing could load the model; `.report` says why.
        SettingsError: a bad STT_LANGUAGE or STT_BACKEND, or ctranslate2 for Moonshine.
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        model_name: str | None = None,
        settings: Settings | None = None,
        *,
        backend: STTBackendName | None = None,
        strategies: Sequence[StrategyKind] | None = None,
        warmup: bool = True,
        busy_timeout_s: float | None = None,
        ct2_quantization: Quantization = "int8",
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.device = choose_device(self.settings.whisper_device)
        self.ct2_quantization: Quantization = ct2_quantization
        self.progress = progress
        default = default_stt(
            self.device == "cuda",
            self.device == "cuda" or _cuda_missing() is None,
            backend or self.settings.stt_backend,
        )
        self.model_id = model_name or self.settings.stt_model_name or default
        self.report = LoadReport("stt", self.model_id)
        if not (model_name or self.settings.stt_model_name):
            if self.device == "cuda":
                note = f"{DEFAULT_STT_CUDA} is the CUDA default."
            elif default == DEFAULT_STT_CPU_BESIDE_GPU:
                note = (
                    f"{default} is the default on the CPU of a CUDA machine: Dia2 aligns its "
                    f"voice prefixes with Whisper's word timings, which {DEFAULT_STT_CPU} (the "
                    "default without CUDA) does not give."
                )
            else:
                note = why_cpu_default(self.model_id)
            self.report.notes.append(note)
        self.default_language = self.settings.stt_language
        try:  # a bad STT_LANGUAGE fails at load, not on every call
            normalize_language(self.default_language)
        except InputError as exc:
            raise SettingsError(f"STT_LANGUAGE={self.default_language!r}: {exc}") from None
        self.busy_timeout_s = (
            self.settings.server_timeout_s if busy_timeout_s is None else busy_timeout_s
        )
        self._lock = threading.Lock()
        try:
            resolved = ensure_model_exists(self.model_id, self.settings)
        except ModelNotFoundError as exc:
            self.report.notes.append(str(exc))
            exc.report = self.report
            raise
        self.path = resolved.path
        self.report.resolved_path, self.report.source = str(resolved.path), resolved.source
        self.model_type = checkpoint_model_type(self.path)
        kinds = strategies or self._kinds(backend or self.settings.stt_backend)
        self.backend: Backend = run_chain(self.report, self._strategies(kinds))
        self.loaded_device = self.report.chosen.device if self.report.chosen else self.device
        self.capabilities = STTCapabilities(
            languages=self._languages(), timestamps=self.backend.timestamps
        )
        if warmup:
            self.warmup()

    # --- loading ----------------------------------------------------------------------------

    def _kinds(self, backend: str) -> tuple[StrategyKind, ...]:
        """The strategies of an STT_BACKEND value for this checkpoint, in order."""
        if backend not in BACKENDS:
            raise SettingsError(
                f"STT_BACKEND={backend!r} is not valid; accepted values: {', '.join(BACKENDS)}."
            )
        if self.model_type == moonshine.MODEL_TYPE:
            if backend == "ctranslate2":
                raise SettingsError(
                    f"STT_BACKEND=ctranslate2 converts Whisper checkpoints only, and "
                    f"{self.model_id} is a Moonshine one: set STT_BACKEND=auto (or "
                    "transformers) to run it, or STT_MODEL_NAME to a Whisper model."
                )
            self.report.notes.append(
                f"STT_BACKEND={backend}: a Moonshine checkpoint runs on transformers"
                + (", int8 on the CPU." if self.device == "cpu" else ", fp16 on CUDA.")
            )
            return ("moonshine",)
        if backend == "transformers":
            return ("manual", "pipeline")
        if backend == "ctranslate2":
            if self.device == "cuda":
                self.report.notes.append(
                    "STT_BACKEND=ctranslate2 runs on the CPU here; WHISPER_DEVICE=cuda applies "
                    "to the transformers backend."
                )
            return ("ctranslate2",)
        if self.device == "cuda":
            self.report.notes.append(
                "STT_BACKEND=auto: transformers fp16 on CUDA (CTranslate2 is used on the CPU)."
            )
            return ("manual", "pipeline")
        return ("ctranslate2", "manual", "pipeline")

    def _strategies(self, kinds: Sequence[StrategyKind]) -> list[Strategy[Backend]]:
        from voice_agent.core.hardware import cuda_free_bytes, ram_available_bytes

        unknown = [k for k in kinds if k not in STRATEGY_KINDS]
        if unknown:
            raise ValueError(
                f"unknown STT strategies {unknown}; use {', '.join(map(repr, STRATEGY_KINDS))}"
            )
        out: list[Strategy[Backend]] = []
        if "ctranslate2" in kinds:
            out.append(
                Strategy(
                    name=f"ctranslate2-cpu-{self.ct2_quantization}",
                    device="cpu",
                    dtype="float32",  # activations; the weights are `quantization`
                    quantization=self.ct2_quantization,
                    load=self._load_ct2,
                    # The conversion holds the fp32 checkpoint in memory.
                    needed_bytes=partial(self._estimate, "float32"),
                    free_bytes=ram_available_bytes,
                    unavailable=whisper_ct2.unavailable,
                )
            )
        if "moonshine" in kinds:
            out.extend(self._moonshine_strategies())
        places: list[tuple[str, str]] = [("cpu", "float32")]
        if self.device == "cuda":
            # CPU fp32 stays as the fallback, so a busy or broken GPU degrades instead of failing.
            places.insert(0, ("cuda", "float16"))
        for device, dtype in places:
            storage = "float16" if dtype == "float16" else "float32"
            for kind in kinds:
                if kind in ("ctranslate2", "moonshine"):
                    continue
                out.append(
                    Strategy(
                        name=f"{kind}-{device}-{'fp16' if dtype == 'float16' else 'fp32'}",
                        device=device,
                        dtype=dtype,
                        load=self._loader(kind, device, dtype),
                        needed_bytes=partial(self._estimate, storage),
                        free_bytes=(
                            (lambda: cuda_free_bytes(0))
                            if device == "cuda"
                            else ram_available_bytes
                        ),
                        unavailable=_cuda_missing if device == "cuda" else None,
                    )
                )
        return out

    def _moonshine_strategies(self) -> list[Strategy[Backend]]:
        """fp16 on CUDA (when asked for), then int8 and fp32 on the CPU."""
        from voice_agent.core.hardware import cuda_free_bytes, ram_available_bytes

        places: list[tuple[str, moonshine.Precision, str]] = [
            ("cpu", "int8", "fp32"),  # quantized after an fp32 load: that is the peak
            ("cpu", "float32", "fp32"),
        ]
        if self.device == "cuda":
            places.insert(0, ("cuda", "float16", "fp16"))
        out: list[Strategy[Backend]] = []
        for device, precision, storage in places:
            on_cuda = device == "cuda"
            out.append(
                Strategy(
                    name=f"moonshine-{device}-{'int8' if precision == 'int8' else storage}",
                    device=device,
                    dtype="float16" if on_cuda else "float32",  # activations
                    quantization="int8" if precision == "int8" else None,
                    load=partial(
                        moonshine.load,
                        self.path,
                        self.settings,
                        device=device,
                        precision=precision,
                    ),
                    needed_bytes=partial(
                        self._estimate, "float16" if storage == "fp16" else "float32"
                    ),
                    free_bytes=(lambda: cuda_free_bytes(0)) if on_cuda else ram_available_bytes,
                    unavailable=(
                        _cuda_missing
                        if on_cuda
                        else moonshine.int8_unavailable
                        if precision == "int8"
                        else None
                    ),
                )
            )
        return out

    def _estimate(self, storage: str) -> int | None:
        try:
            return estimate_bytes(self.path, storage)
        except (OSError, ValueError, KeyError):
            return None  # .bin-only checkpoints: no header to plan from; just try

    def _load_ct2(self) -> Backend:
        # All of this process's cores: CTranslate2 fixes its threads at load, and the
        # transcript is the turn's only work between the end of speech and the LLM.
        return whisper_ct2.load(
            self.path,
            self.model_id,
            self.settings,
            quantization=self.ct2_quantization,
            threads=CPU_CORES.cores,
            notes=self.report.notes,
            progress=self.progress,
        )

    def _loader(self, kind: StrategyKind, device: str, dtype: str):
        def load() -> Backend:
            import torch

            torch_dtype = getattr(torch, dtype)
            local = self.settings.offline
            if kind == "manual":
                from transformers import (
                    AutoConfig,
                    WhisperForConditionalGeneration,
                    WhisperProcessor,
                )

                config = AutoConfig.from_pretrained(self.path, local_files_only=local)
                if config.model_type != "whisper":
                    raise ValueError(
                        f"not a Whisper checkpoint (model_type={config.model_type!r}); "
                        "the pipeline strategy loads other speech recognisers"
                    )
                processor = WhisperProcessor.from_pretrained(self.path, local_files_only=local)
                model = WhisperForConditionalGeneration.from_pretrained(
                    self.path, dtype=torch_dtype, local_files_only=local
                )
                return ManualBackend(model.to(device).eval(), processor)
            from transformers import pipeline

            # The pipeline takes no local_files_only of its own; self.path is a local
            # directory already, so it reads nothing from the hub either way.
            pipe = pipeline(
                "automatic-speech-recognition",
                model=str(self.path),
                device=device,
                dtype=torch_dtype,
            )
            return PipelineBackend(pipe)

        return load

    def warmup(self) -> float | None:
        """Decode the bundled clip once (first-call costs paid at load); returns seconds."""
        if not WARMUP_CLIP.is_file():
            self.report.notes.append(f"warm-up skipped: {WARMUP_CLIP} is missing")
            return None
        t0 = time.perf_counter()
        samples = load_audio(WARMUP_CLIP)
        language = normalize_language(self.default_language) or "en"
        with self._locked():
            self.backend.decode(
                samples,
                language=language if self.backend.multilingual else None,
                generate_kwargs={"max_new_tokens": WARMUP_TOKENS},
            )
        seconds = time.perf_counter() - t0
        self.report.notes.append(f"warm-up on {WARMUP_CLIP.name}: {seconds:.2f} s")
        return seconds

    # --- transcription ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One decode at a time: generate() is not re-entrant on a shared model, and
        # interleaving two would only make both slower.
        if not self._lock.acquire(timeout=self.busy_timeout_s):
            raise BusyError(
                f"Speech recognition is busy (waited {self.busy_timeout_s:g} s); try again shortly.",
                retry_after_s=min(5.0, max(1.0, self.busy_timeout_s / 4)),
            )
        try:
            yield
        finally:
            self._lock.release()

    def _language_for(self, language: str | None) -> str | None:
        """The code to force, or None to detect; checked against what the model knows."""
        code = normalize_language(self.default_language if language is None else language)
        if not self.backend.multilingual:
            if code not in (None, "en"):
                raise InputError(
                    f"{self.model_id} transcribes English only; set STT_MODEL_NAME to a "
                    f"multilingual Whisper to transcribe {code!r}."
                )
            return None
        return code

    def decode(
        self,
        samples: np.ndarray,
        language: str | None = "en",
        *,
        words: bool = False,
        generate_kwargs: dict[str, Any] | None = None,
    ) -> Decoded:
        """Decode 16 kHz mono float32 samples as they are (no checks, no speech gate).

        For callers that prepared the audio themselves (the benchmark forces a
        decode length with `generate_kwargs={"min_new_tokens": n, "max_new_tokens": n}`).
        """
        code = self._language_for(language)
        if words:
            self._check_word_timings()
        backend = self.backend

        def run() -> tuple[Decoded, str | None]:
            found = code
            if found is None and backend.multilingual:
                found = backend.detect_language(samples)
            decoded = backend.decode(
                samples, language=found, words=words, generate_kwargs=generate_kwargs
            )
            return decoded, found

        with self._locked():
            # On a thread of its own: the caller's thread (a turn's, a server worker's)
            # outlives the decode and would keep its OpenMP pool (core.threads).
            decoded, code = in_own_thread(run, "stt-decode")
        decoded.language = decoded.language or self._reported_language(code)
        return decoded

    def _languages(self) -> tuple[str, ...]:
        """The codes `transcribe` accepts: Whisper's languages, or English alone."""
        if not self.backend.multilingual:
            return ("en",)
        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        return tuple(sorted(LANGUAGES))

    def _reported_language(self, code: str | None) -> str | None:
        """The language a result names when decoding found none: English-only models say "en"."""
        return code or ("en" if not self.backend.multilingual else None)

    def transcribe(self, audio: AudioInput, language: str | None = None) -> Transcript:
        """Speech in `audio` as text.

        Args:
            audio: anything `voice_agent.audio.io.load_audio` accepts, or a `Speech`
                (decoded and gated by the caller: neither is done again).
            language: a code or name, "auto" to detect; default STT_LANGUAGE.

        Returns:
            A `Transcript`; text is "" with `speech_detected=False` for silence or noise.

        Raises:
            InputError: bad audio or language (see `voice_agent.audio.io`).
            BusyError: another transcription held the engine past `busy_timeout_s`.
        """
        return self._run(audio, language, words=False)

    def transcribe_words(self, audio: AudioInput, language: str | None = None) -> Transcript:
        """Like `transcribe`, with `words` = [(word, start_s, end_s)] from cross-attention.

        Timings come from Whisper's alignment heads (dynamic time warping over
        cross-attention), good to about 0.1 s on trained models.

        Raises:
            WordTimestampsUnsupportedError: the model gives no word timings
                (`capabilities.timestamps` is False: Moonshine), before any decoding.
        """
        return self._run(audio, language, words=True)

    def _check_word_timings(self) -> None:
        if not self.capabilities.timestamps:
            reason = (
                moonshine.NO_WORD_TIMINGS
                if self.backend.kind == "moonshine"
                else f"the {self.backend.kind} backend gives no word timings for it"
            )
            raise WordTimestampsUnsupportedError(
                f"{self.model_id} cannot give word timestamps: {reason}. Set STT_MODEL_NAME "
                "to a Whisper model for them."
            )

    def _run(self, audio: AudioInput, language: str | None, *, words: bool) -> Transcript:
        t0 = time.perf_counter()
        code = self._language_for(language)  # validate before decoding the audio
        if words:
            self._check_word_timings()
        if isinstance(audio, Speech) and audio.sample_rate == SAMPLE_RATE:
            samples, gated = np.asarray(audio.samples, dtype=np.float32), True
        else:
            samples = load_audio(audio, max_seconds=self.settings.max_audio_seconds)
            gated = False
        duration = samples.shape[0] / SAMPLE_RATE
        if not gated and not is_speech(samples, SAMPLE_RATE):
            log.info("stt: no speech in %.1f s of audio; skipping the model", duration)
            return Transcript(
                text="",
                language=self._reported_language(code),
                duration_s=duration,
                seconds=time.perf_counter() - t0,
                speech_detected=False,
            )
        decoded = self.decode(samples, "auto" if code is None else code, words=words)
        seconds = time.perf_counter() - t0
        log.info(
            "stt: %.1f s of audio in %.2f s (%s): %d chars",
            duration,
            seconds,
            decoded.language,
            len(decoded.text),
        )
        return Transcript(
            text=decoded.text,
            language=decoded.language,
            duration_s=duration,
            seconds=seconds,
            speech_detected=True,
            words=decoded.words,
        )


def checkpoint_model_type(path: Path) -> str | None:
    """The `model_type` in the checkpoint folder's config.json; None when there is none."""
    try:
        value = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _cuda_missing() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return f"CUDA is not available to torch {torch.__version__}"
    return None
