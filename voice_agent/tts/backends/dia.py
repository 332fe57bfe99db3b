"""Dia 1.6B through transformers' `DiaForConditionalGeneration` + `DiaProcessor`.

Dia (nari-labs/Dia-1.6B-0626, Apache-2.0) is an encoder-decoder: the whole
script is encoded first, so it cannot start before the text is complete; the
engine feeds it sentence by sentence. It writes DAC codes (44.1 kHz), decoded
by the processor's `DacModel` audio tokenizer, which lives in its own repo
(`descript/dac_44khz`); we resolve it through the same offline-aware hub door.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np

from voice_agent.core.config import DEFAULT_DIA, Settings
from voice_agent.core.hub import ensure_model_exists
from voice_agent.tts.backends.base import (
    check_single_voice,
    from_pretrained_kwargs,
    resolve_checkpoint,
    torch_dtype,
)
from voice_agent.tts.base import Voice

log = logging.getLogger(__name__)

DEFAULT_DAC = "descript/dac_44khz"
# Dia's byte-level encoder takes 1024 positions (speaker tags included); its
# decoder 3072 frames at 86 Hz, about 35 s. 300 characters stay well inside both.
MAX_CHARS = 300
FRAMES_PER_CHAR = 86 / 13  # ~13 spoken characters a second at 86 DAC frames a second
# nari-labs' recommended sampling for Dia-1.6B.
GENERATION = {"guidance_scale": 3.0, "temperature": 1.8, "top_p": 0.90, "top_k": 45}


class DiaBackend:
    """A loaded Dia model, its processor and DAC codec."""

    name: ClassVar[str] = "dia"
    default_model: ClassVar[str] = DEFAULT_DIA
    streams_text: ClassVar[bool] = False
    uses_word_timer: ClassVar[bool] = False
    offers_voices: ClassVar[bool] = False
    english_only = True

    def __init__(self, model, processor, model_id: str, device: str, dtype: str) -> None:
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.sample_rate = int(processor.audio_tokenizer.config.sampling_rate)
        encoder_positions = int(model.config.encoder_config.max_position_embeddings)
        self.max_chars = max(16, min(MAX_CHARS, encoder_positions - 16))
        self.max_frames = int(model.config.decoder_config.max_position_embeddings)
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model_ref: str | None = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        settings: Settings | None = None,
    ) -> DiaBackend:
        from transformers import (
            DacModel,
            DiaFeatureExtractor,
            DiaForConditionalGeneration,
            DiaProcessor,
            DiaTokenizer,
        )

        settings, ref, path = resolve_checkpoint(model_ref, cls.default_model, settings)
        kwargs = from_pretrained_kwargs(settings)
        model = DiaForConditionalGeneration.from_pretrained(
            str(path), dtype=torch_dtype(dtype), **kwargs
        )
        model = model.to(device).eval()
        dac_path = _dac_dir(path, settings)
        # The DAC decoder stays float32: it is small and half precision adds hiss.
        dac = DacModel.from_pretrained(str(dac_path), **kwargs).to(device).eval()
        processor = DiaProcessor(
            DiaFeatureExtractor.from_pretrained(str(path), **kwargs),
            DiaTokenizer.from_pretrained(str(path), **kwargs),
            dac,
        )
        return cls(model, processor, ref, device, dtype)

    def voices(self) -> list[Voice]:
        return [
            Voice("default", "Default", "Dia picks a voice per utterance (not kept across turns)")
        ]

    def synthesize(self, text: str, voice: str | None = None) -> np.ndarray:
        import torch

        check_single_voice("Dia", voice)
        inputs = self.processor(text=[f"[S1] {text}"], padding=False, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        # An upper bound on the frames the text can need: random or confused weights
        # may never write the end token, and Dia must not run to 3072 frames then.
        budget = int(len(text) * FRAMES_PER_CHAR * 1.3) + 43
        with self._lock, torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=min(budget, self.max_frames), do_sample=True, **GENERATION
            )
            audio = self.processor.batch_decode(out)[0]
        return audio.float().cpu().numpy().reshape(-1).astype(np.float32, copy=False)


def _dac_dir(model_dir: Path, settings: Settings) -> Path:
    """The DAC audio tokenizer named by processor_config.json, resolved locally when possible."""
    name = DEFAULT_DAC
    config = model_dir / "processor_config.json"
    if config.is_file():
        try:
            entry = json.loads(config.read_text()).get("audio_tokenizer") or {}
            name = entry.get("audio_tokenizer_name_or_path") or name
        except ValueError:
            log.warning("%s is not valid JSON; using %s", config, DEFAULT_DAC)
    beside = model_dir / name
    if beside.is_dir():
        return beside
    return ensure_model_exists(name, settings, required_files=("config.json",)).path
