"""The labelled clip set for turn detection: built here, deterministically, from local audio.

Speech comes from the project's recordings (`assets/hello.wav`, the two
phrases of `assets/speech_pause_speech.wav`, the first also slowed down and
sped up) and the local espeak-ng voices in `assets/speech/` (six sentences,
see `voice_agent.testing.voices`); everything else is synthesised with fixed
seeds. Nothing is downloaded. Each `Clip` says where the user's utterances are
(one turn each: `speech`), and, for the echo clips, what the assistant played
(`played`): the microphone then hears that reply through a simulated room,
delayed and at speaker level.

Kinds: speech, quiet speech, speech with short pauses (one turn each), two
utterances apart (two turns), speech over white or pink noise at 10 dB SNR,
silence, noise (white, pink, brown, a noise onset, speech-band bursts), music-like
tones (a chord, a melody with vibrato, mains hum, a phone ring), clicks
(keyboard, knocks), the assistant's reply as echo, and the user talking over
that echo.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voice_agent.testing.paths import REPO_ROOT

SAMPLE_RATE = 16_000
ASSETS = REPO_ROOT / "assets"
ROOM_DBFS = -65.0  # the room tone under every clip
LEAD_S = 0.8  # room tone before the first utterance
TRAIL_S = 1.6  # room tone after the last one (more than a 0.6 s pause plus its decision)


@dataclass(frozen=True)
class Clip:
    """One labelled clip: 16 kHz mono float32 as the microphone hears it.

    Attributes:
        speech: (start_s, end_s) of each user utterance; each is one turn.
        played: the assistant's reply as sent to the speaker, starting at 0 s (echo
            clips); the microphone hears it delayed by `echo_delay_s`.
    """

    name: str
    kind: str
    audio: np.ndarray = field(repr=False)
    speech: tuple[tuple[float, float], ...] = ()
    played: np.ndarray | None = field(default=None, repr=False)
    echo_delay_s: float = 0.0

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def has_speech(self) -> bool:
        return bool(self.speech)


def _read(path: Path) -> np.ndarray:
    import soundfile as sf

    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    x = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        import soxr

        x = soxr.resample(x, rate, SAMPLE_RATE)
    return np.asarray(x, dtype=np.float32)


def trim(x: np.ndarray, below_peak_db: float = 40.0) -> np.ndarray:
    """`x` without its leading and trailing quiet (10 ms frames under peak - 40 dB)."""
    size = SAMPLE_RATE // 100
    count = len(x) // size
    levels = 10 * np.log10(np.mean(x[: count * size].reshape(count, size) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(levels > max(levels.max() - below_peak_db, -60.0))
    if not loud.size:
        return x.copy()
    return x[loud[0] * size : (loud[-1] + 1) * size].copy()


def at_level(x: np.ndarray, dbfs: float) -> np.ndarray:
    """`x` scaled to an RMS level of `dbfs` (measured over its loud part)."""
    rms = float(np.sqrt(np.mean(trim(x) ** 2)))
    return (x * (10 ** (dbfs / 20) / max(rms, 1e-9))).astype(np.float32)


def noise(seconds: float, exponent: float, dbfs: float, seed: int) -> np.ndarray:
    """Noise with a 1/f**exponent power spectrum (0 white, 1 pink, 2 brown) at `dbfs` RMS."""
    n = int(seconds * SAMPLE_RATE)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    x = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return (x * 10 ** (dbfs / 20) / np.sqrt(np.mean(x**2))).astype(np.float32)


def room(seconds: float, seed: int) -> np.ndarray:
    return noise(seconds, 1.0, ROOM_DBFS, seed)


@functools.cache
def utterances() -> dict[str, np.ndarray]:
    """Every speech source, trimmed to its speech, at -26 dBFS."""
    out = {"hello": trim(_read(ASSETS / "hello.wav"))}
    pair = _read(ASSETS / "speech_pause_speech.wav")
    gap = int(3.4 * SAMPLE_RATE)  # the 1.2 s of silence between the phrases spans 3.2-4.4 s
    out["phrase1"], out["phrase2"] = trim(pair[:gap]), trim(pair[gap:])
    import soxr

    for name, speed in (("hello_slow", 0.9), ("hello_fast", 1.12)):
        # Played at another rate: slower and lower, or faster and higher.
        out[name] = trim(soxr.resample(out["hello"], SAMPLE_RATE, int(SAMPLE_RATE / speed)))
    for path in sorted((ASSETS / "speech").glob("*.flac")):
        out[path.stem] = trim(_read(path))
    return {name: at_level(x, -26.0) for name, x in out.items()}


def _with_room(parts: list[np.ndarray], seed: int) -> tuple[np.ndarray, list[float]]:
    """Concatenate `parts` over room tone; return the audio and each part's start time."""
    starts, t = [], 0
    for part in parts:
        starts.append(t / SAMPLE_RATE)
        t += len(part)
    audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return (audio + room(len(audio) / SAMPLE_RATE, seed)).astype(np.float32), starts


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def speech_clip(
    name: str, kind: str, words: list[np.ndarray], gaps: list[float], seed: int
) -> Clip:
    """Utterance pieces with `gaps` (seconds) between them, as one turn when every gap is
    shorter than the pause, labelled from the first piece's start to the last one's end."""
    parts = [_silence(LEAD_S)]
    for i, piece in enumerate(words):
        parts.append(piece)
        if i < len(gaps):
            parts.append(_silence(gaps[i]))
    parts.append(_silence(TRAIL_S))
    audio, starts = _with_room(parts, seed)
    end = starts[-1]
    return Clip(name, kind, audio, ((LEAD_S, end),))


