"""The `pipeline` bench's scripted LLM on the real engine: its tool rows really call a tool.

`bench --only pipeline` builds a Qwen2.5-0.5B-shaped model (too slow for a test);
`build_llm(tiny=True)` builds the same checkpoint (tokenizer, context, silenced
tokens) with the test model's two small layers, so the `ScriptedLLM` runs here over
the real `OpenSourceLLM`, its chat template and its tool-call parser.
"""

from __future__ import annotations

import threading

import pytest

from tests.fakes import FakeTTS, fake_models
from voice_agent.bench.pipeline import (
    TOOL_CALL,
    ScriptedLLM,
    build_llm,
    call_pieces,
    reply_pieces,
)
from voice_agent.core.config import load_settings
from voice_agent.llm.base import GenerationSettings
from voice_agent.llm.engine import OpenSourceLLM
from voice_agent.pipeline.agent import Agent, TurnEvent
from voice_agent.tools import Toolbox
from voice_agent.tools.toolbox import builtin_tools

PIECES = reply_pieces()
CALL = call_pieces(TOOL_CALL)
# As the bench's call rows: room for the call's JSON and the whole answer.
GENERATION = GenerationSettings(temperature=0.0, max_new_tokens=max(len(PIECES), len(CALL)))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> OpenSourceLLM:
    import torch

    torch.set_num_threads(1)
    path = build_llm(tmp_path_factory.mktemp("bench-llm") / "llm", tiny=True)
    return OpenSourceLLM(str(path), load_settings({"HF_HUB_OFFLINE": "1", "LLM_DEVICE": "cpu"}))


def turn(engine: OpenSourceLLM, *, tools: bool, call: list[str] | None) -> list[TurnEvent]:
    agent = Agent(
        fake_models(llm=ScriptedLLM(engine, PIECES, call), tts=FakeTTS()),
        tools=Toolbox(builtin_tools()),
    )
    session = agent.new_session(generation=GENERATION, tools=tools)
    return list(agent.run_turn(session, text="What time is it?"))


def test_the_scripted_call_is_parsed_and_run_then_the_answer_is_said(engine) -> None:
    """Bug: `ScriptedLLM` dropped the tools and never wrote its `call`, so the bench's
    "one tool call" and "slow tool" rows ended with no call (tool_calls=0) and failed."""
    events = turn(engine, tools=True, call=CALL)
    done = events[-1]
    assert done.kind == "done", [e.text for e in events if e.kind == "error"]
    assert done.timings is not None and done.timings.tool_calls == 1, done.timings
    assert done.timings.answer_token is not None
    ran = [e.tool for e in events if e.kind == "tool" and e.tool]
    assert [(t.name, t.status) for t in ran] == [
        ("current_time", "running"),
        ("current_time", "done"),
    ]
    # Only the answer is said: never the call's text.
    said = "".join(e.text for e in events if e.kind == "text")
    assert said == done.text == "".join(PIECES)


def test_tools_offered_are_in_the_prompt_and_the_model_answers_at_once(engine) -> None:
    """Guards the "tools offered" row: the tools are really prefilled (the engine's
    context holds them), and with no call scripted the model just answers."""
    events = turn(engine, tools=False, call=None)
    assert events[-1].kind == "done" and engine.last_prefill is not None
    plain = engine.last_prefill.prompt_tokens
    events = turn(engine, tools=True, call=None)
    done = events[-1]
    assert done.kind == "done" and done.timings is not None and done.timings.tool_calls == 0
    assert done.text == "".join(PIECES)
    assert engine.last_prefill.prompt_tokens > plain + 1000  # the built-in tools' specs


def test_priming_prefills_the_shared_start_so_a_first_turn_computes_only_its_own_words(
    engine: OpenSourceLLM,
) -> None:
    """`Agent.prime` (run by app.py once the models load): the system prompt and the tool list
    (over a thousand tokens here) are prefilled before anyone talks, so the first turn of the
    first conversation reuses them from the KV cache instead of computing them."""
    agent = Agent(fake_models(llm=engine, tts=FakeTTS()), tools=Toolbox(builtin_tools()))
    engine._prompt_cache = None
    assert agent.prime(wait_s=5)
    primed = engine.last_prefill
    assert primed is not None and primed.prompt_tokens > 1000 and primed.reused_tokens == 0
    session = agent.new_session(generation=GenerationSettings(temperature=0.0, max_new_tokens=2))
    events = list(agent.run_turn(session, text="What is the weather like?"))
    assert events[-1].kind == "done"
    turn = engine.last_prefill
    assert turn is not None and turn.reused_tokens > 1000
    assert turn.computed_tokens < 40, turn
    # The voice bench loads the engine inside its `ScriptedLLM`: priming must reach it there
    # too (the wrapper once hid `reuse_prompt_cache`, and `prime` quietly did nothing).
    scripted = Agent(
        fake_models(llm=ScriptedLLM(engine, PIECES), tts=FakeTTS()), tools=Toolbox(builtin_tools())
    )
    engine._prompt_cache = None
    assert scripted.prime(wait_s=5)
    assert engine.last_prefill is not None and engine.last_prefill.prompt_tokens > 1000


