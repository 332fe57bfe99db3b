"""Many conversations on one process: the admission gates' line, and what a waiting tab sees.

The gates (`voice_agent.pipeline.admission`) serve their line first come, first
served, each waiter knowing its place; the Conversation tab shows a waiting user
"Queued: position N" while its turn waits (`voice_agent/ui/waiting.py`).
"""

from __future__ import annotations

import threading
import time

from tests.fakes import REPLY, FakeLLM, fake_models
from voice_agent.core.cancel import CancelToken
from voice_agent.pipeline.admission import EngineGate
from voice_agent.pipeline.agent import Agent
from voice_agent.ui.conversation import Conversation, TurnControls


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_the_line_is_served_in_order_and_each_waiter_knows_its_place() -> None:
    """Guards first come, first served: a plain lock hands a freed engine to any waiter, so
    'position 2' could be overtaken; the gate serves its line in order, and `position`
    counts from 1 (next)."""
    gate = EngineGate("llm", queue_size=8)
    first = gate.enter(timeout_s=1)
    assert first is not None
    owners = [CancelToken() for _ in range(4)]
    served: list[int] = []
    lock = threading.Lock()

    def wait(i: int) -> None:
        held = gate.enter(timeout_s=10, cancel=owners[i])
        assert held is not None
        with lock:
            served.append(i)
        time.sleep(0.02)
        held.release()

    threads = []
    for i in range(4):
        threads.append(threading.Thread(target=wait, args=(i,)))
        threads[-1].start()
        assert wait_until(lambda i=i: gate.position(owners[i]) == i + 1)
    assert [gate.position(o) for o in owners] == [1, 2, 3, 4] and gate.waiting == 4
    first.release()
    for thread in threads:
        thread.join(10)
    assert served == [0, 1, 2, 3]
    assert gate.waiting == 0 and gate.admitted == 0 and gate.position(owners[0]) is None
    # The rule itself: a free place goes to the first in line, not to whoever asks.
    a, b = object(), object()
    assert gate.lock.acquire(timeout=1)
    assert not gate.take(a, 0) and not gate.take(b, 0)  # both in line, a first
    gate.lock.release()
    assert not gate.take(b, 0.1)  # free, but b is second
    assert gate.take(a, 0.1) and gate.position(b) == 1
    gate.lock.release()
    assert gate.take(b, 0.1) and gate.waiting == 0
    gate.lock.release()


def test_a_gate_with_slots_serves_that_many_at_once() -> None:
    """Guards the LLM gate on a batching server: `slots` callers run together, the next
    waits in line, and the queue limit counts on top of the slots."""
    gate = EngineGate("llm", queue_size=1, slots=2)
    a, b = gate.enter(timeout_s=1), gate.enter(timeout_s=1)
    assert a is not None and b is not None and gate.lock.locked()
    waiter = CancelToken()
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(gate.enter(timeout_s=5, cancel=waiter)))
    thread.start()
    assert wait_until(lambda: gate.position(waiter) == 1)
    from voice_agent.core.errors import BusyError

    try:
        gate.enter(timeout_s=1)
        raise AssertionError("a full queue must refuse")
    except BusyError:
        pass
    a.release()
    thread.join(5)
    assert got and got[0] is not None
    got[0].release()  # type: ignore[attr-defined]
    b.release()
    assert gate.admitted == 0 and not gate.lock.locked()


def test_a_waiting_tab_is_told_its_place_in_line() -> None:
    """Guards the queued status: while other conversations hold the language model, a tab's
    turn says 'Queued: position N', counts down as the line moves, then answers."""
    models = fake_models(llm=FakeLLM())
    gate = models.gates["llm"]
    held = gate.enter(timeout_s=1)  # another conversation's reply
    assert held is not None
    ahead = CancelToken()
    ahead_pass: list[object] = []
    ahead_thread = threading.Thread(
        target=lambda: ahead_pass.append(gate.enter(timeout_s=10, cancel=ahead))
    )
    ahead_thread.start()
    assert wait_until(lambda: gate.position(ahead) == 1)

    conversation = Conversation(lambda: Agent(models))
    ui = conversation.new_session()
    statuses: list[str] = []

    def talk() -> None:
        for _chat, _audio, status in conversation.run_turn(ui, TurnControls(), text="Hello"):
            if not statuses or statuses[-1] != status:
                statuses.append(status)

    tab = threading.Thread(target=talk)
    tab.start()
    assert wait_until(lambda: "Queued: position 2 (waiting for the language model)" in statuses)
    held.release()  # the line moves: the one ahead gets the model
    assert wait_until(lambda: "Queued: position 1 (waiting for the language model)" in statuses)
    ahead_thread.join(5)
    ahead_pass[0].release()  # type: ignore[attr-defined]
    tab.join(10)
    assert statuses[-1] == "Ready", statuses
    assert statuses.index("Queued: position 2 (waiting for the language model)") < statuses.index(
        "Queued: position 1 (waiting for the language model)"
    )
    assert ui.session.history[-1]["content"] == REPLY
    assert gate.admitted == 0
