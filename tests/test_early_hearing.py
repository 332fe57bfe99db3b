"""Hands-free words heard early: transcribed at the user's short pause, used by the turn.

`Agent.hear_early` starts an `EarlyHearing` on the utterance so far; a turn given
it (`run_turn(early=...)`) takes its words when it heard the turn's very audio,
and otherwise transcribes as usual. The STT is `MeasuringSTT`, whose transcript
says how many samples it heard, so each test can tell which audio a transcript
came from.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import soundfile as sf

from tests.fakes import MeasuringSTT, fake_models
from voice_agent.core.cancel import CancelToken
from voice_agent.pipeline.agent import Agent, TurnEvent
from voice_agent.pipeline.hear import EarlyHearing

RATE = 16_000


@pytest.fixture
def speech(assets_dir) -> np.ndarray:
    samples, rate = sf.read(assets_dir / "hello.wav", dtype="float32")
    assert rate == RATE
    return samples


def settle(early: EarlyHearing | None, timeout: float = 10.0) -> EarlyHearing:
    assert early is not None
    deadline = time.monotonic() + timeout
    while not early.done:
        assert time.monotonic() < deadline, "the early transcription never finished"
        time.sleep(0.01)
    return early


def run(agent: Agent, **kwargs) -> tuple[list[TurnEvent], object]:
    session = agent.new_session()
    return list(agent.run_turn(session, **kwargs)), session


def said(events: list[TurnEvent]) -> str | None:
    return next((e.text for e in events if e.kind == "transcript"), None)


def test_the_early_words_are_the_turns_when_nothing_more_was_said(speech):
    stt = MeasuringSTT()
    agent = Agent(fake_models(stt=stt))
    early = settle(agent.hear_early(speech))
    assert stt.calls == 1 and early.stt_s is not None

    events, session = run(agent, audio=(RATE, speech), early=early)
    assert stt.calls == 1, "the turn transcribed the same audio again"
    normal, normal_session = run(agent, audio=(RATE, speech))
    assert stt.calls == 2

    assert said(events) == said(normal) == f"heard {len(speech)} samples"
    assert [e.kind for e in events] == [e.kind for e in normal]
    assert session.history == normal_session.history
    timings, plain = events[-1].timings, normal[-1].timings
    assert timings.heard_early and not plain.heard_early
    assert timings.stt_s == early.stt_s and timings.transcript_ready is not None


def test_a_turn_waits_for_the_early_words_and_counts_from_the_end_of_speech(speech):
    hold = threading.Event()
    stt = MeasuringSTT(hold=hold)
    agent = Agent(fake_models(stt=stt))
    ended = time.perf_counter()
    early = agent.hear_early(speech)
    assert early is not None and stt.started.wait(5)
    out: list[list[TurnEvent]] = []
    turn = threading.Thread(
        target=lambda: out.append(
            run(agent, audio=(RATE, speech), early=early, speech_ended_at=ended)[0]
        )
    )
    turn.start()
    time.sleep(0.3)
    assert turn.is_alive(), "the turn did not wait for the transcription in progress"
    hold.set()
    turn.join(10)
    events = out[0]
    assert stt.calls == 1 and said(events) == f"heard {len(speech)} samples"
    assert events[-1].timings.heard_early
    assert events[-1].timings.transcript_ready >= 0.3


def test_when_the_user_went_on_the_turn_hears_all_of_it(speech):
    stt = MeasuringSTT()
    agent = Agent(fake_models(stt=stt))
    part = speech[: len(speech) // 2]
    early = settle(agent.hear_early(part))
    events, _ = run(agent, audio=(RATE, speech), early=early)
    assert said(events) == f"heard {len(speech)} samples"
    assert stt.heard == [len(part), len(speech)]
    assert not events[-1].timings.heard_early
    assert early.discarded


def test_a_failed_early_transcription_leaves_the_turn_to_transcribe(speech):
    stt = MeasuringSTT(fail=1)
    agent = Agent(fake_models(stt=stt))
    early = settle(agent.hear_early(speech))
    assert "Transcription failed" in early.failure
    events, _ = run(agent, audio=(RATE, speech), early=early)
    assert said(events) == f"heard {len(speech)} samples"
    assert stt.calls == 2 and not events[-1].timings.heard_early
    assert [e.kind for e in events if e.kind == "error"] == []


def test_early_hearing_never_waits_in_line_for_the_engine(speech):
    """A guess must not hold up another conversation: with the STT engine taken (another
    tab's turn, a REST request), it gives up at once and the turn transcribes as usual."""
    stt = MeasuringSTT()
    models = fake_models(stt=stt)
    agent = Agent(models)
    gate = models.gates["stt"]
    held = gate.enter(timeout_s=1)
    assert held is not None
    try:
        early = settle(agent.hear_early(speech), timeout=2)
        assert "busy" in early.failure and stt.calls == 0
        assert gate.admitted == 1  # only the holder: the guess left no place taken
    finally:
        held.release()
    events, _ = run(agent, audio=(RATE, speech), early=early)
    assert said(events) == f"heard {len(speech)} samples" and stt.calls == 1
    assert gate.admitted == 0


def test_a_cancelled_turn_leaves_no_early_words_behind(speech):
    """Barge-in or Stop while the turn waits for its early words: the turn ends at once,
    the guess is discarded (its engine work finishes and frees the gate), and nothing
    uses it afterwards, not even a turn with the same audio."""
    hold = threading.Event()
    stt = MeasuringSTT(hold=hold)
    models = fake_models(stt=stt)
    agent = Agent(models)
    early = agent.hear_early(speech)
    assert early is not None and stt.started.wait(5)
    token = CancelToken()
    out: list[list[TurnEvent]] = []
    turn = threading.Thread(
        target=lambda: out.append(run(agent, audio=(RATE, speech), early=early, cancel=token)[0])
    )
    turn.start()
    time.sleep(0.1)
    token.cancel("barge-in")
    turn.join(2)
    assert not turn.is_alive(), "the cancelled turn kept waiting for the transcription"
    assert [e.kind for e in out[0]] == ["done"] and out[0][-1].interrupted
    assert early.discarded
    hold.set()
    settle(early)
    assert models.gates["stt"].admitted == 0
    events, _ = run(agent, audio=(RATE, speech), early=early)
    assert stt.calls == 2 and not events[-1].timings.heard_early
    assert said(events) == f"heard {len(speech)} samples"


def test_a_new_pause_replaces_the_guess_after_it_has_finished(speech):
    """The engine's work cannot be stopped: the next guess waits for the one it replaces
    (instead of giving up on a busy engine), and only the newest is used."""
    hold = threading.Event()
    stt = MeasuringSTT(hold=hold)
    agent = Agent(fake_models(stt=stt))
    part = speech[: len(speech) // 2]
    first = agent.hear_early(part)
    assert first is not None and stt.started.wait(5)
    second = agent.hear_early(speech, after=first)
    assert first.discarded and second is not None
    time.sleep(0.2)
    assert stt.begun == 1, "the second guess ran beside the first"
    hold.set()
    settle(second)
    rest = len(speech) - len(part)
    assert stt.heard == [len(part), rest]  # the second heard what the first had not
    events, _ = run(agent, audio=(RATE, speech), early=second)
    assert stt.calls == 2 and events[-1].timings.heard_early
    assert said(events) == f"heard {len(part)} samples heard {rest} samples"


def test_after_a_pause_the_next_guess_hears_only_what_was_said_since(speech):
    """The user paused (a guess), went on (`resume` discards it) and paused again: the
    words of the first stretch are kept, and only the audio after it is transcribed."""
    stt = MeasuringSTT()
    agent = Agent(fake_models(stt=stt))
    cuts = [int(1.1 * RATE), int(2.2 * RATE), len(speech)]  # 3.4 s: three stretches
    guesses: list[EarlyHearing] = []
    for cut in cuts:
        if guesses:
            guesses[-1].discard()  # the user went on
        guesses.append(
            settle(agent.hear_early(speech[:cut], after=guesses[-1] if guesses else None))
        )
    stretches = [cuts[0], cuts[1] - cuts[0], cuts[2] - cuts[1]]
    assert stt.heard == stretches
    assert guesses[-1].reused_s == pytest.approx(2.2, abs=1e-3)
    events, _ = run(agent, audio=(RATE, speech), early=guesses[-1])
    assert said(events) == " ".join(f"heard {n} samples" for n in stretches)
    assert stt.calls == 3 and events[-1].timings.heard_early


@pytest.mark.parametrize(
    "first_s, whole_s",
    [(0.6, 3.0), (2.6, 3.2)],  # a first stretch, or what follows it, under SEGMENT_MIN_S
    ids=["short-first", "short-rest"],
)
def test_a_stretch_too_short_to_hear_alone_is_heard_with_its_neighbours(speech, first_s, whole_s):
    stt = MeasuringSTT()
    agent = Agent(fake_models(stt=stt))
    first = settle(agent.hear_early(speech[: int(first_s * RATE)]))
    whole = speech[: int(whole_s * RATE)]
    second = settle(agent.hear_early(whole, after=first))
    assert stt.heard[-1] == len(whole) and second.reused_s == 0.0


def test_a_rest_that_comes_to_no_words_alone_is_heard_with_what_came_before(speech):
    """A short word after the pause ("... off") fails the speech gate on its own: the
    guess hears the whole utterance instead of dropping the word."""
    from voice_agent.audio.gate import is_speech

    stt = MeasuringSTT()
    agent = Agent(fake_models(stt=stt))
    start = speech[: int(1.5 * RATE)]
    loud = int(np.argmax(np.abs(speech)))
    word = speech[loud : loud + int(0.15 * RATE)]  # 0.15 s of voice
    rest = np.concatenate([np.zeros(int(0.7 * RATE), np.float32), word, np.zeros(3200, np.float32)])
    whole = np.concatenate([start, rest])
    assert not is_speech(rest, RATE) and is_speech(whole, RATE)
    first = settle(agent.hear_early(start))
    second = settle(agent.hear_early(whole, after=first))
    assert stt.heard == [len(start), len(whole)]
    assert second.words == f"heard {len(whole)} samples" and second.reused_s == 0.0


def test_words_are_reused_only_from_the_same_audio_that_came_to_words(speech):
    """Another recording's start, a failed guess and a guess that heard no speech leave
    the next guess to hear its whole audio."""
    cut = int(1.5 * RATE)
    stt = MeasuringSTT()
    agent = Agent(fake_models(stt=stt))
    other = settle(agent.hear_early(speech[:cut] * 0.5))  # not how this audio starts
    settle(agent.hear_early(speech, after=other))
    assert stt.heard[-1] == len(speech)

    stt = MeasuringSTT(fail=1)
    agent = Agent(fake_models(stt=stt))
    failed = settle(agent.hear_early(speech[:cut]))
    assert failed.failure
    settle(agent.hear_early(speech, after=failed))
    assert stt.heard == [cut, len(speech)]

    stt = MeasuringSTT()
    agent = Agent(fake_models(stt=stt))
    quiet_first = np.concatenate([np.zeros(cut, np.float32), speech])
    silent = settle(agent.hear_early(quiet_first[:cut]))  # the speech gate heard nothing
    settle(agent.hear_early(quiet_first, after=silent))
    assert stt.heard == [len(quiet_first)]


def test_silence_heard_early_is_still_no_speech():
    stt = MeasuringSTT()
    agent = Agent(fake_models(stt=stt))
    quiet = np.zeros(RATE, np.float32)
    early = settle(agent.hear_early(quiet))
    events, _ = run(agent, audio=(RATE, quiet), early=early)
    normal, _ = run(agent, audio=(RATE, quiet))
    assert [(e.kind, e.code) for e in events] == [(e.kind, e.code) for e in normal]
    assert [e.code for e in events if e.kind == "notice"] == ["no_speech"]
    assert stt.calls == 0  # the speech gate turned it away, early or not


def test_no_early_hearing_without_a_speech_recogniser(speech):
    agent = Agent(fake_models(missing=("stt",)))
    assert agent.hear_early(speech) is None


def test_a_discarded_guess_is_never_used(speech):
    stt = MeasuringSTT()
    agent = Agent(fake_models(stt=stt))
    early = settle(agent.hear_early(speech))
    early.discard()  # the user spoke on, or switched hands-free off
    events, _ = run(agent, audio=(RATE, speech), early=early)
    assert stt.calls == 2 and not events[-1].timings.heard_early


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory):
    """The real Whisper engine on a tiny random-weight checkpoint."""
    import torch

    from voice_agent.core.config import load_settings
    from voice_agent.stt.whisper import WhisperSTT
    from voice_agent.testing import tiny_whisper

    torch.set_num_threads(1)  # the CI machine has 2 cores, shared with other tests
    path = tiny_whisper.build(tmp_path_factory.mktemp("early-stt") / "stt")
    return WhisperSTT(str(path), load_settings({"HF_HUB_OFFLINE": "1"}))


def test_the_early_words_from_whisper_are_a_normal_turns(whisper, speech, monkeypatch):
    calls: list[int] = []
    transcribe = whisper.transcribe

    def counted(audio, language=None):
        calls.append(len(audio[1]))
        return transcribe(audio, language)

    monkeypatch.setattr(whisper, "transcribe", counted)
    agent = Agent(fake_models(stt=whisper))
    early = settle(agent.hear_early(speech), timeout=60)
    assert not early.failure, early.failure
    events, _ = run(agent, audio=(RATE, speech), early=early)
    normal, _ = run(agent, audio=(RATE, speech))
    assert calls == [len(speech), len(speech)]  # the early job and the normal turn, no more
    assert said(events) == said(normal) is not None
    assert events[-1].timings.heard_early and not normal[-1].timings.heard_early
