"""Random-weight Piper voices in Piper's ONNX format, built offline in seconds.

Our own small VITS-like model (text encoder, duration rule, flow-like
residual blocks, a HiFi-GAN-like upsampling decoder), exported by
`torch.onnx` with Piper's graph signature: `input` int64 [1, T],
`input_lengths` int64 [1], `scales` float32 [3] -> `output` float32
[1, 1, samples]; plus a `<name>.onnx.json` whose `phoneme_id_map` holds
espeak's IPA symbols the way Piper's voices do.

- `build(dir)`: a tiny voice (about 130 kB) for tests.
- `build_shaped(dir)`: a voice with a Piper "medium" voice's widths (192
  hidden, 6 encoder layers, 4 flow blocks of 4 WaveNet-like layers, a
  256-channel HiFi-GAN-like decoder upsampling 8 x 8 x 4 with resblock "2"'s
  kernels 3, 5, 7 and dilations), for the benchmark: the speed is real, the
  sound is noise.

Random weights cannot learn durations, so each id lasts
`ceil(FRAMES_PER_ID * exp(nudge) * length_scale)` frames of 256 samples, the
nudge coming from the weights (and `noise_w`). `FRAMES_PER_ID` is calibrated
on a real voice: Piper's `en_US-joe-medium` speaks the benchmark's 148-character
reply (333 ids) in 9.0 s, about 16 characters a second, and so does the
shaped voice (about 2.3 frames, 26 ms, per id: half the ids are the `_` pads
between phonemes). Before the calibration it was 3.5, which gave 15.7 s.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

SAMPLE_RATE = 22050
FRAMES_PER_ID = 1.9  # calibrated: see the module's docstring
VOICE_NAME = "en_US-tiny-random"
# Piper's layout: pad, BOS, EOS, word gap, punctuation, then letters and IPA symbols.
SYMBOLS = ["_", "^", "$", " ", "!", "'", "(", ")", ",", "-", ".", ":", ";", "?"]
SYMBOLS += list("abcdefhijklmnopqrstuvwxyz")
SYMBOLS += list("æçðøħŋœɐɑɒɔɕɖɗəɚɛɜɟɡɣɤɥɦɨɪɬɭɯɰɲɳɴɸɹɻɽɾʁʂʃʈʉʊʋʌʍʎʏʐʑʒʔʕʝʲˈˌːˑ˞βθχᵻ")


@dataclass(frozen=True)
class VoiceDims:
    hidden: int = 16
    heads: int = 2
    layers: int = 1
    filter: int = 32
    flows: int = 1
    flow_layers: int = 1
    decoder: int = 32
    upsample: tuple[int, ...] = (8, 8, 4)  # product = 256 samples per frame
    kernels: tuple[int, ...] = (3,)
    dilations: tuple[tuple[int, ...], ...] = ((1,),)  # per kernel, HiFi-GAN's resblock "2"


MEDIUM = VoiceDims(
    hidden=192, heads=2, layers=6, filter=768, flows=4, flow_layers=4, decoder=256,
    kernels=(3, 5, 7), dilations=((1, 2), (2, 6), (3, 12)),
)  # fmt: skip


class EncoderLayer(nn.Module):
    def __init__(self, d: VoiceDims) -> None:
        super().__init__()
        self.heads = d.heads
        self.scale = 1.0 / math.sqrt(d.hidden // d.heads)
        self.qkv = nn.Conv1d(d.hidden, 3 * d.hidden, 1)
        self.out = nn.Conv1d(d.hidden, d.hidden, 1)
        self.ff = nn.Sequential(
            nn.Conv1d(d.hidden, d.filter, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(d.filter, d.hidden, 3, padding=1),
        )
        self.norm1 = nn.GroupNorm(1, d.hidden)
        self.norm2 = nn.GroupNorm(1, d.hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        q, k, v = self.qkv(x).view(b, 3, self.heads, c // self.heads, t).unbind(1)
        scores = torch.matmul(q.transpose(2, 3), k) * self.scale
        scores = scores.masked_fill(mask.unsqueeze(1) == 0, -1e4)
        att = torch.matmul(torch.softmax(scores, -1), v.transpose(2, 3)).transpose(2, 3)
        x = self.norm1(x + self.out(att.reshape(b, c, t)))
        return self.norm2(x + self.ff(x * mask[:, :, :1].transpose(1, 2)))


class ResidualFlow(nn.Module):
    """Half the channels shift by a function of the other half (the shape of VITS's flow)."""

    def __init__(self, d: VoiceDims) -> None:
        super().__init__()
        half = d.hidden // 2
        self.pre = nn.Conv1d(half, d.hidden, 1)
        self.convs = nn.ModuleList(
            nn.Conv1d(d.hidden, 2 * d.hidden, 5, padding=2) for _ in range(d.flow_layers)
        )
        # WaveNet's residual/skip 1x1 convolution after each gated layer.
        self.res_skip = nn.ModuleList(
            nn.Conv1d(d.hidden, 2 * d.hidden, 1) for _ in range(d.flow_layers)
        )
        self.post = nn.Conv1d(d.hidden, half, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, b = h.chunk(2, 1)
        x = self.pre(a)
        skip = torch.zeros_like(x)
        for conv, res_skip in zip(self.convs, self.res_skip, strict=True):
            g, s = conv(x).chunk(2, 1)
            res, out = res_skip(torch.tanh(g) * torch.sigmoid(s)).chunk(2, 1)
            x = x + res
            skip = skip + out
        return torch.cat([a, b + self.post(skip)], 1).flip(1)


class Decoder(nn.Module):
    def __init__(self, d: VoiceDims) -> None:
        super().__init__()
        self.pre = nn.Conv1d(d.hidden, d.decoder, 7, padding=3)
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        ch = d.decoder
        for rate in d.upsample:
            self.ups.append(nn.ConvTranspose1d(ch, ch // 2, 2 * rate, rate, padding=rate // 2))
            ch //= 2
            self.blocks.append(
                nn.ModuleList(
                    nn.ModuleList(
                        nn.Conv1d(ch, ch, k, dilation=r, padding=r * (k - 1) // 2) for r in rates
                    )
                    for k, rates in zip(d.kernels, d.dilations, strict=True)
                )
            )
        self.post = nn.Conv1d(ch, 1, 7, padding=3)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.pre(h)
        for up, blocks in zip(self.ups, self.blocks, strict=True):
            x = up(nn.functional.leaky_relu(x, 0.1))
            x = sum(self._resblock(x, convs) for convs in blocks) / len(blocks)
        return torch.tanh(self.post(nn.functional.leaky_relu(x, 0.1)))

    @staticmethod
    def _resblock(x: torch.Tensor, convs: nn.ModuleList) -> torch.Tensor:
        for conv in convs:
            x = x + conv(nn.functional.leaky_relu(x, 0.1))
        return x


class RandomVoice(nn.Module):
    def __init__(self, d: VoiceDims, n_symbols: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_symbols, d.hidden)
        self.encoder = nn.ModuleList(EncoderLayer(d) for _ in range(d.layers))
        self.duration = nn.Conv1d(d.hidden, 1, 3, padding=1)
        self.flows = nn.ModuleList(ResidualFlow(d) for _ in range(d.flows))
        self.decoder = Decoder(d)

    def forward(
        self, input: torch.Tensor, input_lengths: torch.Tensor, scales: torch.Tensor
    ) -> torch.Tensor:
        noise, length, noise_w = scales[0], scales[1], scales[2]
        ids = torch.arange(input.shape[1]).unsqueeze(0)
        mask = (ids < input_lengths.unsqueeze(1)).float().unsqueeze(1)  # [1, 1, T]
        x = self.embed(input).transpose(1, 2) * mask
        for layer in self.encoder:
            x = layer(x, mask.transpose(1, 2) * mask) * mask
        nudge = 0.2 * torch.tanh(self.duration(x)) + noise_w * 0.05 * torch.randn_like(x[:, :1])
        frames = torch.ceil(FRAMES_PER_ID * torch.exp(nudge) * length * mask)  # [1, 1, T]
        ends = torch.cumsum(frames, 2)
        steps = torch.arange(torch.clamp_min(ends[0, 0, -1], 1.0).long()).view(1, -1, 1).float()
        align = ((steps < ends) & (steps >= ends - frames)).float()  # [1, F, T]
        h = torch.matmul(align, x.transpose(1, 2)).transpose(1, 2)  # [1, C, F]
        h = h + noise * torch.randn_like(h)
        for flow in self.flows:
            h = flow(h)
        return self.decoder(h)  # [1, 1, F * 256]


def _config(dims: VoiceDims) -> dict:
    return {
        "dataset": VOICE_NAME,
        "audio": {"sample_rate": SAMPLE_RATE, "quality": "random"},
        "espeak": {"voice": "en-us"},
        "language": {"code": "en_US"},
        "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8},
        "phoneme_type": "espeak",
        "phoneme_map": {},
        "phoneme_id_map": {s: [i] for i, s in enumerate(SYMBOLS)},
        "num_symbols": len(SYMBOLS),
        "num_speakers": 1,
        "speaker_id_map": {},
        "random_weights": asdict(dims),  # not in Piper's configs: says what this is
    }


def _export(out_dir: Path, dims: VoiceDims, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = RandomVoice(dims, len(SYMBOLS)).eval()
    onnx_path = out_dir / f"{VOICE_NAME}.onnx"
    example = (
        torch.randint(4, len(SYMBOLS), (1, 24)),
        torch.tensor([24]),
        torch.tensor([0.667, 1.0, 0.8]),
    )
    with torch.no_grad():
        torch.onnx.export(
            model,
            example,
            str(onnx_path),
            opset_version=17,
            dynamo=False,
            input_names=["input", "input_lengths", "scales"],
            output_names=["output"],
            dynamic_axes={"input": {1: "phonemes"}, "output": {2: "time"}},
        )
    config = json.dumps(_config(dims), ensure_ascii=False, indent=1)
    (out_dir / f"{VOICE_NAME}.onnx.json").write_text(config, encoding="utf-8")
    return out_dir


def build(out_dir: Path) -> Path:
    """A tiny random Piper voice folder (the `.onnx` and its `.onnx.json`)."""
    return _export(out_dir, VoiceDims())


def build_shaped(out_dir: Path) -> Path:
    """A random voice with a Piper "medium" voice's widths, for the benchmark."""
    return _export(out_dir, MEDIUM)
