"""The loading chain: plan, skip with a reason, record failures, choose the first that loads."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from voice_agent.core.errors import ModelLoadError
from voice_agent.core.hub import ModelNotFoundError
from voice_agent.core.loading import (
    GIB,
    LoadReport,
    Strategy,
    count_parameters,
    estimate_bytes,
    explain_error,
    run_chain,
    safetensors_header,
)


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        size = n * {"F32": 4, "BF16": 2}[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_chain_skips_fails_then_chooses() -> None:
    report = LoadReport("llm", "org/model")

    def boom() -> str:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    strategies = [
        Strategy(
            "cuda-4bit",
            "cuda",
            "bfloat16",
            lambda: "x",
            quantization="nf4",
            unavailable=lambda: "bitsandbytes native library missing",
        ),
        Strategy(
            "cuda-8bit",
            "cuda",
            "float16",
            lambda: "x",
            quantization="int8",
            needed_bytes=lambda: 6 * GIB,
            free_bytes=lambda: 3 * GIB,
        ),
        Strategy("cuda-fp16", "cuda", "float16", boom),
        Strategy("cpu-fp32", "cpu", "float32", lambda: "model"),
        Strategy("never", "cpu", "float32", lambda: pytest.fail("tried after success")),
    ]
    assert run_chain(report, strategies) == "model"
    outcomes = [(a.strategy, a.outcome) for a in report.attempts]
    assert outcomes == [
        ("cuda-4bit", "skipped"),
        ("cuda-8bit", "skipped"),
        ("cuda-fp16", "failed"),
        ("cpu-fp32", "chosen"),
    ]
    assert report.attempts[0].reason == "bitsandbytes native library missing"
    assert report.attempts[1].reason == "needs 6.0 GiB, 3.0 GiB free"
    failed = report.attempts[2]
    assert failed.error_type == "RuntimeError" and "out of memory" in failed.error
    assert failed.reason == "ran out of memory while loading"
    assert report.ok and report.chosen.strategy == "cpu-fp32"
    assert report.summary() == "llm: cpu-fp32 on cpu (float32)"
    d = report.as_dict()
    assert d["ok"] and d["chosen"]["strategy"] == "cpu-fp32" and len(d["attempts"]) == 4


def test_all_failing_raises_with_every_attempt() -> None:
    report = LoadReport("stt", "x")

    def bad() -> None:
        raise OSError("no such file: model.safetensors")

    with pytest.raises(ModelLoadError) as info:
        run_chain(
            report,
            [
                Strategy("a", "cpu", "float32", bad),
                Strategy("b", "cpu", "float32", lambda: None, unavailable=lambda: "nope"),
            ],
        )
    assert info.value.report is report
    assert "failed a (cpu, float32): a file the model needs is missing" in str(info.value)
    assert "skipped b" in str(info.value)
    assert not report.ok


def test_memory_estimate_from_headers_only(tmp_path: Path) -> None:
    _write_safetensors(
        tmp_path / "model.safetensors", {"w": ("BF16", [1000, 1000]), "b": ("F32", [1000])}
    )
    assert count_parameters(tmp_path) == (1_001_000, 2_004_000)
    fp32, nf4 = estimate_bytes(tmp_path, "float32"), estimate_bytes(tmp_path, "nf4")
    assert fp32 > nf4 > 0
    assert safetensors_header(tmp_path / "model.safetensors")["w"]["shape"] == [1000, 1000]


def test_corrupt_header_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ValueError, match="implausible"):
        count_parameters(tmp_path)


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (MemoryError(), "memory"),
        (ModelNotFoundError("Model 'x/y' was not found locally"), "not on this machine"),
        (RuntimeError("size mismatch for lm_head.weight"), "do not match"),
        (ValueError("whatever"), "raised an error"),
    ],
)
def test_plain_reasons(exc: Exception, words: str) -> None:
    assert words in explain_error(exc)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x01\x02\x03",
        struct.pack("<Q", 2) + b"[]",
        struct.pack("<Q", 8) + b'{"w": 1}',
        struct.pack("<Q", 15) + b'{"w": {"a": 1}}',
    ],
)
def test_truncated_or_malformed_weights_plan_nothing_and_still_load(
    tmp_path: Path, content: bytes
) -> None:
    """Regression: a truncated .safetensors (an interrupted download) raised struct.error and a
    malformed header TypeError/KeyError; the planners only catch ValueError/OSError ("cannot
    size it, just try"), so run_chain crashed instead of trying the strategy and reporting."""
    from voice_agent.core.config import load_settings
    from voice_agent.core.hardware import probe_hardware
    from voice_agent.llm.strategies import cpu_chain, to_strategies

    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(ValueError):
        count_parameters(tmp_path)
    settings = load_settings({"HF_HUB_OFFLINE": "1"})
    steps = to_strategies(
        cpu_chain(False, False)[:1], tmp_path, settings, probe_hardware(), lambda s, kw: "model"
    )
    report = LoadReport("llm", "x")
    assert run_chain(report, steps) == "model"
    assert report.attempts[0].needed_bytes is None
