"""MST++ (Cai, Lin, Lin et al., "MST++: Multi-stage Spectral-wise Transformer for Efficient Spectral
Reconstruction", CVPRW 2022; NTIRE 2022 winner), written from the paper: the regression network the spectral-
reconstruction literature measures itself against.

    RGB -> 3x3 conv -> [single-stage spectral-wise transformer (U-shaped)] x 3 -> 3x3 conv (+ the first conv) -> cube

- Spectral-wise multi-head self-attention (`SpectralAttention`): each spectral channel is a token (its whole spatial
  map the token's content), so attention costs grow linearly with the pixel count; queries and keys are
  L2-normalised along space and scaled by a learnt temperature per head; a depth-wise convolution of the values adds
  position information.
- `SpectralTransformerBlock`: attention and a convolutional feed-forward (1x1, depth-wise 3x3, 1x1; GELU), each
  residual, layer-normalised before the feed-forward.
- `SingleStageTransformer` (SST): a U-shape of two down- and up-sampling levels, channels doubling down
  (31 -> 62 -> 124), one block per level and at the bottom, skip connections fused by 1x1 convolutions, a residual
  from its input.
- `MSTPlusPlus`: three SSTs in a row between an input and an output convolution, with a residual around them;
  inputs are padded (reflected) to a multiple of 8 and the output cropped back.

At the paper's size (31 channels, three stages) it has 1.62 M parameters and 23 G multiply-adds at 256 x 256
(`tests/test_mstpp.py` checks both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


class SpectralAttention(nn.Module):
    """Spectral-wise multi-head self-attention on N x H x W x C features (C = heads x head_channels tokens)."""

    def __init__(self, channels: int, head_channels: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_channels = heads, head_channels
        inner = heads * head_channels
        self.to_q = nn.Linear(channels, inner, bias=False)
        self.to_k = nn.Linear(channels, inner, bias=False)
        self.to_v = nn.Linear(channels, inner, bias=False)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.project = nn.Linear(inner, channels)
        self.position = nn.Sequential(  # position embedding of the values: depth-wise 3x3, GELU, depth-wise 3x3
            nn.Conv2d(channels, channels, 3, padding=1, bias=False, groups=channels), nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False, groups=channels),
        )

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """N x P x (heads·d) -> N x heads x d x P: every channel a token whose content is its spatial map."""
        n, pixels, _ = x.shape
        return x.view(n, pixels, self.heads, self.head_channels).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, height, width, channels = x.shape
        flat = x.reshape(n, height * width, channels)
        q, k, v = self.to_q(flat), self.to_k(flat), self.to_v(flat)
        q_heads, k_heads, v_heads = (self.split_heads(t) for t in (q, k, v))
        q_heads, k_heads = F.normalize(q_heads, dim=-1), F.normalize(k_heads, dim=-1)
        attention = (k_heads @ q_heads.transpose(-2, -1) * self.temperature).softmax(dim=-1)  # d x d per head
        mixed = (attention @ v_heads).permute(0, 3, 1, 2).reshape(n, height * width, -1)
        out = self.project(mixed).view(n, height, width, channels)
        position = channels_last(self.position(channels_first(v.view(n, height, width, -1))))
        return out + position


class FeedForward(nn.Module):
    """1x1 conv to 4x the channels, GELU, depth-wise 3x3, GELU, 1x1 back, on N x H x W x C features."""

    def __init__(self, channels: int, expansion: int = 4) -> None:
        super().__init__()
        hidden = channels * expansion
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False, groups=hidden), nn.GELU(),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channels_last(self.net(channels_first(x)))


class SpectralTransformerBlock(nn.Module):
    """`blocks` x (attention + residual, layer norm -> feed-forward + residual) on N x C x H x W features."""

    def __init__(self, channels: int, head_channels: int, blocks: int) -> None:
        super().__init__()
        heads = channels // head_channels
        self.layers = nn.ModuleList(
            nn.ModuleList([SpectralAttention(channels, head_channels, heads), nn.LayerNorm(channels),
                           FeedForward(channels)])
            for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channels_last(x)
        for attention, norm, feed_forward in self.layers:
            x = attention(x) + x
            x = feed_forward(norm(x)) + x
        return channels_first(x)


class SingleStageTransformer(nn.Module):
    """One U-shaped stage (SST): embedding, `levels` encoder levels that halve the size and double the channels,
    a bottleneck, the decoder mirroring them with fused skips, an output mapping, plus the stage's input."""

    def __init__(self, channels: int = 31, levels: int = 2, blocks: tuple[int, ...] = (1, 1, 1)) -> None:
        super().__init__()
        self.embedding = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.encoder, self.decoder = nn.ModuleList(), nn.ModuleList()
        width = channels
        for level in range(levels):
            self.encoder.append(nn.ModuleList([SpectralTransformerBlock(width, channels, blocks[level]),
                                               nn.Conv2d(width, width * 2, 4, stride=2, padding=1, bias=False)]))
            width *= 2
        self.bottleneck = SpectralTransformerBlock(width, channels, blocks[-1])
        for level in reversed(range(levels)):
            self.decoder.append(nn.ModuleList([nn.ConvTranspose2d(width, width // 2, 2, stride=2),
                                               nn.Conv2d(width, width // 2, 1, bias=False),
                                               SpectralTransformerBlock(width // 2, channels, blocks[level])]))
            width //= 2
        self.mapping = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, skips = self.embedding(x), []
        for block, downsample in self.encoder:
            features = block(features)
            skips.append(features)
            features = downsample(features)
        features = self.bottleneck(features)
        for (upsample, fuse, block), skip in zip(self.decoder, reversed(skips)):
            features = block(fuse(torch.cat([upsample(features), skip], dim=1)))
        return self.mapping(features) + x


class MSTPlusPlus(ModelMixin, ConfigMixin):
    """RGB (N x 3 x H x W) -> spectra (N x B x H x W): MST++ at the paper's size by default."""

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 31, channels: int = 31, stages: int = 3,
                 levels: int = 2, blocks: tuple[int, ...] = (1, 1, 1)) -> None:
        super().__init__()
        if len(blocks) != levels + 1:
            raise ValueError(f"blocks needs one count per level and one for the bottleneck ({levels + 1}), got {blocks}")
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.body = nn.Sequential(*(SingleStageTransformer(channels, levels, tuple(blocks)) for _ in range(stages)))
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1, bias=False)

    @property
    def size_multiple(self) -> int:
        return 2 ** self.config.levels * 2  # the paper pads to 8 at two levels

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        height, width = rgb.shape[-2:]
        multiple = self.size_multiple
        padded = F.pad(rgb, (0, -width % multiple, 0, -height % multiple), mode="reflect")
        features = self.conv_in(padded)
        out = self.conv_out(self.body(features)) + features
        return out[..., :height, :width]
