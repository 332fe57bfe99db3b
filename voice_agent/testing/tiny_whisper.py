"""Random-weight Whisper checkpoints with a working processor, built offline in seconds.

`build(dir)` writes the tiny model the tests load through the real engine;
`build_shaped(dir, "base" | "small")` writes models with the real Whisper
dimensions for the benchmark (random weights: the speed is real, the text is
not). The tokenizer is a byte-level BPE trained here on a few sentences, laid
out like the real Whisper vocabulary: text tokens, `<|endoftext|>`,
`<|startoftranscript|>`, one token per language, the task tokens,
`<|notimestamps|>`, then 1501 timestamp tokens `<|0.00|>` .. `<|30.00|>`. With
`text_tokens=50257` (or 50256 for English-only) the ids match OpenAI's exactly.
`build_ctc(dir)` writes a tiny wav2vec2 CTC model: a speech recogniser that
only the pipeline strategy can load (used to test the loading fallback).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SAMPLE_RATE = 16_000
N_TIMESTAMPS = 1501  # 0.00 .. 30.00 s in 0.02 s steps
MAX_TARGET_POSITIONS = 448
TINY_MAX_LENGTH = 16  # tokens: keeps test decoding fast
CORPUS = (
    "Hello there. What is the weather like today?",
    "The quick brown fox jumps over the lazy dog.",
    "Speech to text, then a reply, then speech again.",
    "one two three four five six seven eight nine ten",
)


@dataclass(frozen=True)
class Shape:
    """Transformer dimensions of a Whisper size."""

    d_model: int
    layers: int  # encoder layers (and decoder layers unless `decoder_layers` is set)
    heads: int
    ffn: int
    decoder_layers: int | None = None
    mels: int = 80


SHAPES: dict[str, Shape] = {
    "tiny-test": Shape(d_model=64, layers=2, heads=4, ffn=128),
    "tiny": Shape(d_model=384, layers=4, heads=6, ffn=1536),
    "base": Shape(d_model=512, layers=6, heads=8, ffn=2048),
    "small": Shape(d_model=768, layers=12, heads=12, ffn=3072),
    "large-v3-turbo": Shape(
        d_model=1280, layers=32, heads=20, ffn=5120, decoder_layers=4, mels=128
    ),
}


def _languages(count: int) -> list[str]:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    # LANGUAGES is in Whisper's token order (en, zh, de, ...); v1/v2 models have 99, v3 has 100.
    return list(LANGUAGES)[:count]


def special_tokens(languages: list[str]) -> list[str]:
    """Whisper's special tokens in id order, starting with `<|endoftext|>`."""
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in languages],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nocaptions|>",
        "<|notimestamps|>",
    ]


def _train_bpe(text_tokens: int | None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocab, padded with unused fillers to `text_tokens` entries if given."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=min(text_tokens or 600, 600),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(CORPUS) * 4, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    # Fillers keep the special-token ids where real checkpoints have them; BPE never emits them.
    for i in range(len(vocab), text_tokens or 0):
        vocab[f"<|unused{i}|>"] = i
    if text_tokens is not None and len(vocab) != text_tokens:
        raise ValueError(f"trained {len(vocab)} tokens, more than the {text_tokens} asked for")
    return vocab, merges


def build_processor(out_dir: Path, *, text_tokens: int | None, languages: int = 99, mels: int = 80):
    """Write a WhisperProcessor (tokenizer + log-mel feature extractor) to `out_dir`."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    vocab, merges = _train_bpe(text_tokens)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges)
    specials = special_tokens(_languages(languages))
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    # Timestamps are ordinary added tokens, right after the last special one (the
    # tokenizer finds them as `all_special_ids[-1] + 1`).
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(N_TIMESTAMPS)])
    expected = len(vocab) + len(specials) + N_TIMESTAMPS
    if len(tokenizer) != expected:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, expected {expected}")
    features = WhisperFeatureExtractor(
        feature_size=mels, sampling_rate=SAMPLE_RATE, hop_length=160, chunk_length=30, n_fft=400
    )
    processor = WhisperProcessor(feature_extractor=features, tokenizer=tokenizer)
    processor.save_pretrained(out_dir)
    return processor


def build_whisper(
    out_dir: str | Path,
    shape: Shape,
    *,
    text_tokens: int | None,
    multilingual: bool = True,
    languages: int = 99,
    seed: int = 0,
    max_length: int = MAX_TARGET_POSITIONS,
) -> Path:
    """Write a random-weight Whisper with `shape`, its processor and generation config."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_processor(out, text_tokens=text_tokens, languages=languages, mels=shape.mels)
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in special_tokens(_languages(languages))}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    decoder_layers = shape.decoder_layers or shape.layers
    space = tok.convert_tokens_to_ids("Ġ")
    config = WhisperConfig(
        vocab_size=len(tok),
        num_mel_bins=shape.mels,
        d_model=shape.d_model,
        encoder_layers=shape.layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=shape.heads,
        decoder_attention_heads=shape.heads,
        encoder_ffn_dim=shape.ffn,
        decoder_ffn_dim=shape.ffn,
        max_source_positions=1500,
        max_target_positions=MAX_TARGET_POSITIONS,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    _steer_logits(model, tok, eot)
    generation = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=max_length,
        begin_suppress_tokens=[space, eot],
        suppress_tokens=[],
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50,
        return_timestamps=False,
        is_multilingual=multilingual,
        # Cross-attention heads used for word timestamps (the last decoder layer's).
        alignment_heads=[[decoder_layers - 1, h] for h in range(min(2, shape.heads))],
    )
    if multilingual:
        generation.lang_to_id = {f"<|{c}|>": ids[f"<|{c}|>"] for c in _languages(languages)}
        generation.task_to_id = {
            "translate": ids["<|translate|>"],
            "transcribe": ids["<|transcribe|>"],
        }
    model.generation_config = generation
    model.save_pretrained(out)
    return out