def test_reading_ahead_prefills_the_words_before_a_pause_so_the_turn_computes_the_rest(
    engine: OpenSourceLLM,
) -> None:
    """`Agent.read_ahead`: the user paused and went on; the words before the pause are
    prefilled while they talk, and the turn's prompt reuses them from the KV cache."""
    agent = Agent(fake_models(llm=engine, tts=FakeTTS()), tools=Toolbox(builtin_tools()))
    settings = GenerationSettings(temperature=0.0, max_new_tokens=2)
    assert agent.prime(wait_s=5)
    question = "What will the weather be like this afternoon?"
    list(agent.run_turn(agent.new_session(generation=settings), text=question))
    plain = engine.last_prefill  # after the shared start: all its words, and the template
    assert plain is not None

    agent.prime(wait_s=5)
    session = agent.new_session(generation=settings)
    assert agent.read_ahead(session, "What will the weather be")
    events = list(agent.run_turn(session, text=question))
    assert events[-1].kind == "done"
    turn = engine.last_prefill
    assert turn is not None and turn.prompt_tokens == plain.prompt_tokens
    assert turn.computed_tokens < plain.computed_tokens - 3, (turn, plain)

    # Never a wait for anyone: with the LLM taken, it does nothing (not even once it is
    # given back a moment later).
    held = agent.models.gates["llm"].enter(timeout_s=1)
    later = threading.Timer(0.3, held.release)
    later.start()
    try:
        before = engine.last_prefill
        assert not agent.read_ahead(session, "Is it going")
        later.join()
        assert engine.last_prefill is before
    finally:
        later.cancel()
        held.release()
    assert not agent.read_ahead(session, "  ")  # no words: nothing to read


def test_the_voice_bench_hears_a_spoken_questions_words_each_turn_a_new_one(
    engine, assets_dir
) -> None:
    """Bug: the random recogniser's 16 tokens came out as about 200 characters, which the
    LLM's tokenizer made about 150 tokens; their prefill (1.4 s on 2 cores) was most of a
    record/stop turn, and whether a turn paid it depended on what the model happened to
    write. `ScriptedSTT` keeps the model's compute and says a question's words instead,
    as many as the audio holds: a turn heard in two stretches says what it says whole."""
    import numpy as np

    from tests.fakes import FakeSTT
    from voice_agent.bench.pipeline import QUESTIONS, WORDS_PER_S, ScriptedSTT

    def speech(seconds: float) -> tuple[int, np.ndarray]:
        return 16_000, np.full(int(16_000 * seconds), 0.1, np.float32)

    model = FakeSTT("zq " * 70)  # what a random model writes
    stt = ScriptedSTT(model)
    words = " ".join(QUESTIONS).split()
    said = [stt.transcribe(speech(3.4)).text for _ in range(6)]
    assert model.calls == 6  # the model ran on every clip
    assert WORDS_PER_S * 3.4 == 8.5 and [len(t.split()) for t in said] == [9, 8] * 3
    assert " ".join(said).split() == (words * 2)[:51]  # read on, round and round
    assert len(set(said)) == 6 and said[0] == "What will the weather be like this afternoon? Is"
    whole = ScriptedSTT(FakeSTT("zq")).transcribe(speech(2.6)).text
    split = ScriptedSTT(FakeSTT("zq"))
    parts = [split.transcribe(speech(1.3)).text, split.transcribe(speech(1.3)).text]
    assert " ".join(parts) == whole == " ".join(words[:7])  # 3 + 4 words, or 7 at once
    assert stt.model_id == "fake-stt"  # the rest is the model's
    assert stt.transcribe((16_000, np.zeros(16_000, np.float32))).text == ""  # nothing heard

    agent = Agent(
        fake_models(llm=ScriptedLLM(engine, PIECES), stt=stt, tts=FakeTTS()),
        tools=Toolbox(builtin_tools()),
    )
    assert agent.prime(wait_s=5)
    session = agent.new_session(generation=GENERATION)
    events = list(agent.run_turn(session, audio=str(assets_dir / "hello.wav")))
    assert events[-1].kind == "done"
    assert engine.last_prefill is not None
    # Only the question and the template around it: a spoken question's share of a turn.
    assert engine.last_prefill.computed_tokens < 50, engine.last_prefill
