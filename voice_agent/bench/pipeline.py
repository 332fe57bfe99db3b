"""Benchmark section `pipeline`: time from end of speech to first audio, streaming vs sequential.

Real-shaped random models loaded through the real engines and cached loader:
a Qwen2.5-0.5B-shaped LLM, a whisper-base.en-shaped Whisper and an
mms-tts-eng-shaped VITS. The user's turn is `assets/hello.wav` (3.4 s).

- **sequential** (what the seed did): transcribe, then the whole reply
  (`generate_reply`), then the whole speech (`synthesize`); first audio is when
  `synthesize` returns.
- **streaming** (`Agent.run_turn`): the reply streams into the TTS on a worker
  thread; first audio is the first `audio` event.

Both run in the same process, alternating, several times; medians are reported,
and `first_audio_speedup` = sequential / streaming. A third row streams whole
sentences only (no early first phrase), to show what that rule buys.

Fixed reply length and real text: random weights would stop anywhere and write
no words, so the LLM's output rows for special tokens and for ids outside the test
tokenizer are zeroed (greedy decoding never ends early) and it always generates
exactly one token per piece of `REPLY` (a 3-sentence spoken answer, split into
words and punctuation: 64 pieces, about what Qwen's tokenizer makes of it). The
benchmark's wrapper (`ScriptedLLM`) hands on piece k of `REPLY` for generated token
k: the LLM's compute per token is real, and the TTS gets real sentences and words.
Whisper's decode is capped at `STT_TOKENS` tokens (about the clip's words).
"""

from __future__ import annotations

import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REPLY = (
    "It looks sunny this afternoon, with a light breeze from the west and a high of twenty "
    "one degrees. There is a small chance of rain later this evening, so you might want to "
    "take an umbrella if you go out. Tomorrow should be dry, a little warmer, and perfect "
    "for a long walk in the park."
)
STT_TOKENS = 16
PROMPT_NOTE = "the user's turn is assets/hello.wav (3.4 s)"


def reply_pieces(text: str = REPLY) -> list[str]:
    """Words (with their leading space) and punctuation marks, as a tokenizer streams them."""
    return re.findall(r"\s?\w+|[^\w\s]", text)


class ScriptedLLM:
    """Wraps an LLM engine: generated token k is shown as piece k of a fixed reply."""

    def __init__(self, llm: Any, pieces: list[str]) -> None:
        self._llm = llm
        self.pieces = pieces
        self.model_id = llm.model_id
        self.report = llm.report
        self.context_length = llm.context_length
        self.capabilities = llm.capabilities

    def _script(self, generated):
        try:
            for k, _ in enumerate(generated):
                if k >= len(self.pieces):
                    break  # the script is said: stop generating for nobody
                yield self.pieces[k]
        finally:
            generated.close()

    def stream_reply(
        self,
        messages,
        settings=None,
        cancel=None,
        system_prompt=None,
        *,
        tools=None,
        tool_choice="auto",
    ):
        stream = self._llm.stream_reply(messages, settings, cancel, system_prompt)
        stream.pieces = self._script(iter(stream.pieces))
        return stream

    def generate_reply(
        self,
        messages,
        settings=None,
        cancel=None,
        system_prompt=None,
        *,
        tools=None,
        tool_choice="auto",
    ):
        stream = self.stream_reply(messages, settings, cancel, system_prompt)
        text = "".join(stream)
        reply = stream.reply
        reply.text = text
        return reply


def build_llm(out_dir: Path) -> Path:
    """Qwen2.5-0.5B shapes, the test tokenizer, and only that tokenizer's words ever chosen."""
    import torch
    from transformers import GenerationConfig

    from voice_agent.testing.tiny_llm import (
        EOS,
        PAD,
        SPECIAL_TOKENS,
        build_shaped_model,
        build_tokenizer,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    eos_id, pad_id = tokenizer.convert_tokens_to_ids(EOS), tokenizer.convert_tokens_to_ids(PAD)
    model = build_shaped_model("0.5B", "bfloat16")
    # Silence special tokens, ids the tokenizer does not have, and byte tokens that are not
    # text on their own (the streamer would hold them back, merging pieces).
    partial = [
        i
        for i in range(len(tokenizer))
        if not (piece := tokenizer.decode([i])).strip()
        or "\ufffd" in piece
        or not piece.isprintable()
    ]
    silenced = [
        *tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)),
        *partial,
        *range(len(tokenizer), model.config.vocab_size),
    ]
    with torch.no_grad():
        # Zero logits sit far below the best of 500 random ones, so greedy decoding
        # never ends early and always emits a word of the test tokenizer.
        model.lm_head.weight[silenced] = 0.0
    model.config.eos_token_id, model.config.pad_token_id = eos_id, pad_id
    model.generation_config = GenerationConfig(eos_token_id=[eos_id, pad_id], pad_token_id=pad_id)
    model.save_pretrained(out_dir)
    return out_dir


def build_models(root: Path) -> dict[str, Path]:
    from voice_agent.testing.tiny_vits import build_shaped as build_vits
    from voice_agent.testing.tiny_whisper import SHAPES, build_whisper

    return {
        "llm": build_llm(root / "llm"),
        "stt": build_whisper(
            root / "stt",
            SHAPES["base"],
            text_tokens=50256,
            multilingual=False,
            languages=99,
            max_length=STT_TOKENS,
        ),
        "tts": build_vits(root / "tts"),
    }


