"""Parity of our Dia2 runtime with the official one on the tiny fixture.

The fixture (tests/fixtures/dia2-tiny, see its README) holds what nari-labs/dia2
@ 8687268 produced (float32, CPU, greedy) for six scripts. Every token, step count,
timestamp and the crop must match exactly; the waveform within 1e-4.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tests.dia2_helpers import case_config, cases, expected, fixture_dir, runtime

pytestmark = [pytest.mark.parity, pytest.mark.usefixtures("one_torch_thread")]
CASES = ["c1_hello", "c2_dialogue", "c3_break", "c4_long_nocfg", "c5_prefix", "c6_context_cap"]


def test_fixture_matches_its_manifest(dia2_fixture: Path) -> None:
    """Every data file is in the repository, byte for byte as the reference run left it."""
    listed = {}
    for line in (dia2_fixture / "MANIFEST.sha256").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    on_disk = {
        str(p.relative_to(dia2_fixture))
        for p in dia2_fixture.rglob("*")
        if p.is_file() and p.name not in ("README.md", "MANIFEST.sha256")
    }
    assert on_disk == set(listed)
    for name, digest in listed.items():
        assert hashlib.sha256((dia2_fixture / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("name", CASES)
def test_parsed_entries_match(name: str) -> None:
    case = cases()[name]
    rt = runtime()
    entries = list(case_config(name).prefix.entries) if case["settings"]["prefix"] else []
    entries += rt.parse(case["script"])
    got = [{"text": e.text, "tokens": list(e.tokens), "padding": e.padding} for e in entries]
    assert got == case["parsed_entries"]


@pytest.mark.parametrize("name", CASES)
def test_generation_matches_reference(name: str) -> None:
    case, exp = cases()[name], expected(name)
    want = case["expected"]
    from voice_agent.tts.dia2.generator import StepTrace

    trace = StepTrace()
    result = runtime().generate(case["script"], case_config(name), trace=trace)

    # On failure, point at the first step whose inputs or sampled codes differ.
    steps = exp.steps
    for i, step in enumerate(trace.step):
        assert step == steps["step"][i]
        assert np.array_equal(trace.input_tokens[i][0], steps["input_tokens"][i][0]), (
            f"inputs differ at step {step}"
        )
        assert np.array_equal(trace.audio_generated[i], steps["audio_generated"][i]), (
            f"codes differ at step {step}"
        )
        assert trace.text[i] == (steps["text_main"][i], steps["text_second"][i]), (
            f"text differs at step {step}"
        )
    assert len(trace.step) == len(steps["step"])

    assert result.audio_tokens.shape == exp.audio_tokens.shape
    assert np.array_equal(result.audio_tokens, exp.audio_tokens)
    assert result.end_step == want["end_step"]
    assert result.steps_run == want["steps_run"]
    assert result.stopped_by == want["stopped_by"]
    assert result.crop_frames == want["crop_frames"]
    assert [w for w, _ in result.timestamps] == [w for w, _ in want["timestamps"]]
    np.testing.assert_allclose(
        [s for _, s in result.timestamps], [s for _, s in want["timestamps"]], atol=1e-9
    )
    assert result.sample_rate == want["sample_rate"]
    assert result.audio.dtype == np.float32
    assert result.audio.shape == (want["waveform_samples"],)
    assert np.abs(result.audio - exp.waveform).max() <= 1e-4


def test_unconditional_branch_inputs_match() -> None:
    """The CFG branch is fed [zero, pad] text and the shared audio history (c1)."""
    from voice_agent.tts.dia2.generator import StepTrace

    trace = StepTrace()
    runtime().generate(cases()["c1_hello"]["script"], case_config("c1_hello"), trace=trace)
    want = expected("c1_hello").steps["input_tokens"]
    assert np.array_equal(np.stack(trace.input_tokens), want)


def test_prefix_codes_and_word_steps_match() -> None:
    """The voice prefix is Mimi-encoded and its words placed where the reference forced them."""
    prefix = case_config("c5_prefix").prefix
    assert np.array_equal(
        prefix.codes, np.load(fixture_dir() / "cases" / "c5_prefix" / "prefix_tokens.npy")
    )
    warmup = np.load(fixture_dir() / "cases" / "c5_prefix" / "warmup_steps.npz")
    forced_new_word = [
        int(s) for s, a in zip(warmup["step"], warmup["forced_action"], strict=True) if a == 2
    ]
    assert list(prefix.new_word_steps) == forced_new_word
    assert cases()["c5_prefix"]["expected"]["prefix_frames"] == prefix.frames


def test_prefix_is_encoded_once() -> None:
    """A voice prefix is cached: the same files give the same object, not a second encode."""
    assert case_config("c5_prefix").prefix is case_config("c5_prefix").prefix