def split_words(x: np.ndarray, count: int) -> list[np.ndarray]:
    """`x` cut into `count` pieces at its quietest 30 ms points (between words), each
    trimmed of its quiet edges (so a gap put between them is the whole pause)."""
    size = SAMPLE_RATE * 30 // 1000
    levels = np.array([np.mean(x[i : i + size] ** 2) for i in range(0, len(x) - size, size)])
    inner = np.arange(len(levels))
    allowed = (inner > len(levels) * 0.15) & (inner < len(levels) * 0.85)
    cuts: list[int] = []
    for i in np.argsort(np.where(allowed, levels, np.inf)):
        if len(cuts) == count - 1:
            break
        if all(abs(int(i) - c) > 25 for c in cuts):  # 0.75 s apart: different gaps
            cuts.append(int(i))
    bounds = [0, *sorted(c * size for c in cuts), len(x)]
    return [trim(x[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def room_impulse(rt60_s: float, seed: int) -> np.ndarray:
    """A room's impulse response: the direct sound, then exponentially decaying reflections."""
    n = int(rt60_s * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = np.random.default_rng(seed).standard_normal(n) * np.exp(-6.9 * t / rt60_s) * 0.3
    tail[: int(0.003 * SAMPLE_RATE)] = 0.0  # first reflection after 3 ms
    tail[0] = 1.0
    return tail.astype(np.float32)


def echo_of(reply: np.ndarray, delay_s: float, gain_db: float, seed: int) -> np.ndarray:
    """The reply as the microphone hears it from the loudspeaker: through the room, delayed,
    at `gain_db` relative to the level it was played at."""
    wet = np.convolve(reply, room_impulse(0.3, seed))[: len(reply)]
    wet = at_level(wet, 20 * np.log10(np.sqrt(np.mean(trim(reply) ** 2))) + gain_db)
    return np.concatenate((_silence(delay_s), wet))


def tones(seconds: float, notes: list[tuple[float, float]], vibrato_hz: float = 0.0) -> np.ndarray:
    """Notes (frequency Hz, duration s) with five harmonics, repeated to fill `seconds`."""
    out, t_total = [], 0.0
    while t_total < seconds:
        for freq, dur in notes:
            t = np.arange(int(dur * SAMPLE_RATE)) / SAMPLE_RATE
            f = freq * (1 + 0.01 * np.sin(2 * np.pi * vibrato_hz * t)) if vibrato_hz else freq
            phase = 2 * np.pi * np.cumsum(np.broadcast_to(f, t.shape)) / SAMPLE_RATE
            note = sum(np.sin(k * phase) / k for k in range(1, 6))
            out.append(note * np.minimum(1.0, np.minimum(t, dur - t) / 0.02))
            t_total += dur
    x = np.concatenate(out)[: int(seconds * SAMPLE_RATE)]
    return at_level(x.astype(np.float32), -26.0)


def bursts(make, seconds: float, on_s: float, every_s: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = _silence(seconds)
    t = 0.3
    while t + on_s < seconds:
        start = int(t * SAMPLE_RATE)
        x[start : start + int(on_s * SAMPLE_RATE)] += make(int(on_s * SAMPLE_RATE), rng)
        t += every_s * rng.uniform(0.6, 1.4)
    return x


def knock(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * rng.uniform(150, 300) * t) * np.exp(-t / 0.015)).astype(
        np.float32
    )


def tap(n: int, rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(n) * 0.3 * np.exp(-np.arange(n) / (n / 4))).astype(np.float32)


def band_burst(n: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[(freqs < 100) | (freqs > 4000)] = 0
    x = np.fft.irfft(spectrum, n)
    return (x * 10 ** (-26 / 20) / np.sqrt(np.mean(x**2))).astype(np.float32)


def _over_noise(x: np.ndarray, exponent: float, snr_db: float, seed: int) -> np.ndarray:
    speech_db = 20 * np.log10(np.sqrt(np.mean(trim(x) ** 2)))
    return (x + noise(len(x) / SAMPLE_RATE, exponent, speech_db - snr_db, seed)).astype(np.float32)


@functools.cache
def clip_set() -> tuple[Clip, ...]:
    """Every clip, in a fixed order (built in about a second)."""
    u = utterances()
    clips: list[Clip] = []
    for seed, (name, x) in enumerate(u.items()):
        level = (-20.0, -26.0, -32.0)[seed % 3]
        clips.append(speech_clip(f"speech/{name}", "speech", [at_level(x, level)], [], seed))
    clips.append(speech_clip("speech/quiet", "speech", [u["hello"] * 0.05], [], 40))
    # Short pauses inside one turn: hesitations between words, and two sentences close together.
    clips.append(
        speech_clip("pauses/hello", "speech_pauses", split_words(u["hello"], 3), [0.3, 0.4], 41)
    )
    clips.append(
        speech_clip(
            "pauses/capital", "speech_pauses", split_words(u["capital"], 3), [0.35, 0.25], 42
        )
    )
    clips.append(
        speech_clip("pauses/two-sentences", "speech_pauses", [u["weather"], u["timer"]], [0.4], 43)
    )
    # Two utterances 1.6 s apart: two turns.
    audio, starts = _with_room(
        [_silence(LEAD_S), u["phrase1"], _silence(1.6), u["phrase2"], _silence(TRAIL_S)], 44
    )
    clips.append(
        Clip(
            "two-turns/phrases",
            "speech",
            audio,
            ((starts[1], starts[2]), (starts[3], starts[4])),
        )
    )
    for i, name in enumerate(("hello", "recipe", "music", "phrase2")):
        base = speech_clip(f"noisy/{name}", "speech_noise", [u[name]], [], 50 + i)
        exponent = 0.0 if i % 2 == 0 else 1.0
        kind_name = f"noisy/{name}-{'white' if exponent == 0 else 'pink'}-10dB"
        audio = _over_noise(base.audio, exponent, 10.0, 60 + i)
        clips.append(Clip(kind_name, "speech_noise", audio, base.speech))
    # Nothing the user said.
    clips += [
        Clip("silence/digital", "silence", _silence(4.0)),
        Clip("silence/room", "silence", room(4.0, 70)),
        Clip("silence/asset", "silence", _read(ASSETS / "silence.wav")),
        Clip("noise/white-40dB", "noise", noise(4.0, 0, -40.0, 71)),
        Clip("noise/white-20dB", "noise", noise(4.0, 0, -20.0, 72)),
        Clip("noise/pink-30dB", "noise", noise(4.0, 1, -30.0, 73)),
        Clip("noise/pink-15dB", "noise", noise(4.0, 1, -15.0, 74)),
        Clip("noise/brown-20dB", "noise", noise(4.0, 2, -20.0, 75)),
        Clip(
            "noise/onset",
            "noise",
            np.concatenate((room(2.0, 76), noise(4.0, 1, -25.0, 77), room(2.0, 78))),
        ),
        Clip("noise/speech-band-bursts", "noise", bursts(band_burst, 4.0, 0.3, 0.6, 79)),
        Clip(
            "music/chord",
            "music",
            tones(4.0, [(261.6, 4.0)]) + tones(4.0, [(329.6, 4.0)]) + tones(4.0, [(392.0, 4.0)]),
        ),
        Clip(
            "music/melody-vibrato",
            "music",
            tones(5.0, [(220, 0.3), (247, 0.3), (262, 0.3), (294, 0.3), (330, 0.6)], 5.5),
        ),
        Clip("music/hum-50Hz", "music", tones(4.0, [(50.0, 4.0)])),
        Clip(
            "music/phone-ring",
            "music",
            tones(4.0, [(440.0, 0.4), (480.0, 0.4), (1.0, 0.4)]),
        ),
        Clip("clicks/keyboard", "clicks", bursts(tap, 4.0, 0.01, 0.18, 80) + room(4.0, 81)),
        Clip("clicks/knocks", "clicks", bursts(knock, 4.0, 0.08, 0.5, 82) + room(4.0, 83)),
    ]
    # The assistant's reply coming back through the loudspeaker.
    replies = [("phrase1", 0.15, 0.0), ("music", 0.4, 0.0), ("capital", 0.8, -6.0)]
    for i, (name, delay, gain) in enumerate(replies):
        reply = np.concatenate((u[name], _silence(0.2), u["weather"]))
        mic = echo_of(reply, delay, gain, 90 + i)
        mic = np.concatenate((mic, _silence(TRAIL_S)))
        mic += room(len(mic) / SAMPLE_RATE, 95 + i)
        clips.append(Clip(f"echo/{name}-{delay}s-{gain:+.0f}dB", "echo", mic, (), reply, delay))
    # The user talking over that echo, as loud as the echo: a real barge-in.
    for i, (name, delay) in enumerate((("phrase2", 0.25), ("recipe", 0.6))):
        reply = np.concatenate((u[name], _silence(0.2), u["capital"], _silence(0.2), u["timer"]))
        mic = echo_of(reply, delay, 0.0, 100 + i)
        user_at = 2.6
        user = u["hello"]
        start = int(user_at * SAMPLE_RATE)
        mic = np.concatenate(
            (
                mic,
                _silence(
                    max(0.0, user_at + len(user) / SAMPLE_RATE - len(mic) / SAMPLE_RATE) + TRAIL_S
                ),
            )
        )
        mic[start : start + len(user)] += user
        mic += room(len(mic) / SAMPLE_RATE, 105 + i)
        speech = ((user_at, user_at + len(user) / SAMPLE_RATE),)
        clips.append(Clip(f"barge-in/{name}-{delay}s", "echo_barge_in", mic, speech, reply, delay))
    return tuple(clips)
