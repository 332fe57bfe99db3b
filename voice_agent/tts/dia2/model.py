"""Dia2 networks: the main transformer and the depformer, one step at a time.

One step consumes the two text streams and the Q audio codes of one 80 ms
frame and produces:

- from the main transformer: the final normed hidden state, the action logits
  (pad / new word) and the logits of codebook 0;
- from the depformer, run once per remaining codebook ("stage" s = 0..Q-2):
  the logits of codebook s+1, given the hidden state and the code just chosen
  for codebook s.

Module and parameter names follow the official checkpoint
(`transformer.layers.0.attn.q_proj.weight`, `depformer.depformer_in.0.weight`,
...), so `model.safetensors` loads without renaming. Every projection is
bias-free; attention is GQA with per-head RMSNorm on q and k, rotary
embeddings and a softmax scale of 1.0 (the q/k norms set the scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from voice_agent.tts.dia2.config import Dia2Config

ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "relu": F.relu,
    "linear": lambda x: x,
}


@dataclass
class KVCache:
    """Preallocated keys and values, one [B, kv_heads, steps, head_dim] pair per layer."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @classmethod
    def allocate(
        cls, layers: int, batch: int, heads: int, steps: int, head_dim: int, *, device, dtype
    ) -> KVCache:
        shape = (batch, heads, steps, head_dim)
        return cls(
            keys=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)],
            values=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)],
        )


