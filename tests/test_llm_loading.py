"""The LLM loading chain on the tiny checkpoint: plans, real quantized loads, skips and failures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from voice_agent.core.config import DEFAULT_LLM_CPU, DEFAULT_LLM_CUDA, load_settings
from voice_agent.core.errors import ModelLoadError
from voice_agent.core.hardware import GPUInfo, HardwareInfo, probe_hardware
from voice_agent.core.hub import ModelNotFoundError
from voice_agent.core.loading import estimate_bytes
from voice_agent.llm.base import GenerationSettings
from voice_agent.llm.engine import OpenSourceLLM, choose_model
from voice_agent.llm.strategies import from_pretrained_kwargs, plan_chain
from voice_agent.testing import tiny_llm
from voice_agent.testing.paths import REPO_ROOT

GREEDY = GenerationSettings(temperature=0, max_new_tokens=8)


@pytest.fixture(autouse=True)
def _cpu_and_few_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU chains on any machine (a GPU would otherwise start the chain at cuda-4bit)."""
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("LLM_DEVICE", "cpu")


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llm.build(tmp_path_factory.mktemp("tiny") / "llm")


def _hardware(cuda: bool, cpu_bf16: bool = True, gpu_bf16: bool = True) -> HardwareInfo:
    gpus = [GPUInfo(0, "Test GPU", "8.0" if gpu_bf16 else "7.5", 24 << 30, 20 << 30, gpu_bf16)]
    return HardwareInfo("2.x", cuda, "12.8" if cuda else None, gpus if cuda else [], 8, 32 << 30,
                        16 << 30, cpu_bf16)  # fmt: skip


def _names(env: dict[str, str], hardware: HardwareInfo) -> list[str]:
    return [s.name for s in plan_chain(load_settings(env), hardware)]


def test_chain_order_on_cuda_and_cpu() -> None:
    assert _names({}, _hardware(cuda=True)) == [
        "cuda-4bit",
        "cuda-8bit",
        "cuda-bfloat16",
        "cuda-bfloat16-offload",
        "cpu-int8-dynamic",
        "cpu-bfloat16",
        "cpu-float32",
        "cpu-8bit",
        "cpu-4bit",
    ]
    # A pre-Ampere GPU computes in fp16; a CPU without native bf16 falls back to fp32 first.
    old = _names({}, _hardware(cuda=True, cpu_bf16=False, gpu_bf16=False))
    assert old[:4] == ["cuda-4bit", "cuda-8bit", "cuda-float16", "cuda-float16-offload"]
    assert old[4:7] == ["cpu-int8-dynamic", "cpu-float32", "cpu-bfloat16"]
    chain = plan_chain(load_settings({}), _hardware(cuda=True, gpu_bf16=False))
    assert chain[0].dtype == "float16" and chain[0].quantization == "nf4"


def test_prefer_4bit_0_starts_at_fp16_and_llm_device_forces_a_device() -> None:
    no_quant = _names({"MODEL_SERVER_PREFER_4BIT": "0"}, _hardware(cuda=True))
    assert no_quant[0] == "cuda-bfloat16"
    assert not any("bit" in n or "int8" in n for n in no_quant)
    assert no_quant[-2:] == ["cpu-bfloat16", "cpu-float32"]
    assert _names({"LLM_DEVICE": "cpu"}, _hardware(cuda=True))[0] == "cpu-int8-dynamic"
    assert all(n.startswith("cuda") for n in _names({"LLM_DEVICE": "cuda"}, _hardware(True)))
    assert _names({}, _hardware(cuda=False)) == [
        "cpu-int8-dynamic",
        "cpu-bfloat16",
        "cpu-float32",
        "cpu-8bit",
        "cpu-4bit",
    ]
    with pytest.raises(ValueError, match="unknown LLM strategy cpu-2bit"):
        plan_chain(load_settings({}), _hardware(False), ["cpu-2bit"])