def _steer_logits(model, tokenizer, eot: int) -> None:
    """Make a random model emit readable text, `<|endoftext|>` and no timestamps.

    The output projection is tied to the token embeddings and has no bias, so we
    give it one: hidden unit 0 leaves the decoder's final layer norm as a constant
    1, and embedding column 0 becomes each token's logit offset. Prompt, timestamp
    and unreadable byte tokens get -20 (never chosen unless forced); the rest 0.
    Without this a random model prefers timestamp tokens, and Whisper's long-form
    loop then advances by 0.02 s per segment.
    """
    import re

    import torch

    readable = re.compile(r"^ ?[A-Za-z][a-z]*[.,?!]?$|^[.,?!]$")
    weight = model.model.decoder.embed_tokens.weight
    with torch.no_grad():
        norm = model.model.decoder.layer_norm
        norm.weight[0] = 0.0
        norm.bias[0] = 1.0
        offset = torch.full((weight.shape[0],), -20.0)
        for token in range(eot):
            if readable.match(tokenizer.decode([token])):
                offset[token] = 0.0
        offset[eot] = 0.0
        weight[:, 0] = offset


def build(out_dir: Path) -> Path:
    """The tiny multilingual Whisper used by the tests (d_model 64, 2+2 layers, ~1 MB).

    Its generation config stops at 16 tokens so tests decode quickly.
    """
    return build_whisper(
        out_dir, SHAPES["tiny-test"], text_tokens=None, languages=100, max_length=TINY_MAX_LENGTH
    )


def build_english(out_dir: Path) -> Path:
    """The tiny English-only variant (no language tokens in its generation config)."""
    return build_whisper(
        out_dir,
        SHAPES["tiny-test"],
        text_tokens=None,
        multilingual=False,
        languages=99,
        max_length=TINY_MAX_LENGTH,
    )


def build_shaped(
    out_dir: Path,
    size: Literal["tiny", "base", "small", "large-v3-turbo"],
    *,
    english_only: bool = True,
) -> Path:
    """A random-weight model with the real dimensions and vocabulary size of `whisper-SIZE[.en]`.

    Parameter counts: tiny 37.8 M, base 72.6 M, small 241.7 M (OpenAI: 39, 74, 244 M
    counting the encoder's fixed positional table).
    """
    v3 = size.startswith("large-v3")  # v3 added Cantonese: 100 languages, 128 mel bins
    english_only = english_only and not v3  # there is no English-only v3
    return build_whisper(
        out_dir,
        SHAPES[size],
        text_tokens=50256 if english_only else 50257,
        multilingual=not english_only,
        languages=100 if v3 else 99,
    )


def build_ctc(out_dir: Path) -> Path:
    """A tiny wav2vec2 CTC recogniser: not Whisper, so only the pipeline strategy loads it."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    letters = ["<pad>", "<unk>", "|", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ'"]
    (out / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(letters)}))
    tokenizer = Wav2Vec2CTCTokenizer(
        str(out / "vocab.json"), bos_token=None, eos_token=None, word_delimiter_token="|"
    )
    features = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True
    )
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out)
    config = Wav2Vec2Config(
        vocab_size=len(letters),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        pad_token_id=0,
        ctc_loss_reduction="mean",
    )
    torch.manual_seed(0)
    Wav2Vec2ForCTC(config).eval().save_pretrained(out)
    return out
