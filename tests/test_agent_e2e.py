"""The turn pipeline end to end on the tiny checkpoints: real Whisper, Qwen2 and VITS engines."""

from __future__ import annotations

import io
import json
import os
import sys
import time
import wave

import pytest

from tests.token_probe import count_generated_tokens
from voice_agent.core.config import get_settings, load_settings
from voice_agent.pipeline.agent import INTERRUPTED_SUFFIX, Agent
from voice_agent.pipeline.models import LoadedModels, reset_models


def tiny_settings(tiny_models, **extra: str):
    env = {
        **os.environ,
        "MODEL_SERVER_MODEL_NAME": str(tiny_models / "llm"),
        "STT_MODEL_NAME": str(tiny_models / "stt"),
        "TTS_BACKEND": "vits",
        "TTS_MODEL_NAME": str(tiny_models / "vits"),
        "LLM_DEVICE": "cpu",
        "WHISPER_DEVICE": "cpu",
        "TTS_DEVICE": "cpu",
        **extra,
    }
    return load_settings(env)


@pytest.fixture(scope="module")
def real_models(tiny_models):
    import torch

    torch.set_num_threads(1)
    models = LoadedModels(tiny_settings(tiny_models)).load_all()
    assert models.ready(), models.errors
    return models


@pytest.fixture
def hello(assets_dir):
    return str(assets_dir / "hello.wav")


def test_spoken_turn_end_to_end(real_models, hello):
    # The tiny random VITS speaks about half a second per character, slower than the tiny
    # LLM writes 200 tokens; a one-word (8-character) first phrase lets the first audio
    # come while the LLM is still writing, as real models do with a whole phrase.
    agent = Agent(real_models, first_phrase_words=1)
    session = agent.new_session(max_new_tokens=200, temperature=0.0)
    events = list(agent.run_turn(session, audio=hello))
    k = [e.kind for e in events]
    assert k[0] == "transcript" and events[0].text
    assert k[-1] == "done" and "error" not in k, [e.text for e in events if e.kind == "error"]
    last_text = max(i for i, kind in enumerate(k) if kind == "text")
    assert "audio" in k and k.index("audio") < last_text, k
    for event in events:
        if event.kind == "audio":
            assert event.audio.sample_rate == real_models.tts.sample_rate
            assert event.audio.samples.dtype.name == "float32" and event.audio.samples.size
    t = events[-1].timings
    marks = [t.transcript_ready, t.first_token, t.first_audio, t.last_audio, t.total]
    assert None not in marks and marks == sorted(marks), t
    assert t.stt_s > 0 and t.llm_s > 0 and t.tts_s > 0
    reply = "".join(e.text for e in events if e.kind == "text")
    assert events[-1].text == reply and session.history[-1]["content"] == reply
    assert session.history[0] == {"role": "user", "content": events[0].text}
    assert agent.recent_timings()["count"] == 1


def test_barge_in_cancels_llm_and_tts(real_models, monkeypatch):
    """Guards barge-in leaving the LLM generating (the engine's cancel check, its
    StoppingCriteria, never firing): the turn stops relaying at once either way, so the
    tokens the engine really generated are counted against the same turn uncancelled."""
    generated = count_generated_tokens(monkeypatch)
    agent = Agent(real_models, first_phrase_words=1)
    # The same turn read to the end: what the engine writes when nobody stops it.
    whole = list(
        agent.run_turn(
            agent.new_session(max_new_tokens=200, temperature=0.0), text="Tell me a long story."
        )
    )
    assert whole[-1].kind == "done" and not whole[-1].interrupted
    uncancelled = generated[0]
    assert uncancelled >= 100, generated  # a reply this short would prove nothing below
    session = agent.new_session(max_new_tokens=200, temperature=0.0)
    events = []
    cancelled_at = None
    for event in agent.run_turn(session, text="Tell me a long story."):
        events.append(event)
        if event.kind == "audio" and cancelled_at is None:
            cancelled_at = len(events)
            t0 = time.perf_counter()
            assert agent.cancel(session, "barge-in")
    stopped_s = time.perf_counter() - t0
    assert events[-1].kind == "done" and events[-1].interrupted
    assert [e.kind for e in events[cancelled_at:]] == ["done"]  # nothing after the cancel
    assert stopped_s < 2.0
    assert events[-1].timings.reply_chars < 200  # the LLM stopped early (every token is >= 1 char)
    assert session.history[-1]["content"].endswith(INTERRUPTED_SUFFIX)
    assert session.interrupted[-1] is True
    # The next turn starts cleanly on the same session.
    session.generation = session.generation.__class__(max_new_tokens=8, temperature=0.0)
    after = list(agent.run_turn(session, text="Go on."))
    assert after[-1].kind == "done" and not after[-1].interrupted
    assert len(session.history) == 4
    # That turn waited for the engine, so the cancelled generation has ended: it stopped
    # soon after the barge-in instead of writing on to max_new_tokens for nobody.
    assert len(generated) == 3, generated
    assert generated[1] < uncancelled / 2, generated


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda assets: b"definitely not an audio file" * 10, "audio"),
        (lambda assets: (assets / "hello.wav").read_bytes()[:60], ""),
        (lambda assets: (16_000, __import__("numpy").zeros(0, "float32")), "empty"),
    ],
    ids=["garbage", "truncated", "empty"],
)
def test_bad_audio_gets_an_error_event(real_models, assets_dir, make, words):
    agent = Agent(real_models)
    session = agent.new_session()
    events = list(agent.run_turn(session, audio=make(assets_dir)))
    assert [e.kind for e in events] == ["error"]
    assert words in events[0].text.lower() and events[0].error.status_code in (400, 413, 415)
    assert session.history == []