def test_from_pretrained_kwargs_use_transformers_5_apis(tmp_path: Path) -> None:
    import torch

    settings = load_settings({"OFFLOAD_FOLDER": str(tmp_path / "offload")})
    chain = {s.name: s for s in plan_chain(settings, _hardware(cuda=True))}
    nf4 = from_pretrained_kwargs(chain["cuda-4bit"], settings, {0: 10 << 30})
    q = nf4["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16 and nf4["dtype"] == torch.bfloat16
    assert nf4["device_map"] == "auto" and nf4["max_memory"] == {0: 10 << 30}
    assert "torch_dtype" not in nf4 and "load_in_8bit" not in nf4
    int8 = from_pretrained_kwargs(chain["cuda-8bit"], settings, {0: 1})
    assert int8["quantization_config"].load_in_8bit
    offload = from_pretrained_kwargs(chain["cuda-bfloat16-offload"], settings, {0: 1, "cpu": 2})
    assert offload["offload_folder"] == str(tmp_path / "offload")
    assert offload["max_memory"] == {0: 1, "cpu": 2} and (tmp_path / "offload").is_dir()
    cpu = from_pretrained_kwargs(chain["cpu-float32"], settings, {"cpu": 1})
    assert cpu["device_map"] == {"": "cpu"} and cpu["dtype"] == torch.float32


def test_real_4bit_load_on_cpu_quantizes_every_linear(llm_dir: Path) -> None:
    import bitsandbytes as bnb

    llm = OpenSourceLLM(str(llm_dir), strategies=["cpu-4bit"])
    layer = llm.model.model.layers[0]
    for linear in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
        assert isinstance(linear, bnb.nn.Linear4bit)
        assert linear.weight.quant_state.quant_type == "nf4"
    assert llm.report.chosen.quantization == "nf4" and llm.describe()["quantization"] == "nf4"
    assert llm.generate_reply("Hello", GREEDY).completion_tokens == 8


def test_the_cpu_default_is_int8_dynamic_and_close_to_float32(llm_dir: Path) -> None:
    """The CPU chain starts with torch's int8 kernels (decoding ~3x faster than bf16 at the
    1.5B shape, docs/llm.md): every Linear becomes an int8 one, the embedding stays float,
    and the next-token scores stay close to the float32 model's."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    assert plan_chain(load_settings({}), _hardware(cuda=False))[0].name == "cpu-int8-dynamic"
    settings = load_settings({"HF_HUB_OFFLINE": "1", "LLM_DEVICE": "cpu"})
    int8 = OpenSourceLLM(str(llm_dir), settings)
    exact = OpenSourceLLM(str(llm_dir), settings, strategies=["cpu-float32"])
    assert int8.strategy.name == "cpu-int8-dynamic"
    assert int8.describe()["quantization"] == "int8-dynamic"
    layer = int8.model.model.layers[0]
    for linear in (layer.self_attn.q_proj, layer.mlp.down_proj, int8.model.lm_head):
        assert isinstance(linear, DynamicLinear)
    assert int8.model.model.embed_tokens.weight.dtype == torch.float32
    ids = int8.tokenizer("The weather today is sunny", return_tensors="pt").input_ids
    with torch.inference_mode():
        a = int8.model(ids).logits[0, -1]
        b = exact.model(ids).logits[0, -1]
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.99
    assert not torch.equal(a, b)  # it really computed in int8
    assert int8.generate_reply("Hello", GREEDY).completion_tokens == 8


def test_without_torch_int8_kernels_the_chain_starts_at_the_floats(
    llm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voice_agent.llm import strategies

    assert strategies.int8_dynamic_unavailable() is None  # x86: fbgemm/x86 engines
    reason = "torch has no x86/fbgemm quantized engine on this CPU (has: qnnpack)"
    monkeypatch.setattr(strategies, "int8_dynamic_unavailable", lambda: reason)
    llm = OpenSourceLLM(str(llm_dir), load_settings({"HF_HUB_OFFLINE": "1", "LLM_DEVICE": "cpu"}))
    first = llm.report.attempts[0]
    assert first.strategy == "cpu-int8-dynamic" and first.outcome == "skipped"
    assert first.reason == reason and llm.strategy.quantization is None


def test_real_8bit_load_on_cpu(llm_dir: Path) -> None:
    import bitsandbytes as bnb
    import torch

    llm = OpenSourceLLM(str(llm_dir), strategies=["cpu-8bit"])
    linear = llm.model.model.layers[1].mlp.up_proj
    assert isinstance(linear, bnb.nn.Linear8bitLt) and linear.weight.dtype == torch.int8
    assert llm.generate_reply("Hello", GREEDY).completion_tokens == 8


def test_memory_planner_skips_what_cannot_fit(llm_dir: Path) -> None:
    """A RAM budget between the 8-bit and bf16 estimates: both floats skipped, 8-bit loads."""
    int8, bf16 = estimate_bytes(llm_dir, "int8"), estimate_bytes(llm_dir, "bfloat16")
    budget = (int8 + bf16) // 2
    llm = OpenSourceLLM(str(llm_dir), max_memory={"cpu": budget})
    outcomes = {a.strategy: a.outcome for a in llm.report.attempts}
    # The float order depends on the CPU's bf16 support; both come before the quantized ones.
    assert outcomes == {
        "cpu-int8-dynamic": "skipped",  # loads in float32 first: the largest peak
        "cpu-bfloat16": "skipped",
        "cpu-float32": "skipped",
        "cpu-8bit": "chosen",
    }
    skipped = next(a for a in llm.report.attempts if a.strategy == "cpu-bfloat16")
    assert skipped.needed_bytes == bf16 and skipped.free_bytes == budget
    assert skipped.reason.startswith("needs ") and " free" in skipped.reason


def test_every_strategy_skipped_raises_with_all_attempts(llm_dir: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        OpenSourceLLM(str(llm_dir), max_memory={"cpu": 1024})
    report = caught.value.report
    assert [a.outcome for a in report.attempts] == ["skipped"] * 5
    assert all("needs" in a.reason for a in report.attempts)
    assert "cpu-4bit" in str(caught.value) and not report.ok


def test_corrupt_weights_fail_every_strategy_with_a_reason(llm_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "llm"
    shutil.copytree(llm_dir, broken)
    weights = broken / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with pytest.raises(ModelLoadError) as caught:
        OpenSourceLLM(str(broken))
    attempts = caught.value.report.attempts
    assert [a.outcome for a in attempts] == ["failed"] * 5
    assert all(a.error_type and "corrupt" in a.reason for a in attempts)


# In a fresh process, load the tiny model through an explicit chain that starts with the
# quantized strategies, under a deliberately broken bitsandbytes copied to PYTHONPATH.
CHAIN_SCRIPT = """
import json, sys
from voice_agent.llm.engine import OpenSourceLLM
llm = OpenSourceLLM(sys.argv[1], strategies=["cpu-4bit", "cpu-8bit", "cpu-float32"])
print(json.dumps(llm.report.as_dict()))
"""


def _run_with_broken_bnb(llm_dir: Path, site: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO_ROOT}"}
    out = subprocess.run(
        [sys.executable, "-c", CHAIN_SCRIPT, str(llm_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _copy_bnb(site: Path) -> Path:
    import bitsandbytes

    target = site / "bitsandbytes"
    shutil.copytree(
        Path(bitsandbytes.__file__).parent,
        target,
        ignore=shutil.ignore_patterns("*.so", "*.dylib", "*.dll", "__pycache__"),
    )
    return target


def test_unusable_bitsandbytes_skips_quantized_strategies_with_its_diagnosis(
    llm_dir: Path, tmp_path: Path
) -> None:
    bnb = _copy_bnb(tmp_path / "site")
    (bnb / "cextension.py").write_text(
        "raise OSError('libbitsandbytes_cpu.so: cannot open shared object file')\n"
    )
    report = _run_with_broken_bnb(llm_dir, tmp_path / "site")
    first, second, chosen = report["attempts"]
    assert first["outcome"] == second["outcome"] == "skipped"
    assert "cannot open shared object file" in first["reason"] and "Fix:" in first["reason"]
    assert chosen["strategy"] == "cpu-float32" and chosen["outcome"] == "chosen"


@pytest.mark.skipif(probe_hardware().cuda_available, reason="CPU backend scenario")
def test_broken_quantization_kernels_fail_and_the_chain_moves_on(
    llm_dir: Path, tmp_path: Path
) -> None:
    """bitsandbytes imports but has no CPU kernels (no native library, backends emptied)."""
    bnb = _copy_bnb(tmp_path / "site")
    for backend in ("cpu", "default"):
        (bnb / "backends" / backend / "ops.py").write_text("")
    report = _run_with_broken_bnb(llm_dir, tmp_path / "site")
    failed = report["attempts"][:2]
    assert [a["outcome"] for a in failed] == ["failed", "failed"]
    assert all(a["error_type"] and "bitsandbytes" in a["reason"] for a in failed)
    assert report["chosen"]["strategy"] == "cpu-float32" and report["ok"]


def test_offline_missing_model_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as caught:
        OpenSourceLLM("Qwen/Qwen2.5-0.5B-Instruct-not-here")
    assert time.perf_counter() - start < 2.0
    assert "prefetch" in str(caught.value)
    assert caught.value.report.model_ref == "Qwen/Qwen2.5-0.5B-Instruct-not-here"


def test_default_model_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings({})
    assert choose_model(None, settings, _hardware(cuda=True))[0] == DEFAULT_LLM_CUDA
    ref, note = choose_model(None, settings, _hardware(cuda=False))
    assert ref == DEFAULT_LLM_CPU and "no usable CUDA GPU" in note
    assert choose_model(None, load_settings({"LLM_DEVICE": "cpu"}), _hardware(True))[0] == (
        DEFAULT_LLM_CPU
    )
    assert choose_model("x/y", settings, _hardware(True)) == ("x/y", None)
    # Unset MODEL_SERVER_MODEL_NAME, offline, empty cache: the report still says what and why.
    with pytest.raises(ModelNotFoundError) as caught:
        OpenSourceLLM()
    report = caught.value.report
    assert report.model_ref == DEFAULT_LLM_CPU
    assert any("MODEL_SERVER_MODEL_NAME is unset" in n for n in report.notes)


@pytest.mark.skipif(probe_hardware().cuda_available, reason="needs a machine without CUDA")
def test_llm_device_cuda_without_a_gpu_explains(llm_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLM_DEVICE", "cuda")
    with pytest.raises(ModelLoadError) as caught:
        OpenSourceLLM(str(llm_dir))
    attempts = caught.value.report.attempts
    assert attempts and all(a.outcome == "skipped" for a in attempts)
    assert all("no CUDA device is visible" in a.reason for a in attempts)


def test_seed_call_works_with_the_environment(llm_dir: Path, monkeypatch) -> None:
    """The seed's `OpenSourceLLM().generate_reply('Hello')`, model from MODEL_SERVER_MODEL_NAME."""
    monkeypatch.setenv("MODEL_SERVER_MODEL_NAME", str(llm_dir))
    llm = OpenSourceLLM()
    reply = llm.generate_reply("Hello")
    assert isinstance(reply.text, str) and reply.completion_tokens > 0
    assert reply.finish_reason in ("stop", "length")
    assert llm.report.ok and llm.report.source == "local_dir"
    described = llm.describe()
    assert described["context_length"] == 512
    assert described["strategy"] == llm.report.chosen.strategy == llm.report.attempts[0].strategy
    json.dumps(described)
