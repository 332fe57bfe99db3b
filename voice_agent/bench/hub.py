"""Benchmark section `hub`: model resolution and tiny-checkpoint build/load times."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from voice_agent.bench.common import median_seconds


def run(quick: bool = False) -> dict:
    from voice_agent.core.config import load_settings
    from voice_agent.core.hub import ModelNotFoundError, ensure_model_exists
    from voice_agent.testing.tiny import make_tiny_models

    repeats = 3 if quick else 7
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        t0 = time.perf_counter()
        parts = make_tiny_models(tmpdir / "tiny")
        rows.append(
            {"what": "make-tiny-models (all four)", "median_s": round(time.perf_counter() - t0, 3)}
        )

        env = {
            **os.environ,
            "HF_HOME": str(tmpdir / "empty-home"),
            "HF_HUB_OFFLINE": "1",
            "LOCAL_MODELS_DIR": str(tmpdir / "models"),
        }
        settings = load_settings(env)
        rows.append(
            {
                "what": "resolve local directory",
                "median_s": round(
                    median_seconds(
                        lambda: ensure_model_exists(str(parts["llm"]), settings), repeats
                    ),
                    5,
                ),
            }
        )

        def missing() -> None:
            try:
                ensure_model_exists("Qwen/Qwen2.5-7B-Instruct", settings)
            except ModelNotFoundError:
                return
            raise AssertionError("resolution unexpectedly succeeded")

        rows.append(
            {
                "what": "offline miss (empty cache) -> ModelNotFoundError",
                "median_s": round(median_seconds(missing, repeats), 5),
            }
        )

        from transformers import (
            AutoModelForCausalLM,
            AutoTokenizer,
            VitsModel,
            WhisperForConditionalGeneration,
        )

        loaders = {
            "llm": lambda: (
                AutoModelForCausalLM.from_pretrained(parts["llm"]),
                AutoTokenizer.from_pretrained(parts["llm"]),
            ),
            "stt": lambda: WhisperForConditionalGeneration.from_pretrained(parts["stt"]),
            "vits": lambda: VitsModel.from_pretrained(parts["vits"]),
        }
        for name, load in loaders.items():
            rows.append(
                {
                    "what": f"load tiny {name} (transformers)",
                    "median_s": round(median_seconds(load, repeats), 4),
                }
            )
    return {"rows": rows, "notes": "Offline miss must stay under 2 s with no network attempt."}
