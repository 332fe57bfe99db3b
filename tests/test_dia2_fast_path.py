"""The opt-in fast path: static-shape steps (what CUDA graphs capture), compile, and fallback.

CUDA graphs cannot run here (no GPU); `voice_agent.bench.gpu_dia2.gpu_check` covers them on
a GPU machine. What runs here: the static programs the graphs replay, executed eagerly
("static"), must give the reference tokens; a torch.compile that really fails (an unknown
backend) must fall back to eager steps, say why and log a warning.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tests.dia2_helpers import case_config, cases, expected, load_runtime
from voice_agent.tts.dia2 import Dia2Runtime
from voice_agent.tts.dia2.sampling import SamplingConfig, sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _runtime(fast_path: str = "eager", **kwargs) -> Dia2Runtime:
    return load_runtime(fast_path=fast_path, **kwargs)


@pytest.fixture(scope="module")
def static_runtime() -> Dia2Runtime:
    rt = _runtime("static")
    assert (rt.fast_path, rt.fast_path_note) == ("static", None)
    return rt


def _generate(rt: Dia2Runtime, name: str):
    return rt.generate(cases()[name]["script"], case_config(name))


@pytest.mark.parametrize("name", ["c1_hello", "c4_long_nocfg", "c5_prefix"])
def test_static_steps_give_reference_tokens(static_runtime: Dia2Runtime, name: str) -> None:
    """Device-tensor positions, masked full-cache attention and in-place cache writes (the
    programs CUDA graphs capture) reproduce the official tokens, prefix warm-up included."""
    result = _generate(static_runtime, name)
    assert static_runtime.fast_path == "static"
    assert np.array_equal(result.audio_tokens, expected(name).audio_tokens)
    assert result.steps_run == cases()[name]["expected"]["steps_run"]
    assert np.abs(result.audio - expected(name).waveform).max() <= 1e-4


def test_concurrent_generation_runs_eager_and_buffers_come_back(
    static_runtime: Dia2Runtime,
) -> None:
    """Static buffers are lent to one generation at a time: a second one started while a
    stream is still running gets its own eager buffers; both keep the reference tokens."""
    rt, name = static_runtime, "c2_dialogue"
    stream = rt.stream(cases()[name]["script"], case_config(name))
    next(stream)
    assert stream.generation.static is not None
    other = rt.new_generation(rt.parse(cases()[name]["script"]), case_config(name))
    assert other.static is None
    while other.step():
        pass
    list(stream)
    want = expected(name).audio_tokens
    assert np.array_equal(stream.result.audio_tokens, want)
    assert np.array_equal(other.aligned(other.crop, other.final_frames()).numpy(), want)
    # The finished stream handed its buffers back.
    assert rt.new_generation(rt.parse("[S1] Hi there."), case_config(name)).static is not None


def test_compile_failure_falls_back_to_eager_with_reason(caplog) -> None:
    """A torch.compile that cannot work (unknown backend) falls back; the reason is recorded."""
    with caplog.at_level(logging.WARNING, logger="voice_agent.tts.dia2.fast_path"):
        rt = _runtime("compile", compile_backend="no_such_backend")
    assert rt.fast_path == "eager"
    assert "compile failed" in rt.fast_path_note and "no_such_backend" in rt.fast_path_note
    assert any("no_such_backend" in r.getMessage() for r in caplog.records)
    result = _generate(rt, "c1_hello")
    assert np.array_equal(result.audio_tokens, expected("c1_hello").audio_tokens)


@pytest.mark.parametrize("mode", ["cuda_graph", "auto"])
def test_cuda_paths_on_cpu_run_eager_and_say_so(mode: str) -> None:
    rt = _runtime()
    assert (rt.fast_path, rt.fast_path_note) == ("eager", None)
    assert rt.enable_fast_path(mode) == "eager"
    assert "CUDA" in rt.fast_path_note
    rt.disable_fast_path()
    assert (rt.fast_path, rt.fast_path_note) == ("eager", None)


def test_unknown_fast_path_is_refused() -> None:
    with pytest.raises(ValueError, match="fast_path"):
        _runtime("turbo")


def test_device_sampling_draws_what_multinomial_draws() -> None:
    """Regression: sampling moved from torch.multinomial to a sync-free exponential draw; the
    draws from the same seeded generator must stay the same."""
    logits = torch.randn(200, 64, generator=torch.Generator().manual_seed(1))
    config = SamplingConfig(temperature=0.8, top_k=64)
    ours = sample(logits, config, torch.Generator().manual_seed(7))
    probs = torch.softmax(logits / 0.8, dim=-1)
    theirs = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(7))[:, 0]
    assert torch.equal(ours, theirs)
