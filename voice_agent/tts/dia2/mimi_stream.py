"""Streaming Mimi decoder: codes in, 1920 samples per frame out, state kept between calls.

`transformers`' `MimiModel.decode` is stateless: decoding frame by frame would
restart every convolution and the attention at each call. This module runs the
same modules (their weights, not a copy) with the state a causal decoder
needs:

- causal `Conv1d` (stride 1): the last `kernel - 1` (dilated) input samples;
- `ConvTranspose1d`: the `kernel - stride` output samples that overlap the
  next input (overlap-add), since Mimi trims all transposed padding on the right;
- the decoder transformer: a KV cache trimmed to Mimi's sliding window
  (`config.sliding_window` positions at 25 Hz), with absolute RoPE positions.

Everything in the decoder is causal, so the concatenated stream equals the
batch decode of the same codes (to float rounding), also past the window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _parts(mimi: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(upsample, decoder transformer, SEANet decoder) for transformers 5.x and 4.x layouts."""
    decoder = mimi.decoder
    if hasattr(decoder, "decoder_seanet"):
        return decoder.upsample, decoder.decoder_transformer, decoder.decoder_seanet
    return mimi.upsample, mimi.decoder_transformer, decoder


class _CausalConv:
    """A causal stride-1 `MimiConv1d` that remembers its left context."""

    def __init__(self, module: nn.Module):
        conv = module.conv
        if conv.stride[0] != 1 or not module.causal:
            raise ValueError("streaming decode supports causal stride-1 convolutions only")
        self.conv = conv
        self.context = (conv.kernel_size[0] - 1) * conv.dilation[0]
        self.state: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.state is None:
            self.state = x.new_zeros(x.shape[0], x.shape[1], self.context)
        x = torch.cat([self.state, x], dim=-1)
        if self.context:
            self.state = x[..., x.shape[-1] - self.context :]
        return self.conv(x)


class _TransposedConv:
    """A `MimiConvTranspose1d` (all padding trimmed on the right) with overlap-add."""

    def __init__(self, module: nn.Module):
        conv = module.conv
        if module.padding_left != 0:
            raise ValueError("streaming decode needs trim_right_ratio == 1 (causal Mimi)")
        self.conv = conv
        self.stride = conv.stride[0]
        self.overlap = conv.kernel_size[0] - self.stride
        self.tail: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        y = F.conv_transpose1d(x, c.weight, None, c.stride, 0, 0, c.groups, c.dilation)
        if self.tail is not None:
            y[..., : self.overlap] += self.tail
        emit = x.shape[-1] * self.stride
        self.tail = y[..., emit:]
        out = y[..., :emit]
        return out + c.bias[:, None] if c.bias is not None else out


class _Residual:
    def __init__(self, module: nn.Module):
        self.block = [_stateful(layer) for layer in module.block]
        shortcut = module.shortcut
        self.shortcut = _stateful(shortcut) if not isinstance(shortcut, nn.Identity) else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(x) if self.shortcut is not None else x
        for layer in self.block:
            x = layer(x)
        return residual + x


def _stateful(module: nn.Module):
    name = type(module).__name__
    if name == "MimiConv1d":
        return _CausalConv(module)
    if name == "MimiConvTranspose1d":
        return _TransposedConv(module)
    if name == "MimiResnetBlock":
        return _Residual(module)
    return module  # stateless (ELU)


class _WindowedTransformer:
    """Mimi's decoder transformer, fed a few positions at a time with a sliding-window KV cache."""

    def __init__(self, transformer: nn.Module):
        self.transformer = transformer
        config = transformer.config
        self.window = getattr(config, "sliding_window", None)
        self.keys: list[torch.Tensor | None] = [None] * len(transformer.layers)
        self.values: list[torch.Tensor | None] = [None] * len(transformer.layers)
        self.positions: torch.Tensor | None = None
        self.next_position = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, C] -> [B, T, C]."""
        t = x.shape[1]
        new_pos = torch.arange(self.next_position, self.next_position + t, device=x.device)
        self.next_position += t
        positions = new_pos if self.positions is None else torch.cat([self.positions, new_pos])
        allowed = positions[None, :] <= new_pos[:, None]
        if self.window is not None:
            allowed &= positions[None, :] > new_pos[:, None] - self.window
        cos, sin = self.transformer.rotary_emb(x, new_pos[None])
        for i, layer in enumerate(self.transformer.layers):
            x = self._layer(i, layer, x, cos, sin, allowed)
        # Keep only what the next query can still see.
        keep = (
            positions > self.next_position - self.window if self.window is not None else slice(None)
        )
        self.positions = positions[keep]
        for i in range(len(self.keys)):
            self.keys[i] = self.keys[i][:, :, keep]
            self.values[i] = self.values[i][:, :, keep]
        return x

    def _layer(self, i: int, layer: nn.Module, x, cos, sin, allowed) -> torch.Tensor:
        attn = layer.self_attn
        b, t, _ = x.shape
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        if self.keys[i] is not None:
            k = torch.cat([self.keys[i], k], dim=2)
            v = torch.cat([self.values[i], v], dim=2)
        self.keys[i], self.values[i] = k, v
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, scale=attn.scaling, enable_gqa=q.shape[1] != k.shape[1]
        )
        out = attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))
        x = x + layer.self_attn_layer_scale(out)
        return x + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(x)))


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class MimiStreamDecoder:
    """Decode Mimi codes frame by frame with state; `reset()` before a new utterance."""

    def __init__(self, mimi: nn.Module):
        self.mimi = mimi
        self.reset()

    def reset(self) -> None:
        upsample, transformer, seanet = _parts(self.mimi)
        self.upsample = _TransposedConv(upsample) if upsample is not None else None
        self.transformer = _WindowedTransformer(transformer)
        self.seanet = [_stateful(layer) for layer in seanet.layers]

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [Q, n] or [1, Q, n] -> float32 audio [n * 1920], clamped to [-1, 1]."""
        if codes.dim() == 2:
            codes = codes[None]
        x = self.mimi.quantizer.decode(codes)
        if self.upsample is not None:
            x = self.upsample(x)
        x = self.transformer(x.transpose(1, 2)).transpose(1, 2)
        for layer in self.seanet:
            x = layer(x)
        return x[0, 0].clamp(-1.0, 1.0)
