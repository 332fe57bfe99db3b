"""Random-weight Moonshine checkpoints with a working processor, built offline in a second.

`build(dir)` writes the tiny model the tests load through the real engine;
`build_shaped(dir, "tiny" | "base")` writes models with the real dimensions of
UsefulSensors/moonshine-tiny and moonshine-base for the benchmark (random weights:
the speed is real, the text is not). The processor is what Moonshine checkpoints
ship: a `Wav2Vec2FeatureExtractor` (raw 16 kHz samples, not normalised) and a BPE
tokenizer, trained here on a few sentences, with `<unk>` = 0, `<s>` = 1 (bos and
the decoder start) and `</s>` = 2 (eos and padding) as in the real vocabulary; the
shaped models pad it with unused fillers to the real 32768 ids.

The tiny test model's generation config suppresses the three special tokens, so it
never stops early: every decode runs to its token cap, which the tests then see.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from voice_agent.testing.tiny_whisper import CORPUS  # the same few sentences train both

SAMPLE_RATE = 16_000
SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2
UNK, BOS, EOS = 0, 1, 2
VOCAB_SIZE = 32_768  # the real checkpoints' vocabulary


@dataclass(frozen=True)
class Shape:
    """Transformer dimensions of a Moonshine size (encoder and decoder alike)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int  # decoder positions the model was built for
    partial_rotary: float  # share of each head's dimensions that RoPE rotates
    pad_head_dim: int | None  # heads padded to a multiple of this (None: not padded)


# The real sizes, from the checkpoints' config.json (transformers' MoonshineConfig
# defaults are moonshine-tiny's: hidden 288, 6 + 6 layers, 8 heads, intermediate 1152).
SHAPES: dict[str, Shape] = {
    "tiny-test": Shape(64, 2, 4, 128, 194, 0.9, 8),
    "tiny": Shape(288, 6, 8, 1152, 194, 0.9, 8),
    "base": Shape(416, 8, 8, 1664, 512, 0.62, None),
}


def build_tokenizer(text_tokens: int | None) -> object:
    """A fast BPE tokenizer with Moonshine's special ids, padded to `text_tokens` ids if given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trainer = trainers.BpeTrainer(
        vocab_size=min(text_tokens or 400, 400), special_tokens=list(SPECIALS), show_progress=False
    )
    trained = Tokenizer(models.BPE(unk_token=SPECIALS[UNK]))
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    trained.train_from_iterator(list(CORPUS) * 4, trainer)
    model = json.loads(trained.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    # Fillers give the real vocabulary's size; BPE never emits them.
    for i in range(len(vocab), text_tokens or 0):
        vocab[f"<unused{i}>"] = i
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=SPECIALS[UNK]))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=SPECIALS[UNK],
        bos_token=SPECIALS[BOS],
        eos_token=SPECIALS[EOS],
        pad_token=SPECIALS[EOS],
    )
    ids = [fast.convert_tokens_to_ids(t) for t in SPECIALS]
    if ids != [UNK, BOS, EOS]:
        raise ValueError(f"special token ids {ids}, expected {[UNK, BOS, EOS]}")
    return fast


def build_moonshine(
    out_dir: str | Path,
    shape: Shape,
    *,
    text_tokens: int | None,
    suppress_specials: bool = False,
    seed: int = 0,
) -> Path:
    """Write a random-weight Moonshine with `shape`, its processor and generation config."""
    import torch
    from transformers import (
        GenerationConfig,
        MoonshineConfig,
        MoonshineForConditionalGeneration,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Processor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(text_tokens)
    features = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLE_RATE,
        padding_value=0.0,
        do_normalize=False,
        return_attention_mask=True,
    )
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out)
    config = MoonshineConfig(
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        encoder_num_hidden_layers=shape.layers,
        decoder_num_hidden_layers=shape.layers,
        encoder_num_attention_heads=shape.heads,
        decoder_num_attention_heads=shape.heads,
        max_position_embeddings=shape.max_positions,
        pad_head_dim_to_multiple_of=shape.pad_head_dim,
        partial_rotary_factor=shape.partial_rotary,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
        decoder_start_token_id=BOS,
    )
    torch.manual_seed(seed)
    model = MoonshineForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=BOS,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
        max_length=shape.max_positions,
        suppress_tokens=list(range(len(SPECIALS))) if suppress_specials else None,
    )
    model.save_pretrained(out)
    return out


def build(out_dir: Path) -> Path:
    """The tiny Moonshine used by the tests (hidden 64, 2 + 2 layers, about 1 MB).

    It never emits `</s>`, so every decode runs to the engine's token cap.
    """
    return build_moonshine(out_dir, SHAPES["tiny-test"], text_tokens=None, suppress_specials=True)


def build_shaped(
    out_dir: Path, size: Literal["tiny", "base"], *, decode_tokens: int | None = None
) -> Path:
    """A random-weight model with the real dimensions and vocabulary of moonshine-SIZE.

    Parameter counts: tiny 27.1 M, base 61.5 M (Useful Sensors: 27 M and 61 M).

    Args:
        decode_tokens: make every decode exactly this long, for benchmarks that cannot
            force a length: the specials are suppressed and the decoder gets one position
            more, which the engine's cap honours (RoPE keeps no position table, so the
            speed is the real model's).
    """
    shape = SHAPES[size]
    if decode_tokens is not None:
        shape = replace(shape, max_positions=decode_tokens + 1)
    return build_moonshine(
        out_dir, shape, text_tokens=VOCAB_SIZE, suppress_specials=decode_tokens is not None
    )