class Rotary:
    """Rotate-half RoPE with `timescale = min * (max/min) ** (2i/d)`, tables precomputed."""

    def __init__(
        self, head_dim: int, min_timescale: float, max_timescale: float, positions: int, device
    ):
        half = head_dim // 2
        fraction = (2.0 * torch.arange(0, half)) / head_dim
        timescale = min_timescale * (max_timescale / min_timescale) ** fraction
        inv_freq = (1.0 / timescale).to(torch.float32)
        t = torch.arange(positions, dtype=torch.float32)
        freqs = torch.einsum("i,j->ij", t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = emb.cos().to(device)
        self.sin = emb.sin().to(device)

    def tables(
        self, pos: int | torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for one position, shaped to broadcast over [B, 1, heads, head_dim].

        `pos` is a Python int (eager steps) or a one-element device tensor (static
        steps: CUDA graphs and torch.compile read the position without a host sync).
        """
        if isinstance(pos, torch.Tensor):
            return self.cos.index_select(0, pos).to(dtype), self.sin.index_select(0, pos).to(dtype)
        return self.cos[pos].to(dtype), self.sin[pos].to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = torch.chunk(x, 2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


@dataclass(frozen=True)
class StaticSlot:
    """A KV-cache write index held on the device, for static-shape steps.

    `index` is a one-element long tensor; `mask` [1, capacity] is True for cache
    indices 0..index. Attention then spans the whole preallocated cache with the
    rest masked out, so every step has the same shapes and no host sync.
    """

    index: torch.Tensor
    mask: torch.Tensor


def attend(q, k, v, keys, values, slot: int | StaticSlot, gqa: bool) -> torch.Tensor:
    """Write k/v at cache index `slot` and attend over indices 0..slot (scale 1.0).

    q, k, v: [B, 1, heads, head_dim] -> output [B, 1, q_heads * head_dim].
    """
    if isinstance(slot, StaticSlot):
        keys.index_copy_(2, slot.index, k.transpose(1, 2))
        values.index_copy_(2, slot.index, v.transpose(1, 2))
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), keys, values, attn_mask=slot.mask, scale=1.0, enable_gqa=gqa
        )
        return out.transpose(1, 2).flatten(2)
    keys[:, :, slot] = k[:, 0]
    values[:, :, slot] = v[:, 0]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        keys[:, :, : slot + 1],
        values[:, :, : slot + 1],
        scale=1.0,
        enable_gqa=gqa,
    )
    return out.transpose(1, 2).flatten(2)


class Mlp(nn.Module):
    """Gated MLP; the fused `wi` rows are [gate; up], output `act0(gate) * act1(up)`."""

    def __init__(self, dim: int, hidden: int, activations: tuple[str, str]):
        super().__init__()
        self.hidden = hidden
        self.wi = nn.Linear(dim, 2 * hidden, bias=False)
        self.wo = nn.Linear(hidden, dim, bias=False)
        self.act_gate, self.act_up = (ACTIVATIONS[a.lower()] for a in activations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.wi(x).view(*x.shape[:-1], 2, self.hidden).unbind(dim=-2)
        return self.wo(self.act_gate(gate) * self.act_up(up))


class MultiStreamEmbedding(nn.Module):
    """Text embedding of the main and second streams through a shared low-rank table."""

    def __init__(self, vocab: int, dim: int, low_rank_dim: int | None, pad_id: int):
        super().__init__()
        base = low_rank_dim or dim
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab, base)
        self.main_proj = nn.Linear(base, dim, bias=False)
        self.second_proj = nn.Linear(base, dim, bias=False)

    def forward(self, main: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        out_main = self.main_proj(self.embedding(main))
        out_second = self.second_proj(self.embedding(second))
        # The second stream contributes nothing while it carries pad.
        keep = (second != self.pad_id).unsqueeze(-1)
        return out_main + torch.where(keep, out_second, torch.zeros_like(out_second))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, eps: float):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)
        self.q_norm = nn.RMSNorm(head_dim, eps=eps)
        self.k_norm = nn.RMSNorm(head_dim, eps=eps)

    def forward(self, x, cos, sin, keys, values, slot: int | StaticSlot) -> torch.Tensor:
        b = x.shape[0]
        q = apply_rotary(
            self.q_norm(self.q_proj(x).view(b, 1, self.heads, self.head_dim)), cos, sin
        )
        k = apply_rotary(
            self.k_norm(self.k_proj(x).view(b, 1, self.kv_heads, self.head_dim)), cos, sin
        )
        v = self.v_proj(x).view(b, 1, self.kv_heads, self.head_dim)
        out = attend(q, k, v, keys, values, slot, gqa=self.heads != self.kv_heads)
        return self.o_proj(out)


class DecoderLayer(nn.Module):
    def __init__(self, config: Dia2Config):
        super().__init__()
        dec, eps = config.model.decoder, config.model.norm_eps
        self.pre_norm = nn.RMSNorm(dec.n_embd, eps=eps)
        self.attn = Attention(dec.n_embd, dec.gqa_query_heads, dec.kv_heads, dec.gqa_head_dim, eps)
        self.post_norm = nn.RMSNorm(dec.n_embd, eps=eps)
        self.mlp = Mlp(dec.n_embd, dec.n_hidden, config.model.mlp_activations)

    def forward(self, x, cos, sin, keys, values, slot: int | StaticSlot) -> torch.Tensor:
        x = x + self.attn(self.pre_norm(x), cos, sin, keys, values, slot)
        return x + self.mlp(self.post_norm(x))


class Transformer(nn.Module):
    """The main (temporal) transformer: one call per step, KV cache indexed by `slot`."""

    def __init__(self, config: Dia2Config):
        super().__init__()
        data, dec = config.data, config.model.decoder
        self.audio_embeds = nn.ModuleList(
            nn.Embedding(data.audio_vocab_size, dec.n_embd) for _ in range(data.num_codebooks)
        )
        self.text_embed = MultiStreamEmbedding(
            data.text_vocab_size, dec.n_embd, dec.low_rank_dim, data.text_pad_token_id
        )
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(dec.n_layer))
        self.norm = nn.RMSNorm(dec.n_embd, eps=config.model.norm_eps)
        self.action_head = nn.Linear(dec.n_embd, data.action_vocab_size, bias=False)
        self.cb0_head = nn.Linear(dec.n_embd, data.audio_vocab_size, bias=False)

    def forward(
        self,
        tokens: torch.Tensor,
        rope: Rotary,
        pos: int | torch.Tensor,
        cache: KVCache,
        slot: int | StaticSlot,
    ):
        """tokens [B, 2 + Q] (main, second, cb0..) -> hidden [B, 1, D], action [B, 2], cb0 [B, V].

        `pos` and `slot` are ints for eager steps, or device tensors (`StaticSlot`) for
        static-shape steps (CUDA graphs, torch.compile).
        """
        x = self.text_embed(tokens[:, 0:1], tokens[:, 1:2])
        for i, embed in enumerate(self.audio_embeds):
            x = x + embed(tokens[:, 2 + i : 3 + i])
        cos, sin = rope.tables(pos, x.dtype)
        for layer, keys, values in zip(self.layers, cache.keys, cache.values, strict=True):
            x = layer(x, cos, sin, keys, values, slot)
        hidden = self.norm(x)
        return hidden, self.action_head(hidden)[:, 0].float(), self.cb0_head(hidden)[:, 0].float()


class ScheduleAttention(nn.Module):
    """Depformer attention: fused [q; k; v] input projection, weights chosen per stage."""

    def __init__(self, config: Dia2Config):
        super().__init__()
        dep, eps = config.model.depformer, config.model.norm_eps
        self.heads, self.head_dim = dep.gqa_query_heads, dep.gqa_head_dim
        self.schedule = config.runtime.weights_schedule
        groups = sorted(set(self.schedule))
        width = dep.gqa_query_heads * dep.gqa_head_dim
        self.in_proj = nn.ModuleDict(
            {str(g): nn.Linear(dep.n_embd, 3 * width, bias=False) for g in groups}
        )
        self.out_proj = nn.ModuleDict(
            {str(g): nn.Linear(width, dep.n_embd, bias=False) for g in groups}
        )
        self.q_norm = nn.RMSNorm(dep.gqa_head_dim, eps=eps)
        self.k_norm = nn.RMSNorm(dep.gqa_head_dim, eps=eps)

    def forward(self, x, stage: int, cos, sin, keys, values) -> torch.Tensor:
        group = str(self.schedule[stage])
        qkv = self.in_proj[group](x).view(x.shape[0], 1, 3, self.heads, self.head_dim)
        q, k, v = self.q_norm(qkv[:, :, 0]), self.k_norm(qkv[:, :, 1]), qkv[:, :, 2]
        if cos is not None:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # The depformer cache lives for one frame; stage s writes index s.
        return self.out_proj[group](attend(q, k, v, keys, values, stage, gqa=False))


class DepformerLayer(nn.Module):
    def __init__(self, config: Dia2Config):
        super().__init__()
        dep, eps = config.model.depformer, config.model.norm_eps
        self.pre_norm = nn.RMSNorm(dep.n_embd, eps=eps)
        self.self_attention = ScheduleAttention(config)
        self.post_norm = nn.RMSNorm(dep.n_embd, eps=eps)
        self.mlp = Mlp(dep.n_embd, dep.n_hidden, dep.mlp_activations)

    def forward(self, x, stage: int, cos, sin, keys, values) -> torch.Tensor:
        x = x + self.self_attention(self.pre_norm(x), stage, cos, sin, keys, values)
        return x + self.mlp(self.post_norm(x))


class Depformer(nn.Module):
    """Predicts codebooks 1..Q-1 of a frame, one stage per codebook, RoPE position = stage."""

    def __init__(self, config: Dia2Config):
        super().__init__()
        data, dep = config.data, config.model.depformer
        if dep.text_embedding:
            # Off in every shipped config; the official stage-0 text term is not ported.
            raise NotImplementedError("depformer.text_embedding=true is not supported")
        stages = data.num_codebooks - 1
        self.schedule = config.runtime.weights_schedule
        self.apply_rope = dep.apply_rope
        self.audio_embeds = nn.ModuleList(
            nn.Embedding(data.audio_vocab_size, dep.n_embd) for _ in range(stages)
        )
        self.depformer_in = nn.ModuleDict(
            {
                str(g): nn.Linear(config.model.decoder.n_embd, dep.n_embd, bias=False)
                for g in sorted(set(self.schedule))
            }
        )
        self.layers = nn.ModuleList(DepformerLayer(config) for _ in range(dep.n_layer))
        self.norm = nn.RMSNorm(dep.n_embd, eps=config.model.norm_eps)
        self.logits = nn.ModuleList(
            nn.Linear(dep.n_embd, data.audio_vocab_size, bias=False) for _ in range(stages)
        )
        # pad and bos sit at the top of the audio vocabulary and are never predicted here.
        self.vocab_limit = min(data.audio_pad_token_id, data.audio_bos_token_id)

    def project(self, hidden: torch.Tensor) -> dict[int, torch.Tensor]:
        """`depformer_in` of the transformer's hidden state, once per weight group.

        The hidden state is the same for all stages of a frame, so stages sharing a
        group (27 of the 31 in the 2B schedule) share this product instead of
        recomputing it.
        """
        return {int(g): proj(hidden) for g, proj in self.depformer_in.items()}

    def forward(
        self,
        stage: int,
        prev_code: torch.Tensor,
        projected: dict[int, torch.Tensor],
        rope: Rotary | None,
        cache: KVCache,
    ):
        """Logits [B, vocab_limit] for codebook stage+1.

        Args:
            prev_code: [B] codes of codebook `stage`.
            projected: `project(hidden)` of this frame's transformer output.
        """
        x = projected[self.schedule[stage]] + self.audio_embeds[stage](prev_code[:, None])
        cos, sin = rope.tables(stage, x.dtype) if rope is not None else (None, None)
        for layer, keys, values in zip(self.layers, cache.keys, cache.values, strict=True):
            x = layer(x, stage, cos, sin, keys, values)
        return self.logits[stage](self.norm(x))[:, 0, : self.vocab_limit].float()


class Dia2Model(nn.Module):
    """Both networks under the official top-level names `transformer` and `depformer`."""

    def __init__(self, config: Dia2Config):
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.depformer = Depformer(config)

    def rotaries(self, positions: int, device) -> tuple[Rotary, Rotary | None]:
        """RoPE tables for the transformer (`positions` long) and the depformer (one per stage)."""
        m = self.config.model
        main = Rotary(
            m.decoder.gqa_head_dim, m.rope_min_timescale, m.rope_max_timescale, positions, device
        )
        dep = None
        if m.depformer.apply_rope:
            stages = max(len(self.config.runtime.weights_schedule), 1)
            dep = Rotary(
                m.depformer.gqa_head_dim, m.rope_min_timescale, m.rope_max_timescale, stages, device
            )
        return main, dep

    def allocate_caches(self, batch: int, steps: int, device, dtype) -> tuple[KVCache, KVCache]:
        """KV caches for `steps` transformer positions and for one frame of depformer stages."""
        dec, dep = self.config.model.decoder, self.config.model.depformer
        main = KVCache.allocate(
            dec.n_layer, batch, dec.kv_heads, steps, dec.gqa_head_dim, device=device, dtype=dtype
        )
        stages = max(len(self.config.runtime.weights_schedule), 1)
        depth = KVCache.allocate(
            dep.n_layer, batch, dep.kv_heads, stages, dep.gqa_head_dim, device=device, dtype=dtype
        )
        return main, depth
