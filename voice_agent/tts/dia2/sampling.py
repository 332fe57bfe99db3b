"""Sampling and classifier-free guidance, as the official runtime does them.

CFG here is a *filter*: `guided = lerp(uncond, cond, scale)` only chooses the
top `cfg_filter_k` candidates; the token is then drawn from the *conditional*
logits restricted to them. Sampling is softmax(logits / T), top-k, renormalise,
multinomial; `top_k == 1` or `T <= 0` is an argmax (no random draw).

Everything stays on the device: the one-sample multinomial is drawn as
`argmax(p / E)` with `E ~ Exp(1)`, which is what `torch.multinomial` does for
one sample (the same draws from the same generator), spelled out so that no
step can hide a host sync and CUDA graphs can capture it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """Temperature and top-k of one stream (text actions or audio codes)."""

    temperature: float = 0.8
    top_k: int = 50


@dataclass(frozen=True)
class StepSettings:
    """What the loop needs from the user's generation config."""

    text: SamplingConfig
    audio: SamplingConfig
    cfg_scale: float
    cfg_filter_k: int
    initial_padding: int


def cfg_filter(cond: torch.Tensor, uncond: torch.Tensor, scale: float, k: int) -> torch.Tensor:
    """Conditional logits with everything outside the guided top-k set to -inf.

    Args:
        cond, uncond: [..., V] float32 logits of the two branches.
    """
    if k <= 0 or k >= cond.shape[-1]:
        return cond
    guided = torch.lerp(uncond, cond, scale)
    threshold = torch.topk(guided, k, dim=-1).values[..., -1:]
    return cond.masked_fill(guided < threshold, float("-inf"))


def sample(
    logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw one token per row of `logits` [..., V]; returns [...] int64."""
    if config.temperature <= 0 or config.top_k == 1:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / config.temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    if 0 < config.top_k < flat.shape[-1]:
        top, indices = torch.topk(flat, config.top_k, dim=-1)
        top = top / top.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        picks = indices.gather(-1, _draw(top, generator))
    else:
        picks = _draw(flat, generator)
    return picks.view(probs.shape[:-1])


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of `probs` [N, V] -> [N, 1], as `torch.multinomial(probs, 1)`."""
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1, keepdim=True)


def mask_special(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Forbid special audio ids (pad, bos; a long tensor on the logits' device) in place.

    Applied after the CFG filter.
    """
    return logits.index_fill_(-1, ids, torch.finfo(logits.dtype).min)
