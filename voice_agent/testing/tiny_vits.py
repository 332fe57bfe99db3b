"""Random-weight TTS checkpoints that load offline in seconds: VITS and Dia.

- `build(dir)`: a tiny `VitsModel` with a working `VitsTokenizer` (our own
  `vocab.json`: the characters of English text), loadable with
  `VitsModel.from_pretrained` / `AutoTokenizer.from_pretrained`.
- `build_shaped(dir)`: the same with facebook/mms-tts-eng's dimensions (36 M
  parameters), for the benchmark: the speed is real, the sound is noise.
- `build_dia(dir)`: a tiny `DiaForConditionalGeneration` with its processor
  files and a tiny `DacModel` audio tokenizer in `dir/dac` (named by
  `processor_config.json`, as the real model names `descript/dac_44khz`).
"""

from __future__ import annotations

import json
from pathlib import Path

# Blank/pad first (VITS interleaves it between characters), then what English text needs.
VITS_CHARS = ["_", " ", "'", "-", ",", ".", "!", "?"] + [chr(c) for c in range(97, 123)]
VITS_CHARS += [str(d) for d in range(10)]
SEED = 7


def _write_vits_tokenizer(out: Path) -> None:
    from transformers import VitsTokenizer

    (out / "vocab.json").write_text(json.dumps({ch: i for i, ch in enumerate(VITS_CHARS)}))
    tokenizer = VitsTokenizer(
        vocab_file=str(out / "vocab.json"),
        pad_token="_",
        unk_token="_",
        language="eng",
        add_blank=True,
        normalize=True,
        phonemize=False,  # MMS English reads characters; no espeak needed
        is_uroman=False,
    )
    tokenizer.save_pretrained(str(out))


def _save_vits(out: Path, **dims: object) -> Path:
    import torch
    from transformers import VitsConfig, VitsModel

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    config = VitsConfig(vocab_size=len(VITS_CHARS), pad_token_id=0, sampling_rate=16_000, **dims)
    VitsModel(config).eval().save_pretrained(str(out))
    _write_vits_tokenizer(out)
    return out


def build(out_dir: Path) -> Path:
    """A tiny random VITS (about 20 k parameters) with tokenizer, in `out_dir`."""
    return _save_vits(
        Path(out_dir),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=32,
        flow_size=16,
        spectrogram_bins=17,
        upsample_initial_channel=16,
        resblock_kernel_sizes=(3,),
        resblock_dilation_sizes=((1,),),
        duration_predictor_filter_channels=16,
        duration_predictor_num_flows=1,
        prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1,
        posterior_encoder_num_wavenet_layers=1,
        depth_separable_num_layers=1,
    )


def build_shaped(out_dir: Path) -> Path:
    """A random VITS with facebook/mms-tts-eng's dimensions (transformers' defaults are MMS's)."""
    return _save_vits(Path(out_dir))


def build_dia(out_dir: Path) -> Path:
    """A tiny random Dia (about 0.6 M parameters) + processor + tiny DAC in `out_dir/dac`."""
    import torch
    from transformers import (
        DacConfig,
        DacModel,
        DiaConfig,
        DiaFeatureExtractor,
        DiaForConditionalGeneration,
        DiaTokenizer,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    # DAC keeps the real 44.1 kHz rate, hop (512) and 9 codebooks of 1024 codes: Dia's
    # delay pattern and special ids (1024..1026) depend on them; only widths shrink.
    dac = DacConfig(
        encoder_hidden_size=4,
        downsampling_ratios=[2, 4, 8, 8],
        decoder_hidden_size=16,
        n_codebooks=9,
        codebook_size=1024,
        codebook_dim=4,
        sampling_rate=44_100,
    )
    DacModel(dac).eval().save_pretrained(str(out / "dac"))
    config = DiaConfig(
        encoder_config={
            "num_hidden_layers": 1,
            "hidden_size": 32,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "intermediate_size": 64,
            "vocab_size": 256,
            "max_position_embeddings": 1024,
        },
        decoder_config={
            "num_hidden_layers": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "cross_num_attention_heads": 2,
            "cross_head_dim": 16,
            "cross_num_key_value_heads": 2,
            "cross_hidden_size": 32,
            "vocab_size": 1028,
            "num_channels": 9,
            # Random weights rarely write the end token: this caps a test utterance at 1.5 s.
            "max_position_embeddings": 128,
        },
        delay_pattern=[0, 8, 9, 10, 11, 12, 13, 14, 15],
    )
    DiaForConditionalGeneration(config).eval().save_pretrained(str(out))
    DiaFeatureExtractor(sampling_rate=44_100, hop_length=512).save_pretrained(str(out))
    DiaTokenizer().save_pretrained(str(out))
    (out / "processor_config.json").write_text(
        json.dumps(
            {
                "processor_class": "DiaProcessor",
                "audio_tokenizer": {
                    "audio_tokenizer_class": "DacModel",
                    "audio_tokenizer_name_or_path": "dac",
                },
            },
            indent=2,
        )
    )
    return out
