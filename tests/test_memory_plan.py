"""LLM memory planning against real loads, first principles and the free-RAM probe.

`loading.estimate_bytes` sizes a strategy as parameters x `BYTES_PER_PARAM[storage]`,
times `OVERHEAD_FACTOR`, plus `OVERHEAD_BYTES`; `strategies.to_strategies` compares that
with the RAM free now and `run_chain` skips what does not fit. A wrong number there fails
quietly: the planner either tries loads that run out of memory or skips ones that fit.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from voice_agent.core.config import load_settings
from voice_agent.core.errors import ModelLoadError
from voice_agent.core.hardware import BnbProbe, HardwareInfo, probe_bitsandbytes, probe_hardware
from voice_agent.core.loading import (
    BYTES_PER_PARAM,
    LoadReport,
    count_parameters,
    estimate_bytes,
    run_chain,
)
from voice_agent.llm import strategies
from voice_agent.testing import tiny_llm
from voice_agent.testing.paths import REPO_ROOT

# --- (a) the estimate against a real load ---------------------------------------------------

# Runs in a fresh process: loads `model_dir` the way the engine does (`from_pretrained` with
# the strategy's own kwargs), generates two tokens (every weight touched, a KV cache made),
# and prints the resident memory the load added and the bytes the loaded weights occupy.
MEASURE = r"""
import ctypes, ctypes.util, gc, json, sys
import torch
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM
from transformers.models.qwen2 import modeling_qwen2  # noqa: F401  (code, not the model)
from voice_agent.core.config import load_settings
from voice_agent.core.hardware import probe_hardware
from voice_agent.llm.strategies import all_strategies, from_pretrained_kwargs

model_dir, name = sys.argv[1], sys.argv[2]
strategy = all_strategies(probe_hardware())[name]
kwargs = from_pretrained_kwargs(strategy, load_settings({"HF_HUB_OFFLINE": "1"}), {"cpu": 1 << 40})
if strategy.quantization:
    import bitsandbytes  # noqa: F401  (its libraries are not the model's memory)
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def resident():
    # (anonymous, file-backed) resident bytes: /proc/self/status RssAnon and RssFile
    gc.collect()
    # glibc keeps freed blocks (the load's transient copies) mapped; hand them back so
    # what is left is what the model holds, not what the allocator has not returned yet.
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return tuple(int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile"))


before = resident()
model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
with torch.inference_mode():
    ids = torch.tensor([[5, 6, 7, 8]])
    model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False
    )
after = resident()
# Every parameter and buffer, and what bitsandbytes keeps beside them: int8 row scales
# (SCB), nf4 block absmax, double-quant state and code books.
tensors = [*model.parameters(), *model.buffers()]
for p in model.parameters():
    tensors += [v for v in vars(p).values() if isinstance(v, torch.Tensor)]
    state = getattr(p, "quant_state", None)
    if state is not None:
        tensors += [state.absmax, state.code]
        if state.nested:
            tensors += [state.offset, state.state2.absmax, state.state2.code]
storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
weights = sum(storages.values())
anon, mapped = after[0] - before[0], after[1] - before[1]
# Pages of the checkpoint file the process still maps count as far as they are the model's
# own weights (a float32 load uses the file in place); the rest of a file mapping is the
# kernel's page cache (clean, dropped under memory pressure), not memory the load needs.
# transformers 5.24 keeps the checkpoint mapped after a 4-bit load: 490 MB of it here.
print(json.dumps({"rss_growth": anon + min(mapped, weights), "weight_bytes": weights,
                  "anon_growth": anon, "file_growth": mapped}))