def test_silence_gives_a_hint(real_models, assets_dir):
    agent = Agent(real_models)
    events = list(agent.run_turn(agent.new_session(), audio=str(assets_dir / "silence.wav")))
    assert [e.kind for e in events] == ["notice", "done"]
    assert "didn't hear any speech" in events[0].text


def test_over_long_recording_is_rejected(tiny_models, real_models, hello):
    settings = tiny_settings(tiny_models, MAX_AUDIO_SECONDS="2")
    limited = LoadedModels(settings)
    for component in ("llm", "stt", "tts"):  # share the loaded engines, new limits
        setattr(limited, component, getattr(real_models, component))
        limited.status[component] = "ready"
    events = list(Agent(limited).run_turn(Agent(limited).new_session(), audio=hello))
    assert events[0].kind == "error" and "limit is 2 s" in events[0].text
    assert events[0].error.status_code == 413


def test_without_tts_the_real_pipeline_replies_in_text(tiny_models, tmp_path):
    settings = tiny_settings(tiny_models, TTS_MODEL_NAME=str(tmp_path / "missing-vits"))
    models = LoadedModels(settings, warmup=False)
    models.load_all()
    assert models.status["tts"] == "failed" and models.status["llm"] == "ready"
    agent = Agent(models)
    events = list(agent.run_turn(agent.new_session(max_new_tokens=8), text="hello"))
    k = [e.kind for e in events]
    assert k[0] == "transcript" and k[1] == "notice" and k[-1] == "done" and "audio" not in k
    assert "speech synthesis" in events[1].text


def test_self_test_on_real_models(real_models):
    results = Agent(real_models).self_test()
    assert [r.stage for r in results] == ["stt", "llm", "tts", "pipeline"]
    assert all(r.ok for r in results), [(r.stage, r.error) for r in results]
    assert all(r.seconds > 0 and r.summary for r in results)


def test_selftest_command_reports_each_stage(tiny_env, tmp_path, monkeypatch, capsys):
    from voice_agent.cli import selftest

    reset_models()
    try:
        assert selftest.main([]) == 0
        out = capsys.readouterr().out
        assert [line.split()[:2] for line in out.splitlines()] == [
            ["PASS", "stt"],
            ["PASS", "llm"],
            ["PASS", "tts"],
            ["PASS", "pipeline"],
        ]
        # A broken TTS fails its stage and the exit code, and hides nothing else.
        reset_models()
        monkeypatch.setenv("TTS_MODEL_NAME", str(tmp_path / "missing-vits"))
        get_settings.cache_clear()
        assert selftest.main(["--json"]) == 1
        doc = json.loads(capsys.readouterr().out)
        stages = {s["stage"]: s for s in doc["stages"]}
        assert not doc["ok"] and doc["models"]["tts"]["status"] == "failed"
        assert stages["stt"]["ok"] and stages["llm"]["ok"] and stages["pipeline"]["ok"]
        assert not stages["tts"]["ok"] and "missing-vits" in stages["tts"]["error"]
    finally:
        reset_models()


def test_chat_command_holds_a_spoken_and_typed_conversation(
    tiny_env, tmp_path, monkeypatch, capsys, hello
):
    from voice_agent.cli import chat

    reset_models()
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi there\n\n/quit\nnever sent\n"))
    try:
        code = chat.main(["--audio", hello, "--speak-to", str(tmp_path), "--max-tokens", "12"])
    finally:
        reset_models()
    out = capsys.readouterr().out
    assert code == 0, out
    assert "you (heard): " in out and out.count("assistant: ") == 2
    assert "never sent" not in out
    wavs = sorted(tmp_path.glob("reply-*.wav"))
    assert [p.name for p in wavs] == ["reply-001.wav", "reply-002.wav"]
    with wave.open(str(wavs[0])) as w:
        assert w.getnframes() > 0 and w.getnchannels() == 1


def test_chat_command_refuses_a_missing_file(tmp_path, capsys):
    from voice_agent.cli import chat

    assert chat.main(["--audio", str(tmp_path / "nope.wav")]) == 2
    assert "no such audio file" in capsys.readouterr().err
