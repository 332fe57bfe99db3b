"""The turn pipeline's orchestration, on fakes of the three engines (tests/fakes.py)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.fakes import REPLY, FakeLLM, FakeSTT, FakeTTS, fake_models
from voice_agent.core.cancel import CancelToken
from voice_agent.pipeline.agent import INTERRUPTED_SUFFIX, RECENT_TURNS, Agent, TurnEvent


@pytest.fixture
def hello(assets_dir):
    return str(assets_dir / "hello.wav")


def run(agent: Agent, session, **kwargs) -> list[TurnEvent]:
    return list(agent.run_turn(session, **kwargs))


def kinds(events: list[TurnEvent]) -> list[str]:
    return [e.kind for e in events]


def test_audio_turn_streams_events_in_order(hello):
    tts = FakeTTS()
    # The LLM's last piece waits for the first audio: only a streaming pipeline gets there.
    llm = FakeLLM(hold_last_until=tts.audio_seen, hold_timeout_s=3.0)
    agent = Agent(fake_models(llm=llm, tts=tts))
    session = agent.new_session()
    events = run(agent, session, audio=hello)

    k = kinds(events)
    assert k[0] == "transcript" and events[0].text == "What is the weather like?"
    assert k[-1] == "done" and k.count("done") == 1 and "error" not in k
    last_text = max(i for i, kind in enumerate(k) if kind == "text")
    first_audio = k.index("audio")
    assert first_audio < last_text, k
    assert "".join(e.text for e in events if e.kind == "text") == REPLY
    assert events[-1].text == REPLY and not events[-1].interrupted
    assert tts.spoken == ["Hello there.", "It is sunny today.", "Have a lovely afternoon."]

    t = events[-1].timings
    assert t is not None and t.input == "audio"
    marks = [t.transcript_ready, t.first_token, t.first_audio, t.last_audio, t.total]
    assert all(m is not None for m in marks), t
    assert marks == sorted(marks), t
    assert t.stt_s is not None and t.llm_s is not None and t.tts_s is not None
    assert t.stt_s >= 0 and t.llm_s > 0 and t.tts_s >= 0
    assert t.audio_s > 0 and t.reply_chars == len(REPLY)
    assert session.history == [
        {"role": "user", "content": "What is the weather like?"},
        {"role": "assistant", "content": REPLY},
    ]
    assert session.interrupted == [False, False]


def test_text_turn_and_history_reach_the_llm():
    llm = FakeLLM()
    agent = Agent(fake_models(llm=llm))
    session = agent.new_session(system_prompt="Be brief.", temperature=0.2, voice="calm")
    run(agent, session, text="  Hi there  ")
    run(agent, session, text="And again")
    assert llm.calls[1]["messages"] == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": REPLY},
        {"role": "user", "content": "And again"},
    ]
    assert llm.calls[1]["system_prompt"] == "Be brief."
    assert llm.calls[1]["settings"].temperature == 0.2
    assert agent.models.tts.voices_used == ["calm", "calm"]


def test_timings_count_from_the_end_of_speech():
    agent = Agent(fake_models())
    session = agent.new_session()
    ended = time.perf_counter() - 0.5
    events = run(agent, session, text="hello", speech_ended_at=ended)
    assert events[-1].timings.transcript_ready >= 0.5


def test_sessions_are_isolated():
    llm = FakeLLM()
    agent = Agent(fake_models(llm=llm))
    a = agent.new_session(system_prompt="You are A.", voice="a")
    b = agent.new_session(system_prompt="You are B.", voice="b")
    assert a.id != b.id
    run(agent, a, text="from A")
    run(agent, b, text="from B")
    assert [m["content"] for m in a.history] == ["from A", REPLY]
    assert [m["content"] for m in b.history] == ["from B", REPLY]
    assert llm.calls[1]["messages"] == [{"role": "user", "content": "from B"}]
    assert llm.calls[1]["system_prompt"] == "You are B."
    assert agent.models.tts.voices_used == ["a", "b"]
    b.clear()
    assert b.history == [] and len(a.history) == 2


def test_barge_in_stops_llm_and_tts_and_keeps_the_partial_reply():
    tts = FakeTTS()
    llm = FakeLLM(wait_for_cancel=True)  # blocks after two pieces until cancelled
    agent = Agent(fake_models(llm=llm, tts=tts))
    session = agent.new_session()
    events: list[TurnEvent] = []
    for event in agent.run_turn(session, text="tell me"):
        events.append(event)
        if event.kind == "text" and event.text == " there.":
            assert tts.audio_seen.wait(3)
            assert agent.cancel(session, "barge-in") is True
    k = kinds(events)
    assert k[-1] == "done" and events[-1].interrupted
    assert llm.cancelled and llm.emitted == ["Hello", " there."]
    assert tts.spoken == ["Hello there."]  # nothing after the cancel was spoken
    assert events[-1].timings.interrupted
    assert session.history[-1] == {
        "role": "assistant",
        "content": "Hello there." + INTERRUPTED_SUFFIX,
    }
    assert session.interrupted == [False, True]
    assert agent.cancel(session) is False

    # The next turn starts cleanly and sees the interrupted reply in its history.
    llm.wait_for_cancel = False
    after = run(agent, session, text="go on")
    assert kinds(after)[-1] == "done" and after[-1].text == REPLY and not after[-1].interrupted
    assert llm.calls[-1]["messages"][1]["content"].endswith(INTERRUPTED_SUFFIX)
    assert session.interrupted == [False, True, False, False]


def test_a_finished_turn_leaves_the_callers_token_alone():
    """The UI reads its own token after a turn to tell "stopped" from "done"."""
    token = CancelToken()
    agent = Agent(fake_models())
    events = run(agent, agent.new_session(), text="hi", cancel=token)
    assert events[-1].kind == "done" and not token.cancelled


def test_callers_token_cancels_the_turn():
    token = CancelToken()
    llm = FakeLLM(wait_for_cancel=True)
    agent = Agent(fake_models(llm=llm))
    session = agent.new_session()
    events = []
    for event in agent.run_turn(session, text="hi", cancel=token):
        events.append(event)
        if event.kind == "text":
            token.cancel("stop button")
    assert events[-1].kind == "done" and events[-1].interrupted and llm.cancelled


def test_closing_the_generator_cancels_the_turn():
    """A client that disconnects mid-reply must not leave the LLM running or the session busy."""
    llm = FakeLLM(wait_for_cancel=True)
    agent = Agent(fake_models(llm=llm))
    session = agent.new_session()
    gen = agent.run_turn(session, text="hi")
    assert next(gen).kind == "transcript"
    assert next(gen).kind == "text"
    gen.close()
    assert not session.busy
    deadline = time.monotonic() + 3
    while not llm.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert llm.cancelled
    assert session.interrupted == [False, True]


def test_cancel_when_nothing_runs_returns_false():
    agent = Agent(fake_models())
    assert agent.cancel(agent.new_session()) is False


def test_second_turn_on_a_busy_session_is_refused_not_interleaved():
    llm = FakeLLM(wait_for_cancel=True)
    agent = Agent(fake_models(llm=llm), busy_wait_s=0.2)
    session = agent.new_session()
    first: list[TurnEvent] = []
    worker = threading.Thread(target=lambda: first.extend(agent.run_turn(session, text="one")))
    worker.start()
    assert llm.started.wait(3)
    second = run(agent, session, text="two")
    assert kinds(second) == ["error"] and second[0].code == "busy"
    assert "still answering" in second[0].text

    # Another session is not refused: it queues for the LLM (one admission gate per
    # engine, shared with the REST API) and runs once the first turn lets go of it.
    other = agent.new_session()
    later: list[TurnEvent] = []
    queued = threading.Thread(target=lambda: later.extend(agent.run_turn(other, text="elsewhere")))
    queued.start()
    gate = agent.models.gates["llm"]
    deadline = time.monotonic() + 3
    while gate.admitted < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gate.admitted == 2  # the first turn's reply running, the other one waiting
    llm.wait_for_cancel = False

    agent.cancel(session)
    worker.join(5)
    queued.join(5)
    assert first[-1].kind == "done"
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    assert session.history[0]["content"] == "one"
    assert kinds(later)[-1] == "done" and later[-1].text == REPLY
    assert gate.admitted == 0


def test_new_turn_supersedes_an_abandoned_cancelled_turn():
    """A cancelled turn whose reader went away must not block the session forever."""
    llm = FakeLLM(wait_for_cancel=True)
    agent = Agent(fake_models(llm=llm), busy_wait_s=0.2)
    session = agent.new_session()
    old = agent.run_turn(session, text="first")
    while next(old).kind != "text":
        pass
    agent.cancel(session, "barge-in")  # ... and nobody reads `old` any more
    llm.wait_for_cancel = False
    events = run(agent, session, text="second")
    assert kinds(events)[-1] == "done"
    assert [m["content"] for m in session.history] == [
        "first",
        "Hello" + INTERRUPTED_SUFFIX,
        "second",
        REPLY,
    ]
    old.close()  # the old turn must not write its part twice
    assert len(session.history) == 4


@pytest.mark.parametrize(
    "kwargs, code, words",
    [
        ({"text": ""}, "invalid_input", "empty"),
        ({"text": "   \n "}, "invalid_input", "empty"),
        ({}, "invalid_input", "either audio or text"),
        ({"text": "hi", "audio": np.zeros(16000)}, "invalid_input", "either audio or text"),
        ({"audio": b"this is not audio at all" * 20}, None, ""),
        ({"audio": np.zeros(0, dtype=np.float32)}, None, "empty"),
        ({"audio": np.array([0.1, np.nan] * 8000, dtype=np.float32)}, None, "NaN"),
        ({"audio": (16000, np.ones(100, dtype=np.float32) * 0.1)}, None, "0.1 s"),
    ],
)
def test_bad_input_gets_an_error_event_and_leaves_history_alone(kwargs, code, words):
    agent = Agent(fake_models())
    session = agent.new_session()
    events = run(agent, session, **kwargs)
    assert kinds(events) == ["error"]
    assert events[0].text and events[0].timings is not None
    if code:
        assert events[0].code == code
    assert words in events[0].text
    assert events[0].error is not None and getattr(events[0].error, "status_code", 500) < 500
    assert session.history == []


def test_silent_recording_gives_a_hint_and_no_turn(assets_dir):
    stt = FakeSTT()
    agent = Agent(fake_models(stt=stt))
    session = agent.new_session()
    events = run(agent, session, audio=str(assets_dir / "silence.wav"))
    assert kinds(events) == ["notice", "done"]
    assert events[0].code == "no_speech" and "didn't hear any speech" in events[0].text
    assert stt.calls == 0 and session.history == []


def test_recording_over_the_limit_is_rejected_with_the_limit(monkeypatch, hello):
    monkeypatch.setenv("MAX_AUDIO_SECONDS", "2")
    agent = Agent(fake_models())
    events = run(agent, agent.new_session(), audio=hello)
    assert kinds(events) == ["error"]
    assert events[0].error.status_code == 413 and "limit is 2 s" in events[0].text


def test_upload_over_the_size_limit_is_rejected(monkeypatch):
    monkeypatch.setenv("MAX_UPLOAD_MB", "0.001")
    agent = Agent(fake_models())
    events = run(agent, agent.new_session(), audio=b"RIFF" + b"\0" * 5000)
    assert events[0].code == "input_too_large" and "0.001 MB" in events[0].text


def test_text_over_the_limit_is_rejected(monkeypatch):
    monkeypatch.setenv("MAX_TEXT_CHARS", "10")
    agent = Agent(fake_models())
    events = run(agent, agent.new_session(), text="x" * 11)
    assert events[0].code == "input_too_large" and "limit is 10" in events[0].text


def test_without_tts_the_reply_is_text_only_with_a_notice():
    agent = Agent(fake_models(missing=("tts",)))
    events = run(agent, agent.new_session(), text="hi")
    k = kinds(events)
    assert "audio" not in k and k[-1] == "done" and events[-1].text == REPLY
    notice = next(e for e in events if e.kind == "notice")
    assert notice.code == "tts_unavailable" and "text only" in notice.text
    assert "weights are missing" in notice.text
    assert events[-1].timings.first_audio is None


def test_without_stt_audio_is_refused_but_text_works(hello):
    agent = Agent(fake_models(missing=("stt",)))
    session = agent.new_session()
    events = run(agent, session, audio=hello)
    assert kinds(events) == ["error"] and events[0].code == "stt_unavailable"
    assert "Type your message" in events[0].text and "weights are missing" in events[0].text
    assert kinds(run(agent, session, text="typed"))[-1] == "done"


def test_without_llm_the_turn_fails_with_the_reason():
    agent = Agent(fake_models(missing=("llm",)))
    session = agent.new_session()
    events = run(agent, session, text="hi")
    assert kinds(events) == ["transcript", "error"]
    assert events[-1].code == "llm_unavailable" and "weights are missing" in events[-1].text
    assert session.history == []


def test_tts_failure_mid_reply_keeps_the_text_and_says_why():
    tts = FakeTTS(fail_after=1)
    agent = Agent(fake_models(tts=tts))
    session = agent.new_session()
    events = run(agent, session, text="hi")
    k = kinds(events)
    assert k.count("audio") == 1 and k[-1] == "done"
    notice = next(e for e in events if e.kind == "notice")
    assert notice.code == "tts_failed" and "fake TTS crashed" in notice.text
    assert k.index("audio") < k.index("notice")
    assert events[-1].text == REPLY and not events[-1].interrupted
    assert session.history[-1]["content"] == REPLY


def test_llm_failure_mid_reply_is_an_error_and_history_is_unchanged():
    agent = Agent(fake_models(llm=FakeLLM(fail_after=2)))
    session = agent.new_session()
    events = run(agent, session, text="hi")
    assert kinds(events)[-1] == "error" and events[-1].code == "llm_failed"
    assert "fake LLM crashed" in events[-1].text
    assert session.history == []
    assert not session.busy


def test_recent_timings_keep_the_last_turns_with_median_and_p90():
    agent = Agent(fake_models())
    session = agent.new_session()
    for _ in range(RECENT_TURNS + 2):
        run(agent, session, text="hi")
    recent = agent.recent_timings()
    assert recent["count"] == RECENT_TURNS and len(recent["turns"]) == RECENT_TURNS
    assert recent["turns"][-1]["turn"] == RECENT_TURNS + 2
    for stage in ("transcript_ready", "first_token", "first_audio", "last_audio", "total", "llm_s"):
        entry = recent["stages"][stage]
        assert entry["n"] == RECENT_TURNS
        assert 0 <= entry["median"] <= entry["p90"]
    assert recent["stages"]["stt_s"]["n"] == 0  # typed turns have no STT stage


def test_new_session_rejects_unknown_settings():
    agent = Agent(fake_models())
    with pytest.raises(TypeError, match="colour"):
        agent.new_session(colour="blue")
    session = agent.new_session(max_new_tokens=7, history=[{"role": "user", "content": "x"}])
    assert session.generation.max_new_tokens == 7 and session.interrupted == [False]


def test_self_test_reports_each_stage():
    agent = Agent(fake_models())
    results = agent.self_test()
    assert [r.stage for r in results] == ["stt", "llm", "tts", "pipeline"]
    assert all(r.ok for r in results), results
    assert "audio chunks" in results[-1].summary


def test_self_test_with_a_missing_model_reports_it_and_runs_the_rest():
    agent = Agent(fake_models(missing=("stt",)))
    results = {r.stage: r for r in agent.self_test()}
    assert not results["stt"].ok and "weights are missing" in results["stt"].error
    assert results["llm"].ok and results["tts"].ok
    assert not results["pipeline"].ok


def test_speak_stage_asks_sentence_engines_for_an_early_first_phrase():
    """The agent's phrasing reaches the engine; an engine that phrases text itself
    (`capabilities.streaming_text_in`) is left to do so."""
    from voice_agent.pipeline.speak import HURRY_S, PIECE_GROWTH, phrasing_for
    from voice_agent.tts.base import TTSCapabilities
    from voice_agent.tts.text.chunking import Phrasing

    tts = FakeTTS()
    agent = Agent(fake_models(tts=tts), first_phrase_words=5, max_unspoken_words=20)
    run(agent, agent.new_session(), text="hi")
    assert tts.phrasings == [
        Phrasing(
            "sentence", max_words=20, first_phrase_words=5, growth=PIECE_GROWTH, hurry_s=HURRY_S
        )
    ]
    streaming = TTSCapabilities(sample_rate=24_000, streaming_text_in=True)
    assert phrasing_for(streaming, first_phrase_words=5, max_words=20) is None


def test_llm_failure_stops_speech_without_cancelling_the_callers_token():
    token = CancelToken()
    tts = FakeTTS()
    agent = Agent(fake_models(llm=FakeLLM(fail_after=4), tts=tts))
    events = run(agent, agent.new_session(), text="hi", cancel=token)
    assert events[-1].kind == "error" and not token.cancelled
    # "It is" was written before the failure but must not be spoken after it.
    assert tts.spoken in ([], ["Hello there."])
