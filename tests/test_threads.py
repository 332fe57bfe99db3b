"""The CPU's cores shared between the LLM and the voice while both compute."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from voice_agent.core.threads import CPU_CORES, CoreBudget, in_own_thread


def test_two_working_stages_share_the_cores_and_one_alone_gets_them_all():
    """Bug: the LLM thread and the TTS thread both ran torch with 2 threads on 2 cores, four
    busy threads thrashing two cores while the reply was written and spoken."""
    budget = CoreBudget(cores=2)
    assert budget.share() == 2
    with budget.stage("llm"):
        assert budget.share() == 2  # alone: all the cores (the prefill before any speech)
        with budget.stage("tts"):
            assert budget.share() == 1
        assert budget.share() == 2
    assert budget.share() == 2


def test_fit_sets_only_the_calling_threads_torch_threads():
    """Each stage sets its own share: a worker's `fit` leaves the other threads' counts."""
    budget = CoreBudget(cores=2)
    before = torch.get_num_threads()
    seen: dict[str, int] = {}

    def worker() -> None:
        with budget.stage("llm"), budget.stage("tts"):
            budget.fit()
            seen["worker"] = torch.get_num_threads()
        seen["after"] = torch.get_num_threads()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"worker": 1, "after": 2}
    assert torch.get_num_threads() == before


def test_the_llm_gives_way_while_the_voice_makes_a_phrase():
    """Bug: the LLM and the voice computed side by side on 2 cores, and the reply's first
    phrase took 0.5 s to synthesize instead of 0.1 s alone, while the listener waited. The
    LLM writes faster than the voice speaks, so it waits at its next step instead; a voice
    that takes text while it speaks (Dia2) or computes elsewhere ("tts-beside") is not waited
    for."""
    budget = CoreBudget(cores=2)
    assert budget.give_way("llm") == 0.0  # nothing to wait for
    waited: list[float] = []

    def llm_step() -> None:
        with budget.stage("llm"):
            waited.append(budget.give_way("llm"))
            # After the wait the LLM is working again, and alone it gets every core.
            waited.append(budget.share())

    with budget.stage("tts"):
        thread = threading.Thread(target=llm_step)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive(), "the LLM waits while the voice computes"
        assert budget.share() == 2, "the waiting LLM leaves the voice every core"
    thread.join(5)
    assert not thread.is_alive() and waited[0] >= 0.3 and waited[1] == 2

    # A stop (the turn cancelled) ends the wait at once; a voice beside the LLM is not waited for.
    with budget.stage("tts"):
        assert budget.give_way("llm", stop=lambda: True) < 0.2
    with budget.stage("tts-beside"):
        assert budget.give_way("llm") == 0.0


def _os_threads() -> set[str]:
    return set(os.listdir("/proc/self/task"))


def _settle(want: set[str], timeout: float = 5.0) -> set[str]:
    """The process's threads once those not in `want` have ended (or the time is up)."""
    deadline = time.monotonic() + timeout
    while _os_threads() - want and time.monotonic() < deadline:
        time.sleep(0.02)
    return _os_threads()


def _parallel_work() -> float:
    """A matmul big enough that torch runs it on its OpenMP threads."""
    torch.set_num_threads(2)
    a = torch.randn(512, 512)
    return float((a @ a).sum())


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="Linux /proc")
def test_work_in_its_own_thread_leaves_no_openmp_pool_behind():
    """Bug: the recogniser decoded on the turn's thread, which lived on while the LLM wrote;
    its idle OpenMP pool beside the LLM's made libgomp's workers sleep at every barrier
    (the LLM 1.5-2x slower on 2 cores). Work run with `in_own_thread` takes its pool along."""
    in_own_thread(_parallel_work)  # torch's own first-use threads, which stay, start here
    before = _settle(_os_threads())
    in_own_thread(_parallel_work)
    assert _settle(before) - before == set()
    # The same work on a thread that lives on keeps its pool's worker: what it replaces.
    done, release = threading.Event(), threading.Event()

    def lingering() -> None:
        _parallel_work()
        done.set()
        release.wait(10)

    thread = threading.Thread(target=lingering)
    thread.start()
    try:
        assert done.wait(10)
        assert len(_os_threads() - before) >= 2  # the thread itself and its OpenMP worker
    finally:
        release.set()
        thread.join()


def test_in_own_thread_returns_raises_and_fits_the_share():
    caller = threading.current_thread()
    seen: dict[str, object] = {}

    def work() -> str:
        seen["thread"] = threading.current_thread()
        seen["threads"] = torch.get_num_threads()
        return "done"

    with CPU_CORES.stage("llm"), CPU_CORES.stage("tts"):
        assert in_own_thread(work, "probe") == "done"
    thread = seen["thread"]
    assert isinstance(thread, threading.Thread) and thread is not caller
    assert thread.name == "probe" and not thread.is_alive()
    assert seen["threads"] == max(1, CPU_CORES.cores // 2)  # the share of two working stages

    def fails() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        in_own_thread(fails)


def test_the_llm_prefills_on_its_share_and_decodes_leaving_a_core(tiny_models, monkeypatch):
    """One token's step is bound by moving weights, not arithmetic: on 2 cores it is as fast
    on 1 thread, and faster beside a busy browser (llm/engine.py `DECODE_LEAVE`); the
    prompt's prefill is arithmetic and takes the whole share."""
    from voice_agent.core.config import load_settings
    from voice_agent.llm.base import GenerationSettings
    from voice_agent.llm.engine import OpenSourceLLM

    settings = load_settings({"HF_HUB_OFFLINE": "1", "LLM_DEVICE": "cpu"})
    llm = OpenSourceLLM(str(tiny_models / "llm"), settings, strategies=["cpu-float32"])
    monkeypatch.setattr(CPU_CORES, "cores", 4)
    steps: list[tuple[int, int]] = []  # (tokens computed, torch threads) per forward pass
    real_forward = llm.model.forward

    def forward(*args, **kwargs):
        steps.append((int(kwargs["input_ids"].shape[1]), torch.get_num_threads()))
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(llm.model, "forward", forward)
    greedy = GenerationSettings(temperature=0, max_new_tokens=6)
    # The second prefills only what the kept cache lacks, on the whole share again.
    for question in ("What is the weather like?", "And how warm will it be tomorrow?"):
        steps.clear()
        llm.generate_reply([{"role": "user", "content": question}], greedy)
        assert len(steps) >= 3, steps
        assert steps[0][0] > 1 and steps[0][1] == 4, steps  # the prompt
        assert all(n == 1 and threads == 3 for n, threads in steps[1:]), steps  # each token
    monkeypatch.setattr(CPU_CORES, "cores", 2)  # this machine's case: one thread decodes
    steps.clear()
    llm.generate_reply([{"role": "user", "content": "Is it raining?"}], greedy)
    assert steps[0][1] == 2 and all(threads == 1 for _, threads in steps[1:]), steps
