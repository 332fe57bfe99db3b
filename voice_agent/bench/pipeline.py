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

Tools (what a tool call adds to the time to first audio): the same turn with the
built-in tools in the prompt and the model answering at once ("tools offered");
with one call first (`current_time`, scripted as the model writes it: a
`<tool_call>` block, one token per piece of `call_pieces(TOOL_CALL)`), then the
same answer ("one tool call"); and with a tool that takes `SLOW_TOOL_S`, so the
filler is said first ("slow tool"). `answer_audio` is the answer's first sound, `first_audio` whatever
came first (the filler's); `tool_call_extra_s` = answer audio with a call minus
first audio without tools. The rows without tools run with the session's tools
off, as before tools existed. With tools, the engine really renders them into the
prompt (the checkpoint keeps the shape's 32768-token context: the test tokenizer's
512 would not hold them, and the turn would answer without tools), and the scripted
call goes through the engine's tool-call parser, so the agent runs it and then the
answer round.

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

import itertools
import math
import os
import re
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voice_agent.testing.tiny_llm import QwenSize

REPLY = (
    "It looks sunny this afternoon, with a light breeze from the west and a high of twenty "
    "one degrees. There is a small chance of rain later this evening, so you might want to "
    "take an umbrella if you go out. Tomorrow should be dry, a little warmer, and perfect "
    "for a long walk in the park."
)
STT_TOKENS = 16
PROMPT_NOTE = "the user's turn is assets/hello.wav (3.4 s)"
TOOL_CALL = '<tool_call>\n{"name": "current_time", "arguments": {}}\n</tool_call>'
SLOW_TOOL_CALL = (
    '<tool_call>\n{"name": "slow_lookup", "arguments": {"city": "Paris"}}\n</tool_call>'
)
SLOW_TOOL_S = 1.5
TINY_CONTEXT = 4096  # `build_llm(tiny=True)`: room for the tools' prompt


def reply_pieces(text: str = REPLY) -> list[str]:
    """Words (with their leading space) and punctuation marks, as a tokenizer streams them."""
    return re.findall(r"\s?\w+|[^\w\s]", text)


def call_pieces(call: str) -> list[str]:
    """A tool call as a tokenizer streams it: `<tool_call>` whole (one token in Qwen2.5), then
    words, punctuation and the JSON's symbols."""
    head, body, tail = call.partition("\n")[0], call.split("\n")[1], call.rpartition("\n")[2]
    return [head, "\n", *re.findall(r"\s?\w+|[^\w\s]", body), "\n", tail]


class ScriptedLLM:
    """Wraps an LLM engine: generated token k is shown as piece k of a fixed reply.

    The engine runs the request as asked (tools included, so their prompt is really
    prefilled) for exactly as many tokens as the script has pieces: the model stops
    where its text ends, as a real one would.

    `call`: the pieces of a tool call the model writes first, when it is given tools and
    has no tool result yet (None: it always answers). Tool calls in the script are parsed
    by the engine's own parser (`with_tool_calls`), as the model's would be.
    """

    def __init__(self, llm: Any, pieces: list[str], call: list[str] | None = None) -> None:
        self._llm = llm
        self.pieces = pieces
        self.call = call

    def __getattr__(self, name: str) -> Any:
        # Everything else is the engine's: `model_id`, `report`, `capabilities`,
        # `reuse_prompt_cache` (so `Agent.prime` primes it), `count_tokens`, ...
        if name == "_llm":  # not set yet (a copy being made): no endless lookup
            raise AttributeError(name)
        return getattr(self._llm, name)

    def script_for(self, messages: Any, tools: Any, tool_choice: str = "auto") -> list[str]:
        """What the model writes: the call, while it has tools and no tool result to
        answer from yet; the reply otherwise."""
        offered = bool(tools) and tool_choice != "none"
        last = messages[-1] if isinstance(messages, list) and messages else None
        answering = isinstance(last, dict) and last.get("role") == "tool"
        return self.call if self.call and offered and not answering else self.pieces

    def _script(self, stream: Any, generated: Iterator[str], script: list[str]) -> Iterator[str]:
        said: list[str] = []
        try:
            for k, _ in enumerate(generated):
                if k < len(script):  # beyond it (never, at max_new_tokens): said nothing
                    said.append(script[k])
                    yield script[k]
        finally:
            close = getattr(generated, "close", None)
            if callable(close):
                close()
        if stream.reply is not None:
            stream.reply.text = "".join(said)

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
        from voice_agent.llm.base import GenerationSettings
        from voice_agent.llm.tool_calls import with_tool_calls

        script = self.script_for(messages, tools, tool_choice)
        gen = settings or GenerationSettings()
        gen = replace(gen, max_new_tokens=min(gen.max_new_tokens, len(script)))
        stream = self._llm.stream_reply(
            messages, gen, cancel, system_prompt, tools=tools, tool_choice=tool_choice
        )
        # The engine's own tool-call filter has passed the random tokens one per piece
        # (`build_llm` silences any that could open a call); the script's text is what the
        # model says, so its calls go through the same parser.
        stream.pieces = self._script(stream, iter(stream.pieces), script)
        if tools and tool_choice != "none":
            with_tool_calls(stream)
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
        return self.stream_reply(
            messages, settings, cancel, system_prompt, tools=tools, tool_choice=tool_choice
        ).collect()


# What the user asks in the voice bench, read on as one stream of words: each turn's words
# differ, so no turn finds them already in the LLM's kept prompt cache.
QUESTIONS = (
    "What will the weather be like this afternoon?",
    "Is it going to rain in the city later today?",
    "How warm will it be when I go out tonight?",
    "Should I take an umbrella for my walk today?",
    "Will it be sunny enough for the park tomorrow?",
)
WORDS_PER_S = 2.5  # a conversational rate, 150 words a minute: hello.wav's 3.4 s hold 9
# What a recogniser's tokenizer makes of an English word (its ~32-50k-piece BPE), on average.
TOKENS_PER_WORD = 1.3


def decode_tokens(seconds: float, cap: int = STT_TOKENS) -> int:
    """Tokens a recogniser writes for `seconds` of speech at `WORDS_PER_S`: the words'
    (`TOKENS_PER_WORD`) and the end token; at most `cap` (the bench models' length)."""
    return max(1, min(cap, math.ceil(WORDS_PER_S * seconds * TOKENS_PER_WORD) + 1))


class ScriptedSTT:
    """Wraps a speech recogniser: each transcription runs the model on the audio as asked,
    and its text is the next words of `texts`, as many as that much speech holds
    (`WORDS_PER_S`).

    A random model writes random tokens: some 200 characters for a 3.4 s clip, which the
    LLM's tokenizer made about 150 tokens, ten times a spoken question's. Their prefill
    (about 10 ms a token on 2 cores) would then be most of the turn, and differ from turn
    to turn with whatever the model happened to write. The words follow the audio's length
    so that a turn heard in two stretches (`pipeline.hear.EarlyHearing`: the words before
    a pause, then the rest) says about as many words as the turn heard whole.

    The model decodes as many tokens as a real one writes for those words (`decode_tokens`:
    `TOKENS_PER_WORD` each and the end token), where a random one would run on to the
    engine's cap (6.5 tokens a second of audio for Moonshine, twice what speech holds).
    Audio longer than the engine's window (30 s) gets that count in each window: the
    bench's turns are a few seconds long.
    """

    def __init__(self, stt: Any, texts: tuple[str, ...] = QUESTIONS) -> None:
        self._stt = stt
        self.texts = texts
        self._words = itertools.cycle(" ".join(texts).split())
        self._heard_s = 0.0  # speech transcribed so far, and the words said for it
        self._said = 0
        if callable(inner := getattr(stt, "decode", None)):
            from voice_agent.audio.io import SAMPLE_RATE  # what an engine's decode takes

            # The engine's transcriptions call its own `decode`: the length goes in there.
            def decode(samples: Any, *args: Any, generate_kwargs: Any = None, **kw: Any) -> Any:
                if generate_kwargs is None:  # a call that sets its own length keeps it
                    n = decode_tokens(len(samples) / SAMPLE_RATE)
                    generate_kwargs = {"min_new_tokens": n, "max_new_tokens": n}
                return inner(samples, *args, generate_kwargs=generate_kwargs, **kw)

            stt.decode = decode

    def __getattr__(self, name: str) -> Any:
        if name == "_stt":  # not set yet (a copy being made): no endless lookup
            raise AttributeError(name)
        return getattr(self._stt, name)

    def _scripted(self, transcript: Any) -> Any:
        if not transcript.text.strip():  # it heard nothing: nothing is said
            return transcript
        # Counted over everything heard, so that stretches add up to the whole: two 1.3 s
        # stretches say 3 + 4 words, as 2.6 s heard at once says 7.
        self._heard_s += transcript.duration_s
        n = max(1, int(WORDS_PER_S * self._heard_s + 0.5) - self._said)
        self._said += n
        return replace(transcript, text=" ".join(next(self._words) for _ in range(n)))

    def transcribe(self, audio: Any, language: str | None = None) -> Any:
        return self._scripted(self._stt.transcribe(audio, language))

    def transcribe_words(self, audio: Any, language: str | None = None) -> Any:
        return self._scripted(self._stt.transcribe_words(audio, language))


def build_llm(out_dir: Path, *, tiny: bool = False, size: QwenSize = "0.5B") -> Path:
    """Qwen2.5-`size` shapes, an English-trained tokenizer, and only its words ever chosen.

    The tokenizer (`build_tokenizer(english=True)`) makes prompts about as long in tokens
    as Qwen2.5's own (the built-in tools: about 1,100), so decoding runs at the real
    context length. `tiny`: the test model's two small layers and the tiny test tokenizer
    instead (for tests of the bench itself). The context is the shape's (the tokenizer's
    own 512 would leave the tools out).
    """
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    from voice_agent.testing.tiny_llm import (
        EOS,
        PAD,
        SPECIAL_TOKENS,
        build_shaped_model,
        build_tokenizer,
        tiny_config,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(english=not tiny)
    if tiny:
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(tiny_config(len(tokenizer), max_position_embeddings=TINY_CONTEXT))
    else:
        model = build_shaped_model(size, "bfloat16")
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.save_pretrained(out_dir)
    eos_id, pad_id = tokenizer.convert_tokens_to_ids(EOS), tokenizer.convert_tokens_to_ids(PAD)
    # Silence special tokens, ids the tokenizer does not have, and byte tokens that are not
    # text on their own (the streamer would hold them back, merging pieces).
    # ... and any that could open a tool call ("<", "{", "[", "`"), so the engine's tool-call
    # filter always passes one generated token as one piece.
    partial = [
        i
        for i in range(len(tokenizer))
        if not (piece := tokenizer.decode([i])).strip()
        or "\ufffd" in piece
        or not piece.isprintable()
        or any(c in piece for c in "<{[`")
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
    from voice_agent.tools import Toolbox
    from voice_agent.tools.schema import tool_from_function
    from voice_agent.tools.toolbox import builtin_tools

    def slow_lookup(city: str) -> str:
        """The weather in a city (a slow service)."""
        time.sleep(SLOW_TOOL_S)
        return f"sunny in {city}"

    repeats = 2 if quick else 5
    clip = load_audio(str(REPO_ROOT / "assets" / "hello.wav"))
    speech = (SAMPLE_RATE, clip)
    pieces = reply_pieces()
    calls = {"one tool call": call_pieces(TOOL_CALL), "slow tool": call_pieces(SLOW_TOOL_CALL)}
    longest = max(len(pieces), *(len(c) for c in calls.values()))
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
            "MCP_SERVERS": "",
            "TOOLS_MODULES": "",
        }
        t0 = time.perf_counter()
        models = LoadedModels(load_settings(env)).load_all()
        load_s = time.perf_counter() - t0
        if not models.ready():
            return {"rows": [], "notes": f"models did not load: {models.errors}", "error": True}
        engine: Any = models.llm
        llm = models.llm = ScriptedLLM(engine, pieces)
        stt, tts = models.require("stt"), models.require("tts")
        toolbox = Toolbox([*builtin_tools(), tool_from_function(slow_lookup)])
        agent = Agent(models, tools=toolbox)

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

        by_sentence = Agent(models, first_phrase_words=0, tools=toolbox)

        def streaming(
            engine: Agent = agent, tools: bool = False, call: list[str] | None = None
        ) -> dict[str, Any]:
            llm.call = call
            session = engine.new_session(generation=generation, tools=tools)
            if call is not None:  # the call's JSON needs its own tokens
                session.generation = GenerationSettings(temperature=0.0, max_new_tokens=longest)
            events = list(engine.run_turn(session, audio=speech))
            done = events[-1]
            assert done.kind == "done", [e.text for e in events if e.kind == "error"]
            t = done.timings
            assert t is not None and t.first_token is not None
            assert t.tool_calls == (1 if call else 0), t
            assert done.text.strip() == "".join(pieces).strip()
            answer_audio = t.answer_audio if call else t.first_audio
            return {
                "transcript_ready": t.transcript_ready,
                "first_token": t.first_token,
                "reply_done": (t.answer_token or t.first_token) + (t.llm_s or 0.0),
                "first_audio": t.first_audio,
                "answer_audio": answer_audio,
                "filler_at": t.filler_at,
                "tool_s": t.tool_s,
                "total": t.total,
                "reply_tokens": len(pieces),
                "audio_s": t.audio_s,
            }

        def prompt_tokens(tools: bool) -> int:
            user = [{"role": "user", "content": "What is the weather like?"}]
            specs = toolbox.specs() if tools else None
            return engine.count_tokens(user, tools=specs)

        runs: dict[str, list[dict[str, Any]]] = {
            "sequential": [],
            "streaming": [],
            "streaming, whole sentences": [],
            "streaming, tools offered": [],
            "streaming, one tool call": [],
            "streaming, slow tool (filler)": [],
        }
        turns = {
            "sequential": sequential,
            "streaming": streaming,
            "streaming, whole sentences": lambda: streaming(by_sentence),
            "streaming, tools offered": lambda: streaming(tools=True),
            "streaming, one tool call": lambda: streaming(tools=True, call=calls["one tool call"]),
            "streaming, slow tool (filler)": lambda: streaming(tools=True, call=calls["slow tool"]),
        }
        sequential(), streaming(), streaming(tools=True)  # warm-up: first-call costs
        for _ in range(repeats):
            for name, turn in turns.items():
                runs[name].append(turn())
        tokens = {"without tools": prompt_tokens(False), "with tools": prompt_tokens(True)}

    rows = []
    for name, results in runs.items():
        row: dict[str, Any] = {"pipeline": name, "repeats": len(results)}
        for key in (
            "transcript_ready",
            "first_token",
            "reply_done",
            "first_audio",
            "answer_audio",
            "filler_at",
            "tool_s",
            "total",
            "audio_s",
        ):
            values = [r[key] for r in results if r.get(key) is not None]
            name_s = f"{key}_s" if not key.endswith("_s") else key
            row[name_s] = round(statistics.median(values), 3) if values else None
        rows.append(row)
    by_name = {row["pipeline"]: row for row in rows}
    speedup = by_name["sequential"]["first_audio_s"] / by_name["streaming"]["first_audio_s"]
    base = by_name["streaming"]["first_audio_s"]
    return {
        "rows": rows,
        "first_audio_speedup": round(speedup, 2),
        "tool_prompt_extra_s": round(
            by_name["streaming, tools offered"]["first_audio_s"] - base, 3
        ),
        "tool_call_extra_s": round(by_name["streaming, one tool call"]["answer_audio_s"] - base, 3),
        "slow_tool_filler_s": by_name["streaming, slow tool (filler)"]["first_audio_s"],
        "slow_tool_answer_extra_s": round(
            by_name["streaming, slow tool (filler)"]["answer_audio_s"] - base, 3
        ),
        "prompt_tokens": tokens,
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
            "Tool rows: the built-in tools in the prompt (the test tokenizer makes them "
            f"{tokens['with tools'] - tokens['without tools']} tokens; Qwen2.5's own tokenizer "
            "makes about a third of that); 'one tool call' writes a current_time call "
            f"({len(calls['one tool call'])} tokens) before the same answer; 'slow tool' calls a "
            f"tool that takes {SLOW_TOOL_S:g} s, so 'One moment.' is said after 1 s. "
            "Medians of alternating runs in one process after one warm-up each."
        ),
    }