def run(quick: bool = False) -> dict:
    from voice_agent.audio.io import SAMPLE_RATE, load_audio
    from voice_agent.core.config import load_settings
    from voice_agent.llm.base import GenerationSettings
    from voice_agent.pipeline.agent import Agent
    from voice_agent.pipeline.models import LoadedModels
    from voice_agent.testing.paths import REPO_ROOT

    repeats = 2 if quick else 5
    clip = load_audio(str(REPO_ROOT / "assets" / "hello.wav"))
    speech = (SAMPLE_RATE, clip)
    pieces = reply_pieces()
    generation = GenerationSettings(temperature=0.0, max_new_tokens=len(pieces))
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        t0 = time.perf_counter()
        paths = build_models(Path(tmp))
        build_s = time.perf_counter() - t0
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "MODEL_SERVER_MODEL_NAME": str(paths["llm"]),
            "STT_MODEL_NAME": str(paths["stt"]),
            "TTS_BACKEND": "vits",
            "TTS_MODEL_NAME": str(paths["tts"]),
            "LLM_DEVICE": "cpu",
            "WHISPER_DEVICE": "cpu",
            "TTS_DEVICE": "cpu",
        }
        t0 = time.perf_counter()
        models = LoadedModels(load_settings(env)).load_all()
        load_s = time.perf_counter() - t0
        if not models.ready():
            return {"rows": [], "notes": f"models did not load: {models.errors}", "error": True}
        llm = models.llm = ScriptedLLM(models.llm, pieces)
        stt, tts = models.require("stt"), models.require("tts")
        agent = Agent(models)

        def sequential() -> dict[str, float]:
            start = time.perf_counter()
            transcript = stt.transcribe(speech)
            heard = time.perf_counter() - start
            user = [{"role": "user", "content": transcript.text}]
            reply = llm.generate_reply(user, generation)
            replied = time.perf_counter() - start
            rate, audio = tts.synthesize(reply.text)
            done = time.perf_counter() - start
            assert len(audio) and transcript.duration_s > 0
            return {
                "transcript_ready": heard,
                "first_token": heard + (reply.first_token_seconds or 0.0),
                "reply_done": replied,
                "first_audio": done,
                "total": done,
                "reply_tokens": reply.completion_tokens,
                "audio_s": len(audio) / rate,
            }

        by_sentence = Agent(models, first_phrase_words=0)

        def streaming(engine: Agent = agent) -> dict[str, Any]:
            session = engine.new_session(generation=generation)
            events = list(engine.run_turn(session, audio=speech))
            done = events[-1]
            assert done.kind == "done", [e.text for e in events if e.kind == "error"]
            t = done.timings
            assert t is not None and t.first_token is not None
            return {
                "transcript_ready": t.transcript_ready,
                "first_token": t.first_token,
                "reply_done": t.first_token + (t.llm_s or 0.0),
                "first_audio": t.first_audio,
                "total": t.total,
                "reply_tokens": len(pieces),
                "audio_s": t.audio_s,
            }

        runs: dict[str, list[dict[str, float]]] = {
            "sequential": [],
            "streaming": [],
            "streaming, whole sentences": [],
        }
        sequential(), streaming()  # warm-up: first-call costs are not the pipeline's
        for _ in range(repeats):
            runs["sequential"].append(sequential())
            runs["streaming"].append(streaming())
            runs["streaming, whole sentences"].append(streaming(by_sentence))

    rows = []
    for name, results in runs.items():
        row: dict[str, Any] = {"pipeline": name, "repeats": len(results)}
        for key in (
            "transcript_ready",
            "first_token",
            "reply_done",
            "first_audio",
            "total",
            "audio_s",
        ):
            row[f"{key}_s" if not key.endswith("_s") else key] = round(
                statistics.median(r[key] for r in results), 3
            )
        rows.append(row)
    speedup = rows[0]["first_audio_s"] / rows[1]["first_audio_s"]
    return {
        "rows": rows,
        "first_audio_speedup": round(speedup, 2),
        "build_s": round(build_s, 1),
        "load_s": round(load_s, 1),
        "models": {
            "llm": "Qwen2.5-0.5B shape, random weights, " + (models.reports["llm"].summary()),
            "stt": "whisper-base.en shape, random weights, " + models.reports["stt"].summary(),
            "tts": "mms-tts-eng (VITS) shape, random weights, " + models.reports["tts"].summary(),
        },
        "notes": (
            f"End of speech to first audio; {PROMPT_NOTE}; the reply is fixed at {len(pieces)} "
            "tokens of real-shaped LLM compute, shown as a fixed 3-sentence answer (piece k of "
            "the script for generated token k, since random weights write no words); Whisper "
            f"capped at {STT_TOKENS} tokens. "
            "Sequential = transcribe, whole reply, whole speech (the seed). Streaming = "
            "Agent.run_turn: the first phrase (to the first comma here, at most 8 words) is "
            "spoken while the rest is written; 'whole sentences' turns that off "
            "(Agent(first_phrase_words=0)). "
            "Medians of alternating runs in one process after one warm-up each."
        ),
    }