"""

CPU_STRATEGIES = ["cpu-float32", "cpu-bfloat16", "cpu-8bit", "cpu-4bit"]


def measure_load(model_dir: Path, strategy: str) -> dict[str, int]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(model_dir), strategy],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def needs_bitsandbytes(name: str) -> None:
    strategy = strategies.all_strategies(probe_hardware())[name]
    if strategy.quantization and not probe_bitsandbytes().usable:
        pytest.skip(f"bitsandbytes cannot quantize here: {probe_bitsandbytes().diagnosis}")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llm.build(tmp_path_factory.mktemp("tiny") / "llm")


@pytest.fixture(scope="module")
def mid_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 123 M-parameter random Qwen2 in fp32 (490 MB): 8 layers, hidden 1024, MLP 4096.

    The tiny tokenizer's 515-token vocabulary keeps the embeddings at 1 % of the weights, so
    nearly every parameter sits in a linear layer that bitsandbytes quantizes, as in a real
    LLM. (`tiny_llm.build_shaped` only makes the 0.5B/1.5B shapes, too big for a test.)
    """
    import torch
    from transformers import Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("mid") / "llm"
    tokenizer = tiny_llm.build_tokenizer(out)
    config = tiny_llm.tiny_config(
        len(tokenizer),
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(tiny_llm.EOS),
        pad_token_id=tokenizer.convert_tokens_to_ids(tiny_llm.PAD),
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    del model
    return out


@pytest.mark.slow
def test_estimate_covers_a_real_load_of_the_tiny_checkpoint(tiny_dir: Path) -> None:
    """Guards the planner's headroom (OVERHEAD_FACTOR, OVERHEAD_BYTES): without it the tiny
    model is planned at under 1 MB, less than loading and running it really takes.

    Tolerance: the estimate must cover the measured growth; its weight part (parameters x
    bytes per parameter) must be within 0.9x..1.2x of the bytes the weights occupy. (The
    fixed 0.4 GiB dominates the estimate here, so no upper bound on the whole estimate.)
    """
    storage = "float32"
    params, _ = count_parameters(tiny_dir)
    measured = measure_load(tiny_dir, "cpu-float32")
    assert estimate_bytes(tiny_dir, storage) >= measured["rss_growth"], measured
    ratio = params * BYTES_PER_PARAM[storage] / measured["weight_bytes"]
    assert 0.9 <= ratio <= 1.2, (ratio, measured)


@pytest.mark.slow
@pytest.mark.parametrize("name", CPU_STRATEGIES)
def test_estimate_matches_a_real_load_of_a_mid_size_model(mid_dir: Path, name: str) -> None:
    """Guards the bytes per parameter of each storage (e.g. int8 1.06 -> 0.3, nf4 0.56 ->
    0.1) and the headroom, against a real load of a 123 M-parameter model with each CPU
    strategy, measured in its own process.

    Tolerance: the weight part of the estimate (parameters x bytes per parameter) within
    0.9x..1.2x of the bytes the loaded weights occupy (quantization state included), and
    the whole estimate at least the resident memory the load and a generation added.
    """
    needs_bitsandbytes(name)
    storage = strategies.all_strategies(probe_hardware())[name].storage
    params, _ = count_parameters(mid_dir)
    assert 100e6 < params < 200e6
    measured = measure_load(mid_dir, name)
    ratio = params * BYTES_PER_PARAM[storage] / measured["weight_bytes"]
    assert 0.9 <= ratio <= 1.2, (storage, ratio, measured)
    estimate = estimate_bytes(mid_dir, storage)
    assert estimate >= measured["rss_growth"], (storage, estimate, measured)


# --- (b) bytes per parameter from first principles ------------------------------------------


def test_every_strategy_is_sized_by_its_storage() -> None:
    """Guards a strategy sized by the wrong entry (a 4-bit load planned as bf16, say)."""
    named = strategies.all_strategies(probe_hardware())
    expected = {
        "cuda-4bit": "nf4",
        "cpu-4bit": "nf4",
        "cuda-8bit": "int8",
        "cpu-8bit": "int8",
        "cpu-float32": "float32",
        "cpu-bfloat16": "bfloat16",
    }
    for name, storage in expected.items():
        assert named[name].storage == storage, name
    for name, strategy in named.items():
        if not strategy.quantization:
            assert strategy.storage == strategy.dtype, name
        assert strategy.storage in BYTES_PER_PARAM, name


def test_float_bytes_per_param_are_the_dtype_widths() -> None:
    """Guards the float entries: fp32 is 4 bytes a parameter, fp16 and bf16 2, exactly."""
    import torch

    for storage in ("float32", "bfloat16", "float16"):
        width = torch.empty(0, dtype=getattr(torch, storage)).element_size()
        assert BYTES_PER_PARAM[storage] == width, storage


def test_int8_bytes_per_param_from_first_principles() -> None:
    """Guards the int8 entry (e.g. 1.06 -> 0.3): LLM.int8 keeps one byte per weight plus an
    fp32 scale per output row (4 / row width bytes a parameter), so at least 1 byte; the
    planner may round up a little for the layers left in fp16 (embeddings, norms)."""
    import torch
    from bitsandbytes import functional

    width = 1024
    principled = 1 + 4 / width
    assert principled <= BYTES_PER_PARAM["int8"] <= 1.15
    # The same from a real bitsandbytes quantization of a layer that wide.
    weight = torch.randn(width, width, dtype=torch.float16)
    quantized, row_scales, _ = functional.int8_vectorwise_quant(weight)
    real = (quantized.nbytes + row_scales.nbytes) / weight.numel()
    assert real == pytest.approx(principled)
    assert real <= BYTES_PER_PARAM["int8"] <= real * 1.1


def test_nf4_bytes_per_param_from_first_principles() -> None:
    """Guards the nf4 entry (e.g. 0.56 -> 0.1): 4 bits are half a byte per weight, plus one
    absmax per 64-weight block, 8-bit after double quantization (1/64 byte a weight), plus an
    fp32 second-level absmax per 256 blocks: 0.516 byte a weight at the least."""
    import torch
    from bitsandbytes import functional

    principled = 0.5 + 1 / 64 + 4 / (64 * 256)
    assert principled <= BYTES_PER_PARAM["nf4"] <= 0.6
    # The same from a real bitsandbytes quantization (transformers' 4-bit settings).
    weight = torch.randn(1024, 1024)
    packed, state = functional.quantize_4bit(
        weight, blocksize=64, compress_statistics=True, quant_type="nf4"
    )
    parts = [packed, state.absmax, state.code, state.offset, state.state2.absmax]
    real = (sum(t.nbytes for t in parts) + state.state2.code.nbytes) / weight.numel()
    assert principled <= real <= principled * 1.01
    assert real <= BYTES_PER_PARAM["nf4"] <= real * 1.15


# --- (c) free RAM ---------------------------------------------------------------------------

GIB = 1 << 30
BILLION = 1_000_000_000


def header_only_checkpoint(directory: Path, params: int) -> Path:
    """A safetensors file whose header declares `params` fp32 parameters (no data: the
    planner reads headers only, and these tests never load it)."""
    directory.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"w": {"dtype": "F32", "shape": [params], "data_offsets": [0, 0]}})
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode())
    return directory


