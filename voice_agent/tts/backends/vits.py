"""VITS through transformers' `VitsModel` (default `facebook/mms-tts-eng`).

Small (36 M parameters) and faster than real time on a laptop CPU, so it is
the light backend `auto` falls back to. One speaker, English only, 16 kHz.
The MMS weights are licensed CC-BY-NC 4.0 (non-commercial).
"""

from __future__ import annotations

import logging
import threading
from typing import ClassVar

import numpy as np

from voice_agent.core.config import DEFAULT_VITS, Settings
from voice_agent.tts.backends.base import (
    NothingToSpeakError,
    check_single_voice,
    from_pretrained_kwargs,
    resolve_checkpoint,
    torch_dtype,
)
from voice_agent.tts.base import Voice

log = logging.getLogger(__name__)

# VITS has no hard length limit, but attention cost and memory grow with the
# text; a few sentences per call keeps first audio quick.
MAX_CHARS = 400


class VitsBackend:
    """A loaded VITS model and its character tokenizer."""

    name: ClassVar[str] = "vits"
    default_model: ClassVar[str] = DEFAULT_VITS
    streams_text: ClassVar[bool] = False
    uses_word_timer: ClassVar[bool] = False
    offers_voices: ClassVar[bool] = False
    english_only = True
    max_chars = MAX_CHARS

    def __init__(self, model, tokenizer, model_id: str, device: str, dtype: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.sample_rate = int(model.config.sampling_rate)
        language = getattr(tokenizer, "language", None)
        self.english_only = language in (None, "eng", "en")
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model_ref: str | None = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        settings: Settings | None = None,
    ) -> VitsBackend:
        """Resolve (offline-aware) and load model + tokenizer."""
        from transformers import AutoTokenizer, VitsModel

        settings, ref, path = resolve_checkpoint(
            model_ref, cls.default_model, settings, ("config.json", "vocab.json")
        )
        kwargs = from_pretrained_kwargs(settings)
        model = VitsModel.from_pretrained(str(path), dtype=torch_dtype(dtype), **kwargs)
        model = model.to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
        return cls(model, tokenizer, ref, device, dtype)

    def voices(self) -> list[Voice]:
        return [Voice("default", "Default", "The model's single speaker")]

    def synthesize(self, text: str, voice: str | None = None) -> np.ndarray:
        import torch

        check_single_voice("VITS", voice)
        inputs = self.tokenizer(text, return_tensors="pt")
        ids = inputs["input_ids"]
        # The tokenizer drops characters outside its vocabulary and interleaves blanks
        # (id 0); nothing else left means nothing to say.
        if ids.shape[-1] == 0 or int((ids != self.tokenizer.pad_token_id).sum()) == 0:
            raise NothingToSpeakError(
                "No letters this English voice can read are left in the text."
            )
        with self._lock, torch.inference_mode():
            waveform = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).waveform
        return waveform[0].float().cpu().numpy().astype(np.float32, copy=False)
