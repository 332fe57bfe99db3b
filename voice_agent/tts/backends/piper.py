"""Piper voices: ONNX VITS run by onnxruntime, English read through gruut (no espeak, no GPL).

The CPU default: a "medium" Piper voice (about 15 M parameters at inference)
speaks several times faster than real time on two laptop cores, and its
weights may be used commercially (the default, `en_US-lessac-medium`, see
docs/tts.md). A voice is a folder with `<name>.onnx` and `<name>.onnx.json`
(the config: sample rate, `phoneme_id_map`, `inference` scales, speakers).

Graph contract (Piper's export): inputs `input` int64 [1, T] (phoneme ids),
`input_lengths` int64 [1], `scales` float32 [3] = [noise_scale, length_scale,
noise_w], and `sid` int64 [1] for multi-speaker voices; output float32 audio
[1, 1, (1,) samples] at `audio.sample_rate`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from voice_agent.core.config import DEFAULT_PIPER, Settings
from voice_agent.core.hub import ModelNotFoundError
from voice_agent.tts.backends.base import NothingToSpeakError, UnknownVoiceError, resolve_checkpoint
from voice_agent.tts.base import Voice
from voice_agent.tts.text.phonemes import PhonemeIds

log = logging.getLogger(__name__)

# Attention in the text encoder grows with the square of the phonemes; a sentence
# or two per call keeps the first audio quick (the engine splits longer text).
MAX_CHARS = 300
MAX_THREADS = 4  # past 4 intra-op threads VITS gains little and starves the LLM


def find_voice(folder: Path) -> tuple[Path, Path]:
    """The (`.onnx`, `.onnx.json`) pair in `folder`.

    Raises:
        ModelNotFoundError: no pair, or more than one (the message lists them).
    """
    pairs = sorted(p for p in folder.glob("*.onnx") if p.with_name(p.name + ".json").is_file())
    if len(pairs) != 1:
        found = ", ".join(p.name for p in folder.iterdir()) if folder.is_dir() else "nothing"
        what = "no" if not pairs else "more than one"
        raise ModelNotFoundError(
            f"{folder} holds {what} Piper voice (NAME.onnx with NAME.onnx.json); found: {found}."
        )
    return pairs[0], pairs[0].with_name(pairs[0].name + ".json")


class PiperBackend:
    """A loaded Piper voice: an onnxruntime session, its config and its phoneme map."""

    name: ClassVar[str] = "piper"
    default_model: ClassVar[str] = DEFAULT_PIPER
    streams_text: ClassVar[bool] = False
    uses_word_timer: ClassVar[bool] = False
    offers_voices: ClassVar[bool] = False
    english_only = True
    max_chars = MAX_CHARS

    def __init__(self, session: Any, config: dict[str, Any], model_id: str, threads: int) -> None:
        self.session = session
        self.config = config
        self.model_id = model_id
        self.device = "cpu"
        self.dtype = "float32"
        self.threads = threads
        self.sample_rate = int(config["audio"]["sample_rate"])
        inference = config.get("inference", {})
        self.scales = np.array(
            [
                inference.get("noise_scale", 0.667),
                inference.get("length_scale", 1.0),
                inference.get("noise_w", 0.8),
            ],
            dtype=np.float32,
        )
        self.speakers: dict[str, int] = dict(config.get("speaker_id_map") or {})
        self.offers_voices = len(self.speakers) > 1  # type: ignore[misc]
        self.phonemes = PhonemeIds(config["phoneme_id_map"])
        self.inputs = {i.name for i in session.get_inputs()}
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model_ref: str | None = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        settings: Settings | None = None,
    ) -> PiperBackend:
        """Resolve the voice folder (offline-aware), open the ONNX graph, read its config."""
        import onnxruntime as ort  # type: ignore[import-untyped]

        if device != "cpu":
            raise ValueError("The Piper backend runs on the CPU (onnxruntime's CPU provider).")
        settings, ref, path = resolve_checkpoint(model_ref, cls.default_model, settings, ())
        onnx_path, config_path = find_voice(path)
        config = json.loads(config_path.read_text(encoding="utf-8"))
        threads = min(MAX_THREADS, os.cpu_count() or 1)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # onnxruntime's workers spin after each run by default; the LLM's next tokens, which
        # wait for the voice and then start at once, ran about 20 % slower beside them on 2
        # cores (100-115 ms a token against 75-90 ms, the 1.5B shape, side by side).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        backend = cls(session, config, ref, threads)
        backend.phonemes.encode("Hello.")  # gruut loads its lexicon on first use (~1 s)
        return backend

    def voices(self) -> list[Voice]:
        if not self.offers_voices:
            voice = self.config.get("dataset") or Path(self.model_id).name
            return [Voice("default", "Default", f"Piper voice {voice}")]
        return [Voice(name, name.replace("_", " ").title()) for name in self.speakers]

    def _speaker(self, voice: str | None) -> int:
        if voice in (None, "", "default"):
            return 0
        if voice in self.speakers and self.offers_voices:
            return self.speakers[voice]
        known = ", ".join(v.id for v in self.voices())
        raise UnknownVoiceError(
            f"Unknown voice {voice!r} for this Piper voice; available: {known}."
        )

    def synthesize(self, text: str, voice: str | None = None) -> np.ndarray:
        sid = self._speaker(voice)
        ids = self.phonemes.encode(text)
        if self.phonemes.spoken(ids) == 0:
            raise NothingToSpeakError("No words this English voice can read are left in the text.")
        feeds: dict[str, np.ndarray] = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": self.scales,
        }
        if "sid" in self.inputs:
            feeds["sid"] = np.array([sid], dtype=np.int64)
        with self._lock:
            (audio,) = self.session.run(["output"], feeds)[:1]
        return np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
