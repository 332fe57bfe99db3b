"""Helpers for the Dia2 runtime tests: the parity fixture (tests/fixtures/dia2-tiny) and its cases."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import soundfile

from voice_agent.testing.paths import dia2_fixture_dir

GREEDY = {"temperature": 1.0, "top_k": 1}
_TIMERS: dict[str, object] = {}


def fixture_dir() -> Path:
    return dia2_fixture_dir()


@cache
def cases() -> dict[str, dict]:
    data = json.loads((fixture_dir() / "cases.json").read_text())
    return {case["name"]: case for case in data["cases"]}


def load_runtime(**kwargs):
    """A fresh runtime on the fixture's checkpoint (float32, CPU); `kwargs` go to
    `Dia2Runtime.from_pretrained` (e.g. `fast_path`)."""
    from voice_agent.tts.dia2 import Dia2Runtime

    return Dia2Runtime.from_pretrained(str(fixture_dir() / "dia2"), **kwargs)


@cache
def runtime():
    """The fixture's runtime, loaded once per test session (float32, CPU)."""
    return load_runtime()


def stub_word_timer(stub: dict[str, list]):
    """A WordTimer returning the fixture's fixed timings, recognising each wav by its length."""
    by_length = {
        len(soundfile.read(fixture_dir() / name)[0]): words for name, words in stub.items()
    }

    def word_timer(audio: np.ndarray, sample_rate: int) -> list[tuple[str, float, float]]:
        return [tuple(w) for w in by_length[len(audio)]]

    return word_timer


def case_config(name: str, **overrides):
    """The exact generation settings the reference ran case `name` with."""
    from voice_agent.tts.dia2 import Dia2GenerationConfig, SamplingConfig

    settings = cases()[name]["settings"]
    prefix = None
    if settings["prefix"]:
        p = settings["prefix"]
        # One timer per case: the prefix cache keys on the timer's identity, and a fresh
        # closure each call only hit the cache when CPython happened to reuse its id.
        if name not in _TIMERS:
            _TIMERS[name] = stub_word_timer(p["stub_transcripts"])
        prefix = runtime().prefix(
            fixture_dir() / p["speaker_1"],
            fixture_dir() / p["speaker_2"],
            word_timer=_TIMERS[name],
        )
    fields = dict(
        text=SamplingConfig(**settings["text_sampling"]),
        audio=SamplingConfig(**settings["audio_sampling"]),
        cfg_scale=settings["cfg_scale"],
        cfg_filter_k=settings["cfg_filter_k"],
        initial_padding=settings["initial_padding"],
        prefix=prefix,
        on_context_overflow="truncate",
    )
    fields.update(overrides)
    return Dia2GenerationConfig(**fields)


@dataclass(frozen=True)
class Expected:
    audio_tokens: np.ndarray
    waveform: np.ndarray
    steps: dict


@cache
def expected(name: str) -> Expected:
    folder = fixture_dir() / "cases" / name
    steps = np.load(folder / "steps.npz")
    return Expected(
        audio_tokens=np.load(folder / "audio_tokens.npy")[0],
        waveform=np.load(folder / "waveform.npy"),
        steps={key: steps[key] for key in steps.files},
    )
