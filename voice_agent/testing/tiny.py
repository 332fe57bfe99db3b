"""`make-tiny-models DIR`: complete, loadable, random-weight checkpoints in seconds.

`DIR/llm` (Qwen2 causal LM, real BPE tokenizer, ChatML template), `DIR/stt`
(Whisper with processor), `DIR/stt-moonshine` (Moonshine with processor, see
`tiny_moonshine`), `DIR/vits` (VITS with tokenizer), `DIR/piper` (a
random Piper voice: `.onnx` + `.onnx.json`, see `tiny_piper`) and `DIR/dia2`
(the `dia2/`, `tokenizer/` and `mimi/` of the Dia2 parity fixture in
`tests/fixtures/dia2-tiny`). The real loading code loads them as if they came
from the hub.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from voice_agent.testing.paths import dia2_fixture_dir

log = logging.getLogger(__name__)

PARTS = ("llm", "stt", "stt-moonshine", "vits", "piper", "dia2")


def build_dia2(out_dir: Path) -> Path:
    """Copy the Dia2 fixture's checkpoint, tokenizer and Mimi (data only) into `out_dir`."""
    source = dia2_fixture_dir()
    if not (source / "dia2" / "config.json").is_file():
        raise FileNotFoundError(
            f"Dia2 tiny fixture not found at {source}; it is part of the repository "
            "(tests/fixtures/dia2-tiny), so the checkout is incomplete."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("dia2", "tokenizer", "mimi"):
        shutil.copytree(source / name, out_dir / name, dirs_exist_ok=True)
    for wav in source.glob("prefix_*.wav"):
        shutil.copyfile(wav, out_dir / wav.name)
    # The fixture is read-only; copies must be writable so a rebuild can replace them.
    for path in out_dir.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return out_dir


def _builders() -> dict[str, Callable[[Path], Path]]:
    from voice_agent.testing import tiny_llm, tiny_moonshine, tiny_piper, tiny_vits, tiny_whisper

    return {
        "llm": tiny_llm.build,
        "stt": tiny_whisper.build,
        "stt-moonshine": tiny_moonshine.build,
        "vits": tiny_vits.build,
        "piper": tiny_piper.build,
        "dia2": build_dia2,
    }


def make_tiny_models(out_dir: str | Path, parts: tuple[str, ...] = PARTS) -> dict[str, Path]:
    """Write the tiny checkpoints under `out_dir`; returns {part: directory}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    builders = _builders()
    written: dict[str, Path] = {}
    for part in parts:
        t0 = time.perf_counter()
        written[part] = builders[part](out / part)
        log.info("tiny %s written to %s in %.1f s", part, written[part], time.perf_counter() - t0)
    return written
