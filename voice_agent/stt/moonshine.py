"""Moonshine speech to text (Useful Sensors; MIT weights; English only) on transformers.

Moonshine's encoder reads the raw 16 kHz waveform (three strided convolutions,
384 samples per encoder position) and takes any length, so a 3 s turn costs 3 s
of encoder work where Whisper pads every clip to its 30 s window. The checkpoint's
processor (`AutoProcessor`: a `Wav2Vec2FeatureExtractor` and the tokenizer) and
`MoonshineForConditionalGeneration` load from the resolved local folder.

One strategy per precision: on the CPU "int8" quantizes every `nn.Linear` with
torch's dynamic quantization (int8 weights, activations quantized on the fly at
each call) and "float32" is the fallback; on CUDA "float16".

Decoding is greedy, with at most `TOKENS_PER_SECOND` new tokens per second of
audio (Useful Sensors' advice, so a confused model cannot loop), never fewer than
`MIN_NEW_TOKENS` and never past the decoder's positions. `generate_kwargs`
`max_new_tokens` replaces that cap and `min_new_tokens` passes through (the
benchmark forces a length with both). Audio over `WINDOW_SECONDS` is decoded
window by window. There are no word timings: Moonshine has no alignment heads.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from voice_agent.audio.io import MIN_SECONDS, SAMPLE_RATE
from voice_agent.core.config import Settings
from voice_agent.stt.backend import Decoded, StrategyKind, decode_windows
from voice_agent.stt.base import WordTimestampsUnsupportedError

log = logging.getLogger(__name__)

Precision = Literal["int8", "float32", "float16"]
MODEL_TYPE = "moonshine"  # config.json `model_type` of Moonshine checkpoints
TOKENS_PER_SECOND = 6.5  # Useful Sensors' cap on new tokens per second of audio
MIN_NEW_TOKENS = 10  # the cap of short clips: "Yes, thank you." fits
# moonshine-tiny's decoder has 194 positions, about 6.5 tokens/s x 30 s: a 30 s window's token
# cap is what the decoder is built for. It also bounds the encoder's attention, which grows
# with the square of its input, and splits long audio where the Whisper backends do.
WINDOW_SECONDS = 30
# The convolutions need 895 samples for one encoder position; a window's short tail is
# padded with silence to the shortest clip the engine accepts at all.
MIN_SAMPLES = int(MIN_SECONDS * SAMPLE_RATE)
NO_WORD_TIMINGS = "Moonshine gives no word timings (it has no alignment heads)"


def int8_unavailable() -> str | None:
    """Why torch's dynamic int8 quantization cannot run here, or None."""
    import torch

    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if not engines:
        return f"torch {torch.__version__} has no quantized CPU kernels"
    if not hasattr(getattr(torch, "ao", None), "quantization"):
        return f"torch {torch.__version__} has no torch.ao.quantization"
    return None


def quantize_int8(model: Any) -> Any:
    """`model` with every `nn.Linear` replaced by torch's dynamic int8 version (CPU only)."""
    import torch

    with warnings.catch_warnings():
        # torch marks its eager-mode quantization deprecated in favour of torchao but still
        # ships it; should a release drop it, this raises and the fp32 strategy loads.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def token_cap(n_samples: int, max_positions: int | None = None) -> int:
    """New tokens allowed for `n_samples` of 16 kHz audio (see the module docstring)."""
    cap = max(MIN_NEW_TOKENS, math.ceil(TOKENS_PER_SECOND * n_samples / SAMPLE_RATE))
    if max_positions:
        cap = min(cap, max_positions - 1)  # the decoder start token takes a position
    return max(1, cap)


class MoonshineBackend:
    """`MoonshineForConditionalGeneration.generate`, greedy, capped by audio length."""

    kind: StrategyKind = "moonshine"
    multilingual = False
    timestamps = False

    def __init__(self, model: Any, processor: Any, *, device: str, dtype: Any) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        # Every decode sets max_new_tokens; a max_length beside it only makes generate warn.
        model.generation_config.max_length = None

    def detect_language(self, samples: np.ndarray) -> str | None:
        return None  # English only

    def decode(
        self,
        samples: np.ndarray,
        *,
        language: str | None,
        words: bool = False,
        generate_kwargs: dict[str, Any] | None = None,
    ) -> Decoded:
        if words:
            raise WordTimestampsUnsupportedError(NO_WORD_TIMINGS)
        if samples.shape[0] > WINDOW_SECONDS * SAMPLE_RATE:
            return decode_windows(
                self.decode,
                samples,
                window_s=WINDOW_SECONDS,
                language=language,
                generate_kwargs=generate_kwargs,
            )
        import torch

        options: dict[str, Any] = {
            "do_sample": False,
            "num_beams": 1,
            "max_new_tokens": token_cap(samples.shape[0], self.max_positions),
            **(generate_kwargs or {}),
        }
        if samples.shape[0] < MIN_SAMPLES:
            samples = np.pad(samples, (0, MIN_SAMPLES - samples.shape[0]))
        inputs = self.processor.feature_extractor(
            samples, sampling_rate=SAMPLE_RATE, return_tensors="pt"
        )
        # One unpadded clip: no attention mask, so the encoder builds none.
        values = inputs.input_values.to(self.device, self.dtype)
        with torch.inference_mode():
            sequences = self.model.generate(input_values=values, **options)
        new = sequences[0, 1:]  # after the decoder start token
        text = self.processor.tokenizer.decode(new.tolist(), skip_special_tokens=True).strip()
        return Decoded(text, language, tokens=int(new.shape[0]))


def load(path: Path, settings: Settings, *, device: str, precision: Precision) -> MoonshineBackend:
    """Load the Moonshine checkpoint at `path` on `device` in `precision`.

    Raises:
        ValueError: not a Moonshine checkpoint, or int8 asked for off the CPU.
    """
    import torch
    from transformers import AutoConfig, AutoProcessor, MoonshineForConditionalGeneration

    if precision == "int8" and device != "cpu":
        raise ValueError("torch's dynamic int8 quantization runs on the CPU only")
    local = settings.offline
    config = AutoConfig.from_pretrained(path, local_files_only=local)
    if config.model_type != MODEL_TYPE:
        raise ValueError(f"not a Moonshine checkpoint (model_type={config.model_type!r})")
    processor = AutoProcessor.from_pretrained(path, local_files_only=local)
    dtype = torch.float16 if precision == "float16" else torch.float32
    model = MoonshineForConditionalGeneration.from_pretrained(
        path, dtype=dtype, local_files_only=local
    )
    model = model.to(device).eval()
    if precision == "int8":
        model = quantize_int8(model)
    return MoonshineBackend(model, processor, device=device, dtype=dtype)
