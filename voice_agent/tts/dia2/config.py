"""The official Dia2 `config.json` schema as frozen dataclasses.

The file has four blocks: `data` (vocabularies, special ids, delays),
`model` (decoder and depformer sizes), `runtime` (depformer weight schedule,
context length) and `assets` (tokenizer and Mimi references). Defaults match
the official loader, so real checkpoints and the test fixture load alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from voice_agent.tts.dia2.errors import NotADia2CheckpointError

# One Dia2 step is one Mimi frame: 24 kHz audio at 12.5 frames per second.
SAMPLE_RATE = 24_000
FRAME_RATE = 12.5
SAMPLES_PER_FRAME = 1920
# The official runtime hard-codes the word padding budget; `data.max_pad` is unused.
MAX_PADDING = 6


@dataclass(frozen=True)
class DataConfig:
    """Token layout: 2 text streams + Q audio codebooks, and the special ids."""

    channels: int
    text_vocab_size: int
    audio_vocab_size: int
    action_vocab_size: int
    text_pad_token_id: int
    text_new_word_token_id: int
    text_zero_token_id: int
    audio_pad_token_id: int
    audio_bos_token_id: int
    action_pad_token_id: int
    action_new_word_token_id: int
    delay_pattern: tuple[int, ...]
    first_word_min_start: int
    max_pad: int
    second_stream_ahead: int
    tokenizer_path: str | None = None

    @property
    def num_codebooks(self) -> int:
        return self.channels - 2

    @property
    def max_delay(self) -> int:
        return max(self.delay_pattern) if self.delay_pattern else 0


@dataclass(frozen=True)
class TransformerSizes:
    """The sizes the main transformer and the depformer share."""

    n_layer: int
    n_embd: int
    n_hidden: int
    gqa_query_heads: int
    kv_heads: int
    gqa_head_dim: int

    @staticmethod
    def parse(block: dict[str, Any]) -> dict[str, int]:
        """The shared size fields of a `config.json` model block (KeyError when one is missing)."""
        return {f.name: int(block[f.name]) for f in fields(TransformerSizes)}


@dataclass(frozen=True)
class DecoderConfig(TransformerSizes):
    """Main transformer sizes."""

    low_rank_dim: int | None = None


@dataclass(frozen=True)
class DepformerConfig(TransformerSizes):
    """Depformer sizes; it runs once per codebook stage inside every step."""

    apply_rope: bool = True
    text_embedding: bool = True
    mlp_activations: tuple[str, str] = ("silu", "linear")


@dataclass(frozen=True)
class ModelConfig:
    decoder: DecoderConfig
    depformer: DepformerConfig
    mlp_activations: tuple[str, str] = ("silu", "linear")
    rope_min_timescale: float = 1
    rope_max_timescale: float = 10_000
    norm_eps: float = 1e-5


@dataclass(frozen=True)
class RuntimeConfig:
    weights_schedule: tuple[int, ...]
    max_context_steps: int = 1500


@dataclass(frozen=True)
class AssetsConfig:
    tokenizer: str | None = None
    mimi: str | None = None


@dataclass(frozen=True)
class Dia2Config:
    """A whole Dia2 `config.json`."""

    data: DataConfig
    model: ModelConfig
    runtime: RuntimeConfig
    assets: AssetsConfig

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> Dia2Config:
        """Build from the parsed JSON; a missing block or key names what is missing."""
        for block in ("data", "model", "runtime"):
            if not isinstance(raw.get(block), dict):
                raise NotADia2CheckpointError(
                    f"{source} is not a Dia2 config: it has no {block!r} block "
                    "(expected the data/model/runtime/assets layout of nari-labs/Dia2-*)."
                )
        data, model, runtime = raw["data"], raw["model"], raw["runtime"]
        try:
            vocab = data["audio_vocab_size"]
            data_cfg = DataConfig(
                channels=int(data["channels"]),
                text_vocab_size=int(data["text_vocab_size"]),
                audio_vocab_size=int(vocab),
                action_vocab_size=int(data["action_vocab_size"]),
                text_pad_token_id=int(data["text_pad_token_id"]),
                text_new_word_token_id=int(data["text_new_word_token_id"]),
                text_zero_token_id=int(data.get("text_zero_token_id", 7)),
                audio_pad_token_id=int(data.get("audio_pad_token_id", vocab - 1)),
                audio_bos_token_id=int(data.get("audio_bos_token_id", vocab - 2)),
                action_pad_token_id=int(data["action_pad_token_id"]),
                action_new_word_token_id=int(data["action_new_word_token_id"]),
                delay_pattern=tuple(int(d) for d in data.get("delay_pattern", [])),
                first_word_min_start=int(data.get("first_word_min_start", 0)),
                max_pad=int(data.get("max_pad", 0)),
                second_stream_ahead=int(data.get("second_stream_ahead", 0)),
                tokenizer_path=data.get("tokenizer_path"),
            )
            dec, dep = model["decoder"], model["depformer"]
            decoder = DecoderConfig(
                **TransformerSizes.parse(dec), low_rank_dim=dec.get("low_rank_dim")
            )
            depformer = DepformerConfig(
                **TransformerSizes.parse(dep),
                apply_rope=bool(dep.get("apply_rope", True)),
                text_embedding=bool(dep.get("text_embedding", True)),
                mlp_activations=tuple(dep.get("mlp_activations", ["silu", "linear"])),
            )
        except KeyError as exc:
            raise NotADia2CheckpointError(
                f"{source} is missing the Dia2 config key {exc}."
            ) from exc
        model_cfg = ModelConfig(
            decoder=decoder,
            depformer=depformer,
            mlp_activations=tuple(
                model.get("linear", {}).get("mlp_activations", ["silu", "linear"])
            ),
            rope_min_timescale=model.get("rope_min_timescale", 1),
            rope_max_timescale=model.get("rope_max_timescale", 10_000),
            norm_eps=float(model.get("normalization_layer_epsilon", 1e-5)),
        )
        stages = max(data_cfg.num_codebooks - 1, 0)
        runtime_cfg = RuntimeConfig(
            weights_schedule=tuple(runtime.get("weights_schedule") or range(stages)),
            max_context_steps=int(runtime.get("max_context_steps", 1500)),
        )
        assets = raw.get("assets") or {}
        config = cls(
            data=data_cfg,
            model=model_cfg,
            runtime=runtime_cfg,
            assets=AssetsConfig(
                tokenizer=assets.get("tokenizer") or data_cfg.tokenizer_path,
                mimi=assets.get("mimi"),
            ),
        )
        config.validate(source)
        return config

    def validate(self, source: str = "config.json") -> None:
        """Check the invariants the runtime relies on."""
        data = self.data
        problems = []
        if len(data.delay_pattern) != data.num_codebooks:
            problems.append(
                f"delay_pattern has {len(data.delay_pattern)} entries for {data.num_codebooks} codebooks"
            )
        if any(d < 1 for d in data.delay_pattern):
            # Column 0 of the audio grid is never written, so a delay of 0 would
            # feed an unwritten cell; the official runtime has the same limit.
            problems.append("every delay must be >= 1")
        if len(self.runtime.weights_schedule) != max(data.num_codebooks - 1, 0):
            problems.append(
                f"runtime.weights_schedule has {len(self.runtime.weights_schedule)} entries, "
                f"expected one per depformer stage ({data.num_codebooks - 1})"
            )
        if data.action_vocab_size != 2:
            problems.append("action_vocab_size must be 2 (pad / new word)")
        dep = self.model.depformer
        if dep.kv_heads != dep.gqa_query_heads:
            problems.append("the depformer's fused in_proj needs kv_heads == gqa_query_heads")
        if self.runtime.max_context_steps <= 0:
            problems.append("runtime.max_context_steps must be positive")
        if problems:
            raise NotADia2CheckpointError(f"{source}: " + "; ".join(problems) + ".")


def load_config(path: str | Path) -> Dia2Config:
    """Read a Dia2 `config.json`."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise NotADia2CheckpointError(
            f"{path} does not exist; a Dia2 checkpoint needs config.json."
        ) from exc
    except ValueError as exc:
        raise NotADia2CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise NotADia2CheckpointError(f"{path} is not a Dia2 config (not a JSON object).")
    return Dia2Config.from_dict(raw, source=str(path))
