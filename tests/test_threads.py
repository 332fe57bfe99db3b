"""The CPU's cores shared between the LLM and the voice while both compute."""

from __future__ import annotations

import threading

import torch

from voice_agent.core.threads import CoreBudget


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