def plan_on_cpu(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, ram_free: int
) -> tuple[LoadReport, list[str], object]:
    """Plan and run the CPU chain with `ram_free` bytes of RAM reported free."""
    monkeypatch.setattr(strategies, "ram_available_bytes", lambda: ram_free)
    usable = BnbProbe(True, "0.50", "CPU", True, "libbitsandbytes_cpu.so", "loaded", None)
    monkeypatch.setattr(strategies, "probe_bitsandbytes", lambda: usable)
    hardware = HardwareInfo("2.x", False, None, [], 8, 64 * GIB, ram_free, True)
    settings = load_settings({"LLM_DEVICE": "cpu"})
    chain = strategies.plan_chain(settings, hardware)
    assert [s.name for s in chain] == [
        "cpu-int8-dynamic",
        "cpu-bfloat16",
        "cpu-float32",
        "cpu-8bit",
        "cpu-4bit",
    ]
    loaded: list[str] = []

    def load(strategy: strategies.LLMStrategy, kwargs: dict) -> str:
        loaded.append(strategy.name)
        return strategy.name

    report = LoadReport("llm", str(model_dir))
    steps = strategies.to_strategies(chain, model_dir, settings, hardware, load)
    try:
        result: object = run_chain(report, steps)
    except ModelLoadError as exc:
        result = exc
    return report, loaded, result


def test_free_ram_below_the_estimate_skips_with_a_memory_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the planner ignoring free RAM (the RAM probe not read, or not compared): with
    free RAM between the 8-bit and the bf16 estimates of a 1 B-parameter model, both floats
    are skipped with a reason naming the memory needed and free, and 8-bit is loaded."""
    model = header_only_checkpoint(tmp_path / "llm", BILLION)
    int8, bf16 = estimate_bytes(model, "int8"), estimate_bytes(model, "bfloat16")
    ram_free = int((int8 + bf16) / 2 / strategies.RAM_BUDGET_FRACTION)
    report, loaded, result = plan_on_cpu(model, monkeypatch, ram_free)
    assert result == "cpu-8bit" and loaded == ["cpu-8bit"]
    budget = int(ram_free * strategies.RAM_BUDGET_FRACTION)
    for attempt in report.attempts[:3]:
        assert attempt.outcome == "skipped" and attempt.free_bytes == budget
        assert attempt.needed_bytes == estimate_bytes(model, attempt.dtype) > budget
        assert (
            attempt.reason
            == f"needs {attempt.needed_bytes / GIB:.1f} GiB, {budget / GIB:.1f} GiB free"
        )


def test_free_ram_below_every_estimate_loads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the planner ignoring free RAM: with 256 MiB free nothing of a 1 B-parameter
    model fits, so every strategy is skipped for memory and no load is even tried."""
    model = header_only_checkpoint(tmp_path / "llm", BILLION)
    report, loaded, result = plan_on_cpu(model, monkeypatch, 256 << 20)
    assert isinstance(result, ModelLoadError) and loaded == []
    assert [a.outcome for a in report.attempts] == ["skipped"] * 5
    for attempt in report.attempts:
        assert attempt.reason.startswith("needs ") and attempt.reason.endswith(" GiB free")
        assert attempt.needed_bytes > attempt.free_bytes
    assert "needs" in str(result) and "GiB free" in str(result)
