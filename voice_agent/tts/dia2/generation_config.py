"""`Dia2GenerationConfig`: what one utterance is generated with (sampling, CFG, prefix, streaming).

Its own module, below the runtime, so that streaming can name it without
importing the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from voice_agent.core.errors import InputError
from voice_agent.tts.dia2.prefix import Dia2Prefix
from voice_agent.tts.dia2.sampling import SamplingConfig


class InvalidSettingsError(InputError):
    """A generation setting is out of range."""

    code = "invalid_settings"


@dataclass(frozen=True)
class Dia2GenerationConfig:
    """Sampling knobs (official defaults), CFG, padding, voice prefix and streaming options.

    Attributes:
        text: sampling of the pad/new-word action (temperature 0.6, top-k 50).
        audio: sampling of the audio codes (temperature 0.8, top-k 50).
        cfg_scale: classifier-free guidance scale; 1.0 turns CFG off (and halves the work).
        cfg_filter_k: candidates kept by the CFG filter.
        initial_padding: pad steps before the first word.
        prefix: an encoded voice prefix (`Dia2Runtime.prefix(...)`).
        include_prefix_audio: keep the prefix audio and words in the output.
        seed: seed for sampling (None: torch's global generator).
        on_context_overflow: "error" raises `ContextOverflowError` when the script does
            not fit the context (with the partial result attached); "truncate" returns
            the partial result with `stopped_by == "max_context"`.
        text_wait_s: streaming in: how long a step waits for a word that has not arrived
            before padding instead.
    """

    text: SamplingConfig = field(default_factory=lambda: SamplingConfig(0.6, 50))
    audio: SamplingConfig = field(default_factory=lambda: SamplingConfig(0.8, 50))
    cfg_scale: float = 2.0
    cfg_filter_k: int = 50
    initial_padding: int = 2
    prefix: Dia2Prefix | None = None
    include_prefix_audio: bool = False
    seed: int | None = None
    on_context_overflow: Literal["error", "truncate"] = "error"
    text_wait_s: float = 0.5

    def validate(self) -> None:
        for name, s in (("text", self.text), ("audio", self.audio)):
            if s.temperature < 0 or s.top_k < 0:
                raise InvalidSettingsError(
                    f"{name} sampling needs temperature >= 0 and top_k >= 0, got {s}."
                )
        if self.cfg_scale <= 0:
            raise InvalidSettingsError(f"cfg_scale must be > 0, got {self.cfg_scale}.")
        if self.cfg_filter_k < 0 or self.initial_padding < 0:
            raise InvalidSettingsError("cfg_filter_k and initial_padding must be >= 0.")
        if self.on_context_overflow not in ("error", "truncate"):
            raise InvalidSettingsError("on_context_overflow must be 'error' or 'truncate'.")
