"""Turn detection on real clips: end of turn after a pause, none inside a short one, noise ignored.

Each test runs with both voice-activity models (the `model` fixture): Silero VAD
and the numpy fallback decide the same way on these clips.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import soundfile as sf

from voice_agent.audio.numpy_vad import NumpyVAD, voicing
from voice_agent.audio.vad import SAMPLE_RATE, TurnDetector, VADConfig, VADEvent
from voice_agent.audio.voice_activity import SileroVAD, VoiceActivityModel, silero_model_path


def load(path) -> np.ndarray:
    samples, rate = sf.read(str(path), dtype="float32")
    assert rate == SAMPLE_RATE
    return samples


def feed_all(
    detector: TurnDetector, samples: np.ndarray, rate: int = SAMPLE_RATE, chunk_s: float = 0.1
) -> list[VADEvent]:
    n = max(1, int(chunk_s * rate))
    events: list[VADEvent] = []
    for start in range(0, len(samples), n):
        events += detector.feed(samples[start : start + n], rate)
    return events


@pytest.fixture(scope="module", params=["silero", "numpy"])
def model(request) -> VoiceActivityModel:
    if request.param == "numpy":
        return NumpyVAD()
    path = silero_model_path()
    assert path is not None, "silero-vad is in requirements.txt"
    return SileroVAD(path)


def detector_for(model: VoiceActivityModel, **config) -> TurnDetector:
    return TurnDetector(VADConfig(**{"pause_s": 0.6, **config}), model=model)


@pytest.fixture
def clips(assets_dir):
    return {
        name: load(assets_dir / f"{name}.wav")
        for name in ("hello", "speech_pause_speech", "silence")
    }


def pink_noise(seconds: float, rms: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
    spectrum[0] = 0
    x = np.fft.irfft(spectrum, n)
    return (x / x.std() * rms).astype(np.float32)


def test_end_of_turn_after_speech_then_silence(model, clips):
    detector = detector_for(model)
    audio = np.concatenate([clips["hello"], clips["silence"]])
    events = feed_all(detector, audio)
    assert [e.kind for e in events] == ["speech_start", "end_of_turn"]
    end = events[-1]
    speech_end = len(clips["hello"]) / SAMPLE_RATE
    # Speech in hello.wav ends just before the clip does; the turn ends one pause later.
    assert speech_end - 0.5 < end.speech_end_s <= speech_end + 0.05
    assert 0.6 <= end.silence_s < 0.7
    assert end.audio is not None and end.audio.dtype == np.float32
    assert 3.0 < len(end.audio) / SAMPLE_RATE < 4.0  # the utterance, with a short tail
    assert not detector.in_speech


def test_no_end_of_turn_inside_a_pause_shorter_than_the_setting(model, clips):
    audio = np.concatenate([clips["speech_pause_speech"], clips["silence"]])
    # The clip's gap between phrases is 1.2 s of silence plus the phrases' own quiet
    # edges (1.64 s without any speech energy); a 2 s pause setting spans it.
    events = feed_all(detector_for(model, pause_s=2.0), audio)
    assert [e.kind for e in events] == ["speech_start", "end_of_turn"]
    assert events[-1].speech_start_s < 0.3 and events[-1].speech_end_s > 7.0

    # With the default 0.6 s the gap ends the first turn; the 0.39 s breath inside
    # the first phrase does not.
    events = feed_all(detector_for(model), audio)
    assert [e.kind for e in events] == ["speech_start", "end_of_turn"] * 2
    first, second = events[1], events[3]
    assert 2.9 < first.speech_end_s < 3.2
    # Each turn's audio is its own speech plus a short pre-roll and tail, nothing older.
    assert 3.0 < len(first.audio) / SAMPLE_RATE < 3.6
    assert 2.9 < len(second.audio) / SAMPLE_RATE < 3.5


def test_default_pause_comes_from_settings(monkeypatch):
    monkeypatch.setenv("VAD_PAUSE_SECONDS", "0.9")
    from voice_agent.core.config import get_settings

    get_settings.cache_clear()
    assert TurnDetector().config.pause_s == 0.9
    assert TurnDetector(pause_s=1.3).config.pause_s == 1.3


def test_a_short_pause_comes_first_with_the_audio_the_turn_will_carry(model, clips):
    """Hands-free transcribes at the `pause`; the turn may use that transcript only because
    the `pause` carries exactly the audio `end_of_turn` carries when nothing more is said."""
    detector = detector_for(model, early_pause_s=0.2)
    events = feed_all(detector, np.concatenate([clips["hello"], clips["silence"]]))
    kinds = [e.kind for e in events]
    assert kinds[0] == "speech_start" and kinds[-2:] == ["pause", "end_of_turn"]
    # Every pause is followed by more speech or by the end of the turn (hello.wav has a
    # 0.39 s breath inside it: a pause, then a resume).
    assert all(b in ("resume", "end_of_turn") for a, b in pairwise(kinds) if a == "pause")
    pause, end = events[-2], events[-1]
    assert pause.audio is not None and end.audio is not None
    assert np.array_equal(pause.audio, end.audio)
    assert pause.speech_end_s == end.speech_end_s
    assert 0.19 <= pause.silence_s < 0.25
    assert 0.35 < end.at_s - pause.at_s < 0.45  # the rest of the 0.6 s pause


def test_speech_after_a_short_pause_resumes_the_turn(model, clips):
    audio = np.concatenate([clips["speech_pause_speech"], clips["silence"]])
    events = feed_all(detector_for(model, pause_s=2.0, early_pause_s=0.2), audio)
    kinds = [e.kind for e in events]
    assert kinds.count("end_of_turn") == 1 and kinds.count("resume") >= 1
    end = events[-1]
    pauses = [e for e in events if e.kind == "pause"]
    # The pauses the user spoke on after carry less than the turn: their words are not its.
    assert all(len(p.audio) < len(end.audio) for p in pauses[:-1]) and len(pauses) >= 2
    assert np.array_equal(pauses[-1].audio, end.audio)


def test_a_short_pause_shorter_than_the_tail_still_carries_the_turns_audio(model, clips):
    detector = detector_for(model, early_pause_s=0.05)
    events = feed_all(detector, np.concatenate([clips["hello"], clips["silence"]]))
    pause, end = events[-2], events[-1]
    assert pause.kind == "pause" and np.array_equal(pause.audio, end.audio)


@pytest.mark.parametrize("early", [0.0, 0.6, 1.0], ids=["off", "as-long-as-the-pause", "longer"])
def test_no_short_pause_when_off_or_not_shorter_than_the_pause(model, clips, early):
    detector = detector_for(model, early_pause_s=early)
    events = feed_all(detector, np.concatenate([clips["hello"], clips["silence"]]))
    assert [e.kind for e in events] == ["speech_start", "end_of_turn"]


def test_short_pause_comes_from_settings(monkeypatch):
    from voice_agent.core.config import SettingsError, get_settings, load_settings

    monkeypatch.setenv("VAD_EARLY_PAUSE_SECONDS", "0.3")
    get_settings.cache_clear()
    assert TurnDetector().config.early_pause_s == 0.3
    assert TurnDetector(pause_s=1.3).config.early_pause_s == 0.3
    with pytest.raises(SettingsError, match="VAD_EARLY_PAUSE_SECONDS.*0 to 10"):
        load_settings({"VAD_EARLY_PAUSE_SECONDS": "-1"})
    with pytest.raises(ValueError, match="early_pause_s"):
        VADConfig(early_pause_s=-0.1)


@pytest.mark.parametrize(
    "make",
    [
        lambda clips: clips["silence"],
        lambda clips: np.random.default_rng(1).normal(0, 0.05, 5 * SAMPLE_RATE).astype(np.float32),
        lambda clips: pink_noise(5, 0.05),
        # Noise that starts suddenly in a quiet room (the floor must adapt to it).
        lambda clips: np.concatenate([clips["silence"], pink_noise(4, 0.05), clips["silence"]]),
        lambda clips: 0.2 * np.sin(2 * np.pi * 50 * np.arange(4 * SAMPLE_RATE) / SAMPLE_RATE),
    ],
    ids=["silence", "white-noise", "pink-noise", "noise-onset", "mains-hum"],
)
def test_noise_and_silence_do_not_start_a_turn(model, clips, make):
    detector = detector_for(model)
    events = feed_all(detector, make(clips)) + detector.flush()
    assert events == []


def test_clicks_shorter_than_the_minimum_speech_are_ignored(model):
    rng = np.random.default_rng(2)
    audio = np.zeros(3 * SAMPLE_RATE, dtype=np.float32)
    for at in (0.5, 1.5, 2.2):
        start = int(at * SAMPLE_RATE)
        audio[start : start + 400] = rng.normal(0, 0.5, 400)
    assert feed_all(detector_for(model), audio) == []


def test_push_to_talk_ends_the_turn_only_when_flushed(model, clips):
    """Record (`end_on_pause=False`): a 1.2 s pause is a pause, not the turn's end; the
    stop (`flush`) ends it with both stretches of speech. Its short pauses still come."""
    detector = detector_for(model, end_on_pause=False, early_pause_s=0.2)
    audio = np.concatenate([clips["speech_pause_speech"], clips["silence"]])
    events = feed_all(detector, audio)
    kinds = [e.kind for e in events]
    assert "end_of_turn" not in kinds and kinds[0] == "speech_start" and "pause" in kinds
    assert detector.in_speech
    (end,) = detector.flush()
    assert end.kind == "end_of_turn" and end.audio is not None
    heard = len(end.audio) / SAMPLE_RATE
    assert heard > len(clips["speech_pause_speech"]) / SAMPLE_RATE - 1.0  # both stretches


def test_push_to_talk_still_drops_clicks_apart(model):
    """Scattered clicks never add up to a turn, however long the recording."""
    rng = np.random.default_rng(2)
    audio = np.zeros(12 * SAMPLE_RATE, dtype=np.float32)
    for at in (0.5, 3.5, 6.5, 9.5):
        start = int(at * SAMPLE_RATE)
        audio[start : start + 2400] = rng.normal(0, 0.5, 2400)  # 0.15 s each
    detector = detector_for(model, end_on_pause=False)
    assert feed_all(detector, audio) == []
    assert detector.flush(short=True) == []  # nothing left over from them either


def test_a_word_too_short_for_hands_free_is_a_turn_when_the_recording_stops(model, clips):
    """A push-to-talk "yes": under `min_speech_s`, dropped by `flush()`, kept by
    `flush(short=True)` (the Record button's stop)."""
    word = clips["hello"][int(0.3 * SAMPLE_RATE) : int(0.5 * SAMPLE_RATE)]
    for short, turns in ((False, 0), (True, 1)):
        detector = detector_for(model, end_on_pause=False, min_speech_s=0.5)
        assert feed_all(detector, np.concatenate([np.zeros(1600, np.float32), word])) == []
        flushed = detector.flush(short=short)
        assert len(flushed) == turns, (short, flushed)


def test_speech_in_steady_noise_is_still_found(model, clips):
    noise = pink_noise(1 + len(clips["hello"]) / SAMPLE_RATE + 2, 0.015, seed=3)
    audio = noise.copy()
    start = SAMPLE_RATE
    audio[start : start + len(clips["hello"])] += clips["hello"]
    events = feed_all(detector_for(model), audio)
    assert [e.kind for e in events] == ["speech_start", "end_of_turn"]
    assert 0.9 < events[0].speech_start_s < 1.3


def test_any_rate_dtype_and_channels(model, clips):
    import soxr

    audio = np.concatenate([clips["hello"], clips["silence"]])
    at_48k = soxr.resample(audio, SAMPLE_RATE, 48_000)
    stereo_int16 = (np.stack([at_48k, at_48k], axis=1) * 32767).astype(np.int16)
    events = feed_all(detector_for(model), stereo_int16, rate=48_000, chunk_s=0.05)
    assert [e.kind for e in events] == ["speech_start", "end_of_turn"]
    assert events[-1].audio is not None
    assert abs(len(events[-1].audio) / SAMPLE_RATE - 3.6) < 0.5


def test_barge_in_only_while_the_assistant_speaks(model, clips):
    detector = detector_for(model)
    detector.assistant_speaking = True
    events = feed_all(detector, np.concatenate([clips["hello"], clips["silence"]]))
    assert [e.kind for e in events] == ["speech_start", "barge_in", "end_of_turn"]
    # Barge-in needs more speech than a normal start (the assistant's echo is not the user).
    assert events[1].at_s >= VADConfig().barge_in_min_speech_s


def test_flush_closes_an_open_turn_and_reset_forgets_it(model, clips):
    detector = detector_for(model)
    events = feed_all(detector, clips["hello"][: 2 * SAMPLE_RATE])
    assert [e.kind for e in events] == ["speech_start"] and detector.in_speech
    closed = detector.flush()
    assert [e.kind for e in closed] == ["end_of_turn"] and closed[0].audio.size > SAMPLE_RATE
    feed_all(detector, clips["hello"][: 2 * SAMPLE_RATE])
    detector.reset()
    assert not detector.in_speech and detector.flush() == []


def test_a_monologue_is_cut_at_the_turn_limit(model, clips):
    detector = detector_for(model, max_turn_s=1.5)
    events = feed_all(detector, clips["hello"])
    assert [e.kind for e in events][:2] == ["speech_start", "end_of_turn"]
    assert events[1].at_s - events[1].speech_start_s <= 1.5 + 0.04  # within a 32 ms frame


def test_voicing_separates_a_vowel_from_noise():
    t = np.arange(640) / SAMPLE_RATE
    vowel = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 6))
    noise = np.random.default_rng(4).normal(0, 1, 640)
    assert voicing(vowel.astype(np.float32)) > 0.9
    assert voicing(noise.astype(np.float32)) < 0.4


def test_bad_config_and_chunks_are_refused():
    with pytest.raises(ValueError, match="pause_s"):
        VADConfig(pause_s=0)
    detector = detector_for(NumpyVAD())
    with pytest.raises(ValueError, match="sample rate"):
        detector.feed(np.zeros(160, dtype=np.float32), 0)
    with pytest.raises(ValueError, match="shape"):
        detector.feed(np.zeros((2, 2, 2), dtype=np.float32), SAMPLE_RATE)
    assert detector.feed(np.zeros(0, dtype=np.float32), SAMPLE_RATE) == []


def test_longest_turn_fits_the_transcription_limit(monkeypatch) -> None:
    """Regression: a turn cut at max_turn_s (300 s) plus its 0.3 s pre-roll exceeded
    MAX_AUDIO_SECONDS (300) and was refused as too long."""
    from voice_agent.audio.vad import TurnDetector
    from voice_agent.core.config import get_settings

    for limit in ("300", "30"):
        monkeypatch.setenv("MAX_AUDIO_SECONDS", limit)
        get_settings.cache_clear()
        cfg = TurnDetector().config
        assert cfg.max_turn_s + cfg.preroll_s < float(limit)
