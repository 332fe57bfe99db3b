"""Voice activity: how likely each 32 ms frame of 16 kHz audio is speech.

One model serves the speech gate (`gate`), hands-free turn detection and
barge-in (`vad`). It loads once per process through the loading chain, so the
Diagnostics tab, `/health` and `doctor` say which one is in use and why:

1. `silero-onnx`: Silero VAD, the model fastrtc, pipecat, LiveKit agents and
   speech-to-speech use. Its ONNX file ships inside the `silero-vad` wheel (MIT),
   so nothing is downloaded; onnxruntime runs it on one thread (about 0.2 ms a
   frame). The package itself is never imported: its `model` module calls
   `torch.set_num_threads(1)` for the whole process.
2. `numpy`: the numpy detector (`numpy_vad`), when the model cannot load or
   `VAD_BACKEND=numpy`.

Each audio stream gets its own state (`model.stream()`); the loaded model is
shared and thread-safe. Why not Silero's TorchScript file: torch's intra-op
thread count is per process, and with two threads on a busy 2-core machine the
JIT model took 20 ms a frame instead of 0.9 ms on one thread.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from voice_agent.audio.numpy_vad import FRAME, SAMPLE_RATE, NumpyVAD
from voice_agent.core.diagnostics import add_section
from voice_agent.core.loading import LoadReport, ModelLoadError, Strategy, run_chain

log = logging.getLogger(__name__)

FRAME_S = FRAME / SAMPLE_RATE  # 0.032 s
SILERO_CONTEXT = 64  # samples of the previous frame the model sees with each frame
SILERO_FILE = "silero_vad.onnx"


class FrameScorer(Protocol):
    """One audio stream's voice-activity state."""

    def score(self, frame: np.ndarray) -> float:
        """Speech probability (0..1) of the next `FRAME` samples (16 kHz float32)."""
        ...


class VoiceActivityModel(Protocol):
    """A loaded voice-activity model; `stream()` starts an independent stream."""

    name: str

    def stream(self) -> FrameScorer: ...


class SileroStream:
    """Silero's recurrent state and 64-sample context for one stream."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(SILERO_CONTEXT, dtype=np.float32)
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)

    def score(self, frame: np.ndarray) -> float:
        x = np.concatenate((self._context, frame.astype(np.float32, copy=False)))[None, :]
        out, self._state = self._session.run(
            None, {"input": x, "state": self._state, "sr": self._rate}
        )
        self._context = x[0, -SILERO_CONTEXT:]
        return float(out[0, 0])


class SileroVAD:
    """Silero VAD's ONNX model in one onnxruntime session (single-threaded, shared)."""

    name = "silero-onnx"

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]

        options = ort.SessionOptions()
        # One thread: the model is tiny, and the LLM and TTS need the cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.path = path
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def stream(self) -> SileroStream:
        return SileroStream(self._session)


def silero_model_path() -> Path | None:
    """The ONNX file inside the installed `silero-vad` package, found without importing it."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / SILERO_FILE
        if path.is_file():
            return path
    return None


def _silero_unavailable(backend: str) -> str | None:
    if backend == "numpy":
        return "VAD_BACKEND=numpy"
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install -r requirements.txt)"
    if silero_model_path() is None:
        return f"the silero-vad package (with data/{SILERO_FILE}) is not installed"
    return None


def _load_silero() -> SileroVAD:
    path = silero_model_path()
    if path is None:
        raise FileNotFoundError(SILERO_FILE)
    model = SileroVAD(path)
    # A frame of silence through the model: a broken file fails here, not mid-conversation.
    model.stream().score(np.zeros(FRAME, dtype=np.float32))
    return model


def strategies(backend: str = "auto") -> list[Strategy[VoiceActivityModel]]:
    """The loading chain: Silero's ONNX model, then the numpy detector."""
    return [
        Strategy(
            "silero-onnx",
            "cpu",
            "float32",
            _load_silero,
            unavailable=lambda: _silero_unavailable(backend),
        ),
        Strategy("numpy", "cpu", "float64", NumpyVAD),
    ]


_lock = threading.Lock()
_loaded: tuple[VoiceActivityModel, LoadReport] | None = None


def load_model(backend: str | None = None) -> VoiceActivityModel:
    """The process's voice-activity model, loaded on first use.

    Args:
        backend: "auto" or "numpy"; default `settings.vad_backend` (VAD_BACKEND).
    """
    global _loaded
    with _lock:
        if _loaded is None:
            if backend is None:
                from voice_agent.core.config import get_settings

                backend = get_settings().vad_backend
            report = LoadReport("vad", "silero-vad" if backend == "auto" else "numpy")
            try:
                model = run_chain(report, strategies(backend))
            except ModelLoadError:  # the numpy strategy cannot fail; keep the gate working
                log.exception("voice activity: every strategy failed")
                model = NumpyVAD()
            if report.chosen is not None and report.chosen.strategy != "silero-onnx":
                report.notes.append(_fallback_note(report))
            _loaded = (model, report)
        return _loaded[0]


def _fallback_note(report: LoadReport) -> str:
    first = report.attempts[0] if report.attempts else None
    why = (first.reason or first.error) if first is not None else "not tried"
    return f"Silero VAD is not in use ({why}); the numpy detector decides instead."


def load_report() -> LoadReport | None:
    """The loading record, or None before the model was first needed (cheap)."""
    return _loaded[1] if _loaded is not None else None


def reset() -> None:
    """Forget the loaded model (tests; the next use loads again)."""
    global _loaded
    with _lock:
        _loaded = None


def info() -> dict[str, Any]:
    """For the diagnostics snapshot: the detector in use and its loading record."""
    report = load_report()
    if report is None:
        backend = _silero_unavailable("auto")
        return {
            "status": "pending",
            "in_use": None,
            "would_use": "numpy" if backend else "silero-onnx",
            "reason": backend,
        }
    chosen = report.chosen
    return {
        "status": "ready",
        "in_use": chosen.strategy if chosen else "numpy",
        "reason": report.notes[-1] if report.notes else None,
        "report": report.as_dict(),
    }


add_section("voice_activity", info)


def to_mono_float(samples: np.ndarray) -> np.ndarray:
    """Any dtype, mono or stereo (channels first or last) -> mono float32 in [-1, 1]."""
    x = np.asarray(samples)
    if x.ndim == 2:
        # Channels are the short axis (a chunk always has more samples than channels).
        x = x.mean(axis=0 if x.shape[0] < x.shape[1] else 1)
    elif x.ndim != 1:
        raise ValueError(f"audio chunk must be 1-D or 2-D, got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        scale = float(np.iinfo(x.dtype).max) + 1.0
        return (x.astype(np.float32) / scale).astype(np.float32)
    x = x.astype(np.float32, copy=False)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def probabilities(samples: np.ndarray, model: VoiceActivityModel | None = None) -> np.ndarray:
    """Speech probability of every whole frame of a 16 kHz mono clip, from a fresh stream."""
    model = model or load_model()
    scorer = model.stream()
    x = to_mono_float(samples)
    count = len(x) // FRAME
    out = np.empty(count, dtype=np.float32)
    for i in range(count):
        out[i] = scorer.score(x[i * FRAME : (i + 1) * FRAME])
    return out
