"""`make-tiny-models` writes four checkpoints that the real loaders load offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from voice_agent.testing.paths import REPO_ROOT


def test_cli_writes_all_four(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "voice_agent", "make-tiny-models", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert out.returncode == 0, out.stderr
    for part in ("llm", "stt", "vits"):
        assert (tmp_path / "m" / part / "config.json").is_file()
        assert list((tmp_path / "m" / part).glob("*.safetensors"))
    for sub in (
        "dia2/config.json",
        "dia2/model.safetensors",
        "tokenizer/tokenizer.json",
        "mimi/config.json",
    ):
        assert (tmp_path / "m" / "dia2" / sub).is_file()


def test_llm_loads_with_transformers_and_chats(tiny_models: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models / "llm", local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_models / "llm", local_files_only=True)
    assert model.config.model_type == "qwen2"
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Hello there"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    text = tok.decode(ids[0])
    assert (
        "<|im_start|>user" in text and "Hello there" in text and text.rstrip().endswith("assistant")
    )
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3 or tok.eos_token_id in out[0].tolist()


def test_whisper_loads_with_transformers(tiny_models: Path) -> None:
    import numpy as np
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    proc = WhisperProcessor.from_pretrained(tiny_models / "stt", local_files_only=True)
    model = WhisperForConditionalGeneration.from_pretrained(
        tiny_models / "stt", local_files_only=True
    )
    feats = proc(
        np.zeros(16000, dtype=np.float32), sampling_rate=16000, return_tensors="pt"
    ).input_features
    out = model.generate(feats, max_new_tokens=3)
    assert out.ndim == 2


def test_vits_loads_with_transformers(tiny_models: Path) -> None:
    import torch
    from transformers import AutoTokenizer, VitsModel

    tok = AutoTokenizer.from_pretrained(tiny_models / "vits", local_files_only=True)
    model = VitsModel.from_pretrained(tiny_models / "vits", local_files_only=True)
    with torch.no_grad():
        wav = model(**tok("hello there", return_tensors="pt")).waveform
    assert wav.shape[-1] > 0 and model.config.sampling_rate > 0


def test_dia2_loads_with_our_runtime(tiny_models: Path) -> None:
    dia2 = pytest.importorskip("voice_agent.tts.dia2", reason="Dia2 runtime not built yet")
    d = tiny_models / "dia2"
    runtime = dia2.Dia2Runtime.from_pretrained(
        str(d / "dia2"), tokenizer_ref=str(d / "tokenizer"), mimi_ref=str(d / "mimi")
    )
    assert runtime.sample_rate == 24000


def test_the_benchmark_tokenizer_splits_english_like_a_real_one() -> None:
    """Shaped benchmark models take the English-trained tokenizer: common words are mostly
    one token each and the built-in tool list is about as long as with Qwen2.5's tokenizer
    (~1,000 tokens), not the tiny tokenizer's 2,300+ (which made decoding in the voice
    bench slower than the real model's at its real context)."""
    from voice_agent.core.config import load_settings
    from voice_agent.llm.engine import DEFAULT_SYSTEM_PROMPT
    from voice_agent.testing.tiny_llm import build_tokenizer
    from voice_agent.tools.toolbox import Toolbox

    english = build_tokenizer(english=True)
    tiny = build_tokenizer()
    words = " the weather is sunny this afternoon with a light breeze from the west"
    assert (
        len(english(words)["input_ids"]) <= len(words.split()) + 2 < len(tiny(words)["input_ids"])
    )
    messages = [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "Hello."},
    ]
    tools = Toolbox.from_settings(load_settings({})).specs()

    def prompt_tokens(tokenizer) -> int:
        text = tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=True
        )
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    assert 700 <= prompt_tokens(english) <= 1_300 < 2 * 1_000 <= prompt_tokens(tiny)
