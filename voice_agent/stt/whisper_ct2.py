"""Whisper on CTranslate2: int8 weights on the CPU, several times faster than transformers' fp32.

The Hugging Face checkpoint (hub id or local folder, resolved like every model)
is converted once with `ctranslate2.converters.TransformersConverter` into
`HF_HOME/ctranslate2/<model>-<quantization>-<key>`; the key hashes the resolved
folder (a hub snapshot's path holds its revision), the size and modification
time of its files, the quantization and CTranslate2's major version, so a
changed checkpoint is converted again and an unchanged one is reused.

Features come from the checkpoint's own `WhisperFeatureExtractor`, prompt tokens
and text from its tokenizer (not faster-whisper, which pulls in PyAV's decoder
for audio we already decode). Decoding is greedy like the transformers path,
with the same cap on new tokens (the generation config's `max_length`) and the
same prompt (`<|startoftranscript|>`, language and task for multilingual
models, `<|notimestamps|>`). Audio over 30 s is decoded window by window
(transformers' sequential long-form decoding seeks on timestamps instead).
Word timings come from CTranslate2's `align` (cross-attention alignment heads
with dynamic time warping, as in transformers).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from voice_agent.audio.io import SAMPLE_RATE
from voice_agent.core.config import Settings
from voice_agent.stt.backend import (
    CHUNK_SECONDS,
    Decoded,
    StrategyKind,
    decode_windows,
    group_words,
    is_multilingual,
    language_tokens,
)

log = logging.getLogger(__name__)

Quantization = Literal["int8", "float32"]
INSTALL_HINT = "pip install ctranslate2"
FRAMES_PER_SECOND = 50  # encoder positions per second: 100 mel frames/s, stride 2
MEL_HOP = 160  # samples per mel frame at 16 kHz
HEARTBEAT_S = 15.0  # how often a long conversion says it is still running
GENERATE_OPTIONS = ("max_new_tokens", "min_new_tokens")
Progress = Callable[[float, str], None]


def unavailable() -> str | None:
    """Why the CTranslate2 backend cannot run here, or None."""
    if importlib.util.find_spec("ctranslate2") is None:
        return f"the ctranslate2 package is not installed ({INSTALL_HINT})"
    return None


def cache_root(settings: Settings) -> Path:
    """Where converted models live: `HF_HOME/ctranslate2`."""
    return settings.hf_home / "ctranslate2"


def conversion_dir(root: Path, model_id: str, path: Path, quantization: str) -> Path:
    """The folder a conversion of the checkpoint at `path` goes to (see the module docstring)."""
    import ctranslate2

    digest = hashlib.sha256(str(path.resolve()).encode())
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(f"{quantization}:ct2-{ctranslate2.__version__.split('.')[0]}".encode())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", model_id.strip("/"))[-60:] or "model"
    return root / f"{slug}-{quantization}-{digest.hexdigest()[:12]}"


def convert(
    path: Path,
    target: Path,
    quantization: str,
    *,
    progress: Progress | None = None,
) -> bool:
    """Convert the checkpoint at `path` into `target` unless done before; True when converted now.

    The conversion is written next to `target` and renamed into place, so an
    interrupted one is never taken for a finished one.
    """
    if (target / "model.bin").is_file():
        return False
    import ctranslate2

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    message = f"converting {path.name} to CTranslate2 {quantization} (once) in {target}"
    log.info("stt: %s", message)
    if progress:
        progress(0.1, message)
    done = threading.Event()
    t0 = time.perf_counter()

    def heartbeat() -> None:
        while not done.wait(HEARTBEAT_S):
            log.info("stt: still converting to CTranslate2 (%.0f s)", time.perf_counter() - t0)

    threading.Thread(target=heartbeat, name="ct2-convert-heartbeat", daemon=True).start()
    try:
        converter = ctranslate2.converters.TransformersConverter(str(path), low_cpu_mem_usage=True)
        converter.convert(str(partial), quantization=quantization, force=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        done.set()
    try:
        partial.rename(target)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not (target / "model.bin").is_file():  # another process did not finish it either
            raise
    seconds = time.perf_counter() - t0
    log.info("stt: converted to CTranslate2 %s in %.1f s", quantization, seconds)
    if progress:
        progress(0.8, f"converted to CTranslate2 {quantization} in {seconds:.1f} s")
    return True


class CT2Backend:
    """A converted Whisper run by `ctranslate2.models.Whisper`, greedy."""

    kind: StrategyKind = "ctranslate2"
    timestamps = True  # CTranslate2's `align` (alignment heads, dynamic time warping)

    def __init__(self, model: Any, processor: Any, generation_config: Any, max_positions: int):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.multilingual = is_multilingual(generation_config)
        self.language_ids = language_tokens(generation_config)
        self.sot = int(generation_config.decoder_start_token_id)
        self.no_timestamps = int(generation_config.no_timestamps_token_id)
        self.transcribe_id = (getattr(generation_config, "task_to_id", None) or {}).get(
            "transcribe"
        )
        self.eot = int(self.tokenizer.convert_tokens_to_ids("<|endoftext|>"))
        self.max_new_tokens = int(getattr(generation_config, "max_length", None) or max_positions)
        self.max_positions = max_positions

    # --- features and prompt ------------------------------------------------------------------

    def _encode(self, samples: np.ndarray) -> Any:
        import ctranslate2

        features = self.processor.feature_extractor(
            samples, sampling_rate=SAMPLE_RATE, return_tensors="np"
        ).input_features
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32))
        return self.model.encode(view)

    def _prompt(self, language: str | None) -> list[int]:
        prompt = [self.sot]
        if self.multilingual and language is not None:
            code = self.tokenizer.convert_tokens_to_ids(f"<|{language}|>")
            prompt.append(int(code))
            if self.transcribe_id is not None:
                prompt.append(int(self.transcribe_id))
        prompt.append(self.no_timestamps)
        return prompt

    # --- Backend ------------------------------------------------------------------------------

    def detect_language(self, samples: np.ndarray) -> str | None:
        """The language token most likely after `<|startoftranscript|>` on the first window.

        This is what transformers' `detect_language` computes; CTranslate2's own
        `detect_language` refuses models with fewer than 51865 tokens (our tiny ones).
        """
        if not self.language_ids:
            return None
        encoded = self._encode(samples[: CHUNK_SECONDS * SAMPLE_RATE])
        result = self.model.generate(
            encoded,
            [[self.sot]],
            beam_size=1,
            max_length=2,  # one new token (CTranslate2 gives at most max_length / 2)
            return_logits_vocab=True,
            suppress_blank=False,
            suppress_tokens=[],
        )[0]
        logits = np.asarray(result.logits[0][0], dtype=np.float32).reshape(-1)
        ids = np.fromiter(self.language_ids, dtype=np.int64)
        return self.language_ids[int(ids[int(np.argmax(logits[ids]))])]

    def decode(
        self,
        samples: np.ndarray,
        *,
        language: str | None,
        words: bool = False,
        generate_kwargs: dict[str, Any] | None = None,
    ) -> Decoded:
        if samples.shape[0] > CHUNK_SECONDS * SAMPLE_RATE:
            return decode_windows(
                self.decode,
                samples,
                language=language,
                words=words,
                generate_kwargs=generate_kwargs,
            )
        prompt = self._prompt(language)
        new_tokens, forced = self._length(generate_kwargs, len(prompt))
        encoded = self._encode(samples)
        result = self.model.generate(
            encoded,
            [prompt],
            beam_size=1,
            # CTranslate2 decodes at most min(max_length / 2, max_length - prompt) tokens.
            max_length=max(2 * new_tokens, new_tokens + len(prompt)),
            suppress_blank=True,
            suppress_tokens=[-1, self.eot] if forced else [-1],  # -1: the model's list
        )[0]
        tokens = [int(t) for t in result.sequences_ids[0]]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        found: list[tuple[str, float, float]] = []
        if words and tokens:
            found = self._words(encoded, prompt, tokens, samples.shape[0])
        return Decoded(text, language, found, tokens=len(tokens))

    def _length(self, generate_kwargs: dict[str, Any] | None, prompt: int) -> tuple[int, bool]:
        """New tokens allowed, and whether exactly that many are forced.

        Raises:
            ValueError: an option CTranslate2 cannot honour.
        """
        options = dict(generate_kwargs or {})
        unknown = sorted(set(options) - set(GENERATE_OPTIONS))
        if unknown:
            raise ValueError(
                f"the ctranslate2 STT backend takes only {', '.join(GENERATE_OPTIONS)}; "
                f"not {', '.join(unknown)}"
            )
        cap = int(options.get("max_new_tokens") or self.max_new_tokens)
        cap = max(1, min(cap, self.max_positions - prompt))
        least = int(options.get("min_new_tokens") or 0)
        if least and least != cap:
            raise ValueError(
                "the ctranslate2 STT backend forces a length only with "
                "min_new_tokens == max_new_tokens"
            )
        return cap, bool(least)

    def _words(
        self, encoded: Any, prompt: list[int], tokens: list[int], n_samples: int
    ) -> list[tuple[str, float, float]]:
        text = [t for t in tokens if t < self.eot]
        if not text:
            return []
        frames = max(1, n_samples // MEL_HOP)
        result = self.model.align(encoded, prompt, [text], frames)[0]
        pairs = np.asarray(result.alignments, dtype=np.int64).reshape(-1, 2)
        if pairs.shape[0] == 0:
            return []
        jumps = np.diff(pairs[:, 0], prepend=-1) != 0  # first frame of each token
        starts = (pairs[jumps, 1] / FRAMES_PER_SECOND).tolist()
        times = (starts + [starts[-1]] * (len(text) + 1))[: len(text) + 1]
        return group_words(self.tokenizer, [*text, self.eot], times)


def load(
    path: Path,
    model_id: str,
    settings: Settings,
    *,
    quantization: Quantization = "int8",
    threads: int,
    notes: list[str],
    progress: Progress | None = None,
) -> CT2Backend:
    """Convert (once) and load the Whisper checkpoint at `path` on the CPU.

    Args:
        path: the resolved local checkpoint folder.
        model_id: its reference, for the cache folder's name.
        quantization: "int8" (the fast default) or "float32" (exactly transformers' fp32 math,
            for comparisons).
        threads: CTranslate2's intra-op threads (fixed for the model's life).
        notes: the load report's notes, told whether the conversion was made or reused.

    Raises:
        ValueError: not a Whisper checkpoint.
    """
    import ctranslate2
    from transformers import AutoConfig, GenerationConfig, WhisperProcessor

    local = settings.offline
    config = AutoConfig.from_pretrained(path, local_files_only=local)
    if config.model_type != "whisper":
        raise ValueError(
            f"not a Whisper checkpoint (model_type={config.model_type!r}); "
            "the transformers pipeline loads other speech recognisers"
        )
    target = conversion_dir(cache_root(settings), model_id, path, quantization)
    t0 = time.perf_counter()
    if convert(path, target, quantization, progress=progress):
        notes.append(
            f"converted to CTranslate2 {quantization} in {time.perf_counter() - t0:.1f} s: {target}"
        )
    else:
        notes.append(f"reused the CTranslate2 {quantization} conversion in {target}")
    processor = WhisperProcessor.from_pretrained(path, local_files_only=local)
    generation = GenerationConfig.from_pretrained(path, local_files_only=local)
    model = ctranslate2.models.Whisper(
        str(target), device="cpu", compute_type=quantization, intra_threads=threads
    )
    return CT2Backend(model, processor, generation, int(config.max_target_positions))
