"""The Piper backend: gruut IPA -> Piper ids, the tiny ONNX voice through the engine, its place in
the fallback order, hub folders inside a repo, and natural joins between streamed phrases."""

from __future__ import annotations

import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from voice_agent.core.config import DEFAULT_PIPER, configured_models, get_settings
from voice_agent.core.hub import ensure_model_exists
from voice_agent.tts.backends import UnknownVoiceError
from voice_agent.tts.engine import CPU_REASON, LocalTTS, detect_backend
from voice_agent.tts.text.chunking import CLAUSE_PAUSE_MS, SENTENCE_PAUSE_MS
from voice_agent.tts.text.phonemes import PhonemeIds

RATE = 22_050
# DEFAULT_PIPER's folder as a Hub snapshot (and a LOCAL_MODELS_DIR entry) lays it out.
VOICE_FOLDER = Path(*DEFAULT_PIPER.split("/")[2:])


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    monkeypatch.setenv("TTS_DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


def local_piper(monkeypatch: pytest.MonkeyPatch, tiny_models: Path, tmp_path: Path) -> Path:
    """The tiny voice where LOCAL_MODELS_DIR/ORG/NAME/FOLDER finds the default Piper ref."""
    models = tmp_path / "local-models"
    shutil.copytree(tiny_models / "piper", models / DEFAULT_PIPER)
    monkeypatch.setenv("LOCAL_MODELS_DIR", str(models))
    return models


def test_ids_follow_pipers_sequence() -> None:
    """Guards the id layout Piper voices were trained on: ^ _ (phoneme _)* $, a word gap between
    words, punctuation kept, stress marks as their own symbols (a wrong layout speaks garbage)."""
    symbols = ["_", "^", "$", " ", ",", ".", "h", "ə", "l", "o", "ʊ", "ˈ", "ð", "ɛ", "ɹ"]
    ids = PhonemeIds({s: [i] for i, s in enumerate(symbols)})
    out = ids.ids([["h", "ə", "l", "ˈoʊ"], [","], ["ð", "ˈɛ", "ɹ"]])
    back = [symbols[i] for i in out]
    assert back[:2] == ["^", "_"] and back[-1] == "$"
    assert back[1:-1:2] == ["_"] * len(back[1:-1:2]), "every symbol is followed by the pad"
    assert "".join(back[2:-1:2]) == "həlˈoʊ, ðˈɛɹ"  # no gap before the comma, one after
    words = ids.ids([["h", "ə"], ["ð", "ə"]])
    assert [symbols[i] for i in words].count(" ") == 1


def test_gruut_reads_english_into_the_voice_map(tiny_models: Path) -> None:
    """Guards the phonemizer: gruut (offline, from its wheel) turns numbers and words into IPA
    that the voice's espeak-style map knows, with nothing dropped as unknown."""
    import json

    config = json.loads(next((tiny_models / "piper").glob("*.onnx.json")).read_text())
    ids = PhonemeIds(config["phoneme_id_map"])
    out = ids.encode("Hello there, it costs 3 dollars. Is that good?")
    assert ids.spoken(out) > 25
    assert not ids.unknown, f"symbols missing from the map: {ids.unknown}"


def test_one_indexed_lexicon_serves_every_thread() -> None:
    """Bug: `gruut.sentences` keeps a processor per thread with its own sqlite connection and an
    empty word cache, and the lexicon's table has no index on the word: each turn speaks on a
    new thread, so every phrase scanned 135,000 rows per word (60-180 ms before its audio).
    Guards: every thread gets the same processor, its lexicon lookup uses an index, and the
    IPA is gruut's own, word for word."""
    import threading

    from gruut import sentences

    from voice_agent.tts.text import phonemes

    texts = [
        "It looks sunny this afternoon, with a light breeze.",
        "The pharmacy on Main Street is closed at 10:30pm.",
        "I read the book; you read it too? Dr. Smith paid $3.50.",
        "Zyxwv qlorb!",  # not in the lexicon: gruut's guesser
    ]

    def gruut_own(text: str) -> list[list[str]]:
        words: list[list[str]] = []
        for sentence in sentences(text, lang=phonemes.LANG):
            for word in sentence:
                if word.is_break:
                    mark = (word.phonemes or ["|"])[0]
                    words.append([word.text if word.text in ",.;:!?" else phonemes.BREAKS[mark]])
                elif word.phonemes:
                    words.append(list(word.phonemes))
        return words

    seen: list[tuple[object, list[list[list[str]]]]] = []

    def speak() -> None:
        seen.append((phonemes._processor(), [phonemes.phonemize(t) for t in texts]))

    threads = [threading.Thread(target=speak) for _ in range(2)]
    for thread in threads:
        thread.start()
        thread.join()
    assert seen[0][0] is seen[1][0], "one processor (and word cache) for every thread"
    assert seen[0][1] == seen[1][1] == [gruut_own(t) for t in texts]
    lookup = phonemes._processor().get_settings(phonemes.LANG).lookup_phonemes
    plan = lookup.phonemizer.db_conn.execute(
        "EXPLAIN QUERY PLAN SELECT role, phonemes FROM word_phonemes WHERE word = ?"
        " ORDER BY pron_order",
        ("sunny",),
    ).fetchall()
    assert any("USING INDEX" in str(row) for row in plan), plan


def test_tiny_voice_speaks_through_the_engine(monkeypatch, tiny_models: Path) -> None:
    """Guards the backend end to end on a real ONNX graph: load through the chain, audio of a
    plausible length at the json's sample rate, one voice and a clear error for another."""
    configure(monkeypatch, TTS_BACKEND="piper", TTS_MODEL_NAME=str(tiny_models / "piper"))
    tts = LocalTTS()
    assert (tts.backend, tts.device, tts.sample_rate) == ("piper", "cpu", RATE)
    chosen = tts.report.chosen
    assert chosen is not None and chosen.strategy.startswith("piper ")
    rate, audio = tts.synthesize("Hello there, how are you today?")
    assert rate == RATE and audio.dtype == np.float32 and np.isfinite(audio).all()
    assert 0.8 < len(audio) / rate < 6.0, len(audio) / rate
    assert [v.id for v in tts.voices()] == ["default"]
    assert tts.describe()["backend"] == "piper"
    with pytest.raises(UnknownVoiceError, match="default"):
        tts.synthesize("Hello.", voice="nobody")
    # Its threads sleep between runs: spinning, they slowed the LLM's next tokens by 20 %.
    options = tts._backend.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_auto_on_cpu_picks_piper_from_local_models(
    monkeypatch, tiny_models: Path, tmp_path: Path
) -> None:
    """Guards the CPU default: auto skips Dia2 (with the reason) and loads the Piper voice from
    LOCAL_MODELS_DIR laid out like the Hub repo, offline; prefetch would name the same ref."""
    local_piper(monkeypatch, tiny_models, tmp_path)
    configure(monkeypatch, TTS_BACKEND="auto")
    tts = LocalTTS()
    assert tts.report.attempts[0].outcome == "skipped"
    assert tts.report.attempts[0].reason == CPU_REASON
    assert tts.backend == "piper" and tts.model_id == DEFAULT_PIPER
    assert tts.report.source == "local_models_dir"
    assert configured_models(get_settings(), cuda_available=False)["tts"] == DEFAULT_PIPER
    assert detect_backend(DEFAULT_PIPER, get_settings()) == "piper"


def test_missing_piper_falls_back_to_vits(monkeypatch, tiny_models: Path, tmp_path: Path) -> None:
    """Guards the fallback order: no Piper voice here (offline) -> VITS, the reason recorded."""
    models = tmp_path / "local-models"
    shutil.copytree(tiny_models / "vits", models / "mms-tts-eng")
    configure(monkeypatch, TTS_BACKEND="auto", LOCAL_MODELS_DIR=str(models))
    tts = LocalTTS()
    names = [a.strategy.split()[0] for a in tts.report.attempts]
    assert names == ["dia2", "piper", "vits"] and tts.backend == "vits"
    assert "prefetch" in (tts.report.attempts[1].error or "")


def test_a_folder_inside_a_hub_repo_resolves_and_downloads_alone(
    monkeypatch, tiny_models: Path, tmp_path: Path
) -> None:
    """Guards `prefetch` for Piper: a ref naming a folder of rhasspy/piper-voices downloads only
    that folder's files (the .onnx and .onnx.json, not the whole repo) and resolves to it."""
    import huggingface_hub

    cache = tmp_path / "hub"
    snapshot = cache / "snap"
    calls: list[tuple[str, list[str]]] = []

    def fake_download(repo_id: str, cache_dir: str, allow_patterns: list[str]) -> str:
        calls.append((repo_id, allow_patterns))
        shutil.copytree(tiny_models / "piper", snapshot / VOICE_FOLDER)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("LOCAL_MODELS_DIR", str(tmp_path / "none"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_OFFLINE", "HF_FORCE_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    found = ensure_model_exists(DEFAULT_PIPER, get_settings(), required_files=())
    assert found.path == snapshot / VOICE_FOLDER and found.source == "hub"
    ((repo, patterns),) = calls
    assert repo == "rhasspy/piper-voices"
    assert all(p.startswith(f"{VOICE_FOLDER}/") for p in patterns)
    assert {f"{VOICE_FOLDER}/*.onnx", f"{VOICE_FOLDER}/*.json"} <= set(patterns)


def test_streamed_phrases_join_with_natural_pauses(monkeypatch, tiny_models: Path) -> None:
    """Guards natural joins: a clause cut early gets a short break after its comma, a sentence a
    full breath, and the text of each phrase reaches the voice with its punctuation."""
    configure(monkeypatch, TTS_BACKEND="piper", TTS_MODEL_NAME=str(tiny_models / "piper"))
    tts = LocalTTS()
    backend = tts._backend
    monkeypatch.setattr(backend, "scales", np.array([0.0, 1.0, 0.0], dtype=np.float32))
    from voice_agent.tts.text.chunking import Phrasing

    text = "First of all, I think we can do that today. Then we go home."
    phrasing = Phrasing("sentence", first_phrase_words=8)
    chunks = [
        c for c in tts.stream(iter(w + " " for w in text.split()), phrasing=phrasing) if not c.final
    ]
    assert [c.text for c in chunks] == [
        "First of all,",
        "I think we can do that today.",
        "Then we go home.",
    ]
    pieces = [c.text for c in chunks]
    for previous, chunk in zip(pieces, chunks[1:], strict=False):
        # The pause goes before the phrase: after a comma short, after a full stop a breath.
        bare = len(backend.synthesize(chunk.text))
        pause = SENTENCE_PAUSE_MS if previous.endswith(".") else CLAUSE_PAUSE_MS
        assert len(chunk.samples) - bare == int(RATE * pause / 1000)


def test_speak_backend_piper_writes_a_wav(monkeypatch, tiny_models: Path, tmp_path: Path) -> None:
    """Guards `speak --backend piper`: the choice exists and writes a WAV at the voice's rate."""
    from voice_agent.cli.speak import main

    configure(monkeypatch)
    out = tmp_path / "out.wav"
    argv = [
        "Hi there.",
        "-o",
        str(out),
        "--backend",
        "piper",
        "--model",
        str(tiny_models / "piper"),
    ]
    assert main(argv) == 0
    with wave.open(str(out)) as wav:
        assert wav.getframerate() == RATE and wav.getnframes() > 0


def test_the_piper_voice_over_the_rest_api(monkeypatch, tiny_models: Path) -> None:
    """The CPU default voice is served like the others: `/v1/audio/voices` lists its voice,
    `/health` names the backend and voice, `/v1/audio/speech` speaks at the voice's rate,
    and the official OpenAI client gets the audio (a real server on loopback)."""
    import httpx
    from openai import OpenAI

    from tests.fakes import fake_models
    from voice_agent.server.app import create_app
    from voice_agent.testing.server import LiveServer

    configure(monkeypatch, TTS_BACKEND="piper", TTS_MODEL_NAME=str(tiny_models / "piper"))
    models = fake_models(tts=LocalTTS())
    with LiveServer(create_app(models, get_settings())) as live:
        voices = httpx.get(live.url + "/v1/audio/voices", timeout=30).json()
        assert [v["id"] for v in voices["data"]] == ["default"], voices
        assert "Piper voice" in voices["data"][0]["description"]
        health = httpx.get(live.url + "/health", timeout=30).json()
        tts = health["models"]["tts"]
        assert tts["status"] == "ready" and tts["backend"] == "piper", tts
        assert tts["report"]["chosen"]["strategy"].startswith("piper ")
        client = OpenAI(base_url=live.url + "/v1", api_key="unused")
        speech = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.")
        with wave.open(__import__("io").BytesIO(speech.read())) as w:
            assert w.getframerate() == RATE and w.getnframes() > RATE // 4
