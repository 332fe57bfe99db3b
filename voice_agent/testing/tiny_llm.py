"""Tiny random Qwen2 checkpoints for tests and benchmarks, built offline in about a second.

`build(out_dir)` writes a complete checkpoint the real loading code reads as if it came
from the hub: `config.json`, `model.safetensors`, `generation_config.json` and a real
byte-level BPE tokenizer (trained here on the English text below, deterministically) with
Qwen's special tokens and Qwen2.5's chat template (tools included).

The tiny model never chooses a special token under greedy decoding (their output rows are
zero while every other logit is random), so a test's generation always runs until
`max_new_tokens`, a stop string or a cancel: lengths are predictable.

`qwen25_config(size)` gives the exact shapes of Qwen2.5-0.5B/1.5B for the benchmark, and
`build_shaped(size, out_dir)` writes such a model with random weights and an English-trained
tokenizer (`build_tokenizer(english=True)`), so its prompts are about as long as the real one's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS = "<|im_end|>"
PAD = "<|endoftext|>"
BPE_VOCAB_SIZE = 512  # 256 byte symbols + merges; the specials come on top
# Benchmark-shaped models: enough merges that most English words are one token, as in
# Qwen2.5's 151k vocabulary (the built-in tool list is ~1,100 tokens with it, 2,340 with
# the tiny one; by its 3,207 characters, Qwen2.5's own makes roughly 900-1,000).
ENGLISH_VOCAB_SIZE = 50_000
TINY_CONTEXT = 512  # small so history-trimming tests are cheap

# Qwen2.5-Instruct's chat template (tokenizer_config.json of the Qwen2.5 instruct models),
# tools included, with a shorter default system message: ChatML; with `tools`, the tool
# schemas in the system message and calls as <tool_call> JSON blocks; tool results as
# <tool_response> blocks in a user turn.
QWEN25_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    '{{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.'
    '\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}'
    '{%- for tool in tools %}{{- "\n" }}{{- tool | tojson }}{%- endfor %}'
    '{{- "\n</tools>\n\nFor each function call, return a json object with function name and '
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\n</tool_call><|im_end|>\n" }}'
    "{%- else %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- for message in messages %}"
    '{%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}'
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}"
    '{%- elif message.role == "assistant" %}'
    "{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\n<tool_call>\n{"name": "\' }}{{- tool_call.name }}{{- \'", "arguments": \' }}'
    "{{- tool_call.arguments | tojson }}{{- '}\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\n' }}"
    '{%- elif message.role == "tool" %}'
    '{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}'
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\n<tool_response>\n' }}{{- message.content }}{{- '\n</tool_response>' }}"
    '{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}'
    "{{- '<|im_end|>\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
# The same without tools (plain ChatML), for tests of templates that know no tools.
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{%- for message in loop_messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Training text for the tokenizer: plain conversational English, fixed so the tokenizer
# (and therefore every test's token counts) is the same on every machine.
CORPUS = """\
Hello there. What is the weather like today? It is sunny with a light breeze this morning.
Could you tell me a short story about a lighthouse keeper and a lost ship at sea?
The keeper lit the lamp every night, and one stormy evening a small boat found the harbour.
Please set a timer for ten minutes. Sure, your timer is set for ten minutes starting now.
What time is it in Tokyo? It is nine in the evening there, eight hours ahead of Paris.
I would like a recipe for pancakes. Mix flour, milk, two eggs and a pinch of salt, then fry.
How far away is the moon? About three hundred and eighty four thousand kilometres on average.
Thank you very much for your help. You are welcome, have a wonderful day and talk soon.
Can you explain why the sky is blue? Sunlight scatters off air, and blue light scatters most.
Remind me to call my sister tomorrow at noon. I will remind you tomorrow at twelve o'clock.
The quick brown fox jumps over the lazy dog while the cat sleeps by the warm fire.
Numbers like 1, 2, 3, 42 and 2024 appear in questions about dates, prices and distances.
"""


def english_corpus() -> list[str]:
    """English text for a tokenizer that splits it about as finely as a real one does.

    gruut's English lexicon (its 118k alphabetic words, lower case and capitalised) gives
    the words; Python's own documentation (`pydoc_data`, 0.46 MB of English about code)
    gives how often words and JSON-like punctuation occur. Neither needs the network.
    """
    import pydoc_data.topics
    import sqlite3

    import gruut_lang_en

    db = Path(gruut_lang_en.__file__).parent / "lexicon.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as lexicon:
        rows = lexicon.execute("SELECT DISTINCT word FROM word_phonemes").fetchall()
    words = sorted(w for (w,) in rows if w.isalpha())
    lines = [" ".join(words[i : i + 50]) for i in range(0, len(words), 50)]
    lines += [" ".join(w.capitalize() for w in words[i : i + 50]) for i in range(0, len(words), 50)]
    return lines + list(pydoc_data.topics.topics.values()) + CORPUS.splitlines()


def _train_bpe(
    corpus: list[str] | None = None, vocab_size: int = BPE_VOCAB_SIZE
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE (Qwen's pre-tokenizer) trained on `corpus` (default `CORPUS`):
    (vocab, merges)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus or CORPUS.splitlines(), trainer=trainer)
    state = json.loads(tokenizer.to_str())["model"]
    merges: list[tuple[str, str]] = []
    for merge in state["merges"]:
        first, second = merge.split(" ", 1) if isinstance(merge, str) else merge
        merges.append((first, second))
    return state["vocab"], merges


def build_tokenizer(
    out_dir: Path | None = None, context: int = TINY_CONTEXT, *, english: bool = False
) -> Any:
    """A `Qwen2Tokenizer` with Qwen's special tokens and Qwen2.5's chat template, tools
    included (saved if `out_dir`).

    The default vocabulary is tiny (512 tokens, trained on `CORPUS` in milliseconds), so
    English takes about 3 tokens per word. `english=True` trains `ENGLISH_VOCAB_SIZE`
    tokens on `english_corpus()` (about 6 s) for benchmark-shaped models, whose prompts
    should be about as long in tokens as with Qwen2.5's own tokenizer.
    """
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    if english:
        vocab, merges = _train_bpe(english_corpus(), ENGLISH_VOCAB_SIZE)
    else:
        vocab, merges = _train_bpe()
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(SPECIAL_TOKENS),
        model_max_length=context,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = QWEN25_TEMPLATE
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def tiny_config(vocab_size: int, **overrides: Any) -> Any:
    """A Qwen2 config with two small layers (about 0.1 M parameters)."""
    from transformers import Qwen2Config

    values: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_CONTEXT,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        use_cache=True,
        dtype="float32",
    )
    values.update(overrides)
    return Qwen2Config(**values)


def _silence_special_tokens(model: Any, token_ids: list[int]) -> None:
    """Zero the output rows of special tokens so greedy decoding never picks them."""
    import torch

    with torch.no_grad():
        model.lm_head.weight[token_ids] = 0.0


def build(out_dir: Path, *, seed: int = 0, context: int = TINY_CONTEXT) -> Path:
    """Write a tiny random Qwen2 chat model with a real tokenizer to `out_dir`; returns it.

    Deterministic (same seed, same files) and network-free. `context`: its context length
    (the tools of a turn need about 2,300 of this tokenizer's tokens).
    """
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir, context)
    special_ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    config = tiny_config(
        len(tokenizer),
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        max_position_embeddings=context,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    _silence_special_tokens(model, special_ids)
    model.generation_config = GenerationConfig(
        eos_token_id=[eos_id, pad_id],
        pad_token_id=pad_id,
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        max_new_tokens=64,
    )
    model.save_pretrained(out_dir)
    return out_dir


# --- benchmark-sized models ------------------------------------------------------------------

QwenSize = Literal["0.5B", "1.5B"]

# Shapes from the published Qwen2.5 configs (vocab 151936, tied embeddings, GQA with 2 KV heads).
QWEN25_SHAPES: dict[str, dict[str, int]] = {
    "0.5B": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
    ),
    "1.5B": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
    ),
}
QWEN25_VOCAB = 151936


def qwen25_config(size: QwenSize, **overrides: Any) -> Any:
    """A Qwen2 config with the exact shapes of Qwen2.5-`size` (random weights go in it)."""
    values: dict[str, Any] = dict(
        QWEN25_SHAPES[size],
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
    )
    values.update(overrides)
    return tiny_config(QWEN25_VOCAB, **values)


def build_shaped_model(size: QwenSize, dtype: str = "bfloat16", seed: int = 0) -> Any:
    """A Qwen2.5-`size`-shaped `Qwen2ForCausalLM` with random weights, in memory.

    Built on the meta device and then materialised, so no fp32 copy is made for bf16.
    """
    import torch
    from transformers import Qwen2ForCausalLM

    config = qwen25_config(size)
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    model = model.to_empty(device="cpu").to(getattr(torch, dtype))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, config.initializer_range)
    # The rotary frequencies are buffers computed at construction: rebuild them off meta.
    model.model.rotary_emb = type(model.model.rotary_emb)(config)
    model.tie_weights()  # to_empty() gave lm_head its own tensor; Qwen2.5 shares the embedding
    model.eval()
    return model


def build_shaped(size: QwenSize, out_dir: Path, *, seed: int = 0) -> Path:
    """Write a Qwen2.5-`size`-shaped random checkpoint (bf16, like the hub's) with an
    English-trained tokenizer (`build_tokenizer(english=True)`), so prompts have about the
    real model's length in tokens.

    Token ids above the tokenizer's vocabulary decode to nothing; speed does not
    depend on it, and the engine counts tokens, not characters.
    """
    from transformers import GenerationConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir, english=True)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    model = build_shaped_model(size, "bfloat16", seed)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = pad_id
    model.generation_config = GenerationConfig(eos_token_id=[eos_id, pad_id], pad_token_id=pad_id)
    model.save_pretrained(out_dir)
    del model
    return out_dir
