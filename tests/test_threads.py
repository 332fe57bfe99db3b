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
