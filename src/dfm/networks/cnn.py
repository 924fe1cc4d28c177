"""A small convolutional image encoder for CPU runs, interchangeable with the DiT.

Every layer keeps the full resolution (stride 1, "same" padding), so output pixel ``(i, j)`` is the
feature of input pixel ``(i, j)``: the maps stay pixel-aligned for :func:`dfm.networks.field.sample_pixel_features`.
The residual blocks' dilation cycles through 1, 2, 4, 8, which grows the receptive field quickly
(31 pixels for the default three blocks) without downsampling.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from dfm.networks.embeddings import TimestepEmbedding


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResidualConvBlock(nn.Module):
    """``h + conv(act(FiLM(norm(conv(act(norm(h)))))))`` with two 3x3 convolutions of the same
    ``dilation``; the scale/shift comes from the conditioning vector when ``cond_dim`` is given."""

    def __init__(self, width: int, dilation: int, cond_dim: int | None):
        super().__init__()
        self.norm1, self.norm2 = _norm(width), _norm(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)
        self.film = nn.Linear(cond_dim, 2 * width) if cond_dim else None
        self.act = nn.SiLU()

    def forward(self, h: Tensor, c: Tensor | None) -> Tensor:
        x = self.norm2(self.conv1(self.act(self.norm1(h))))
        if self.film is not None:
            scale, shift = self.film(c)[:, :, None, None].chunk(2, dim=1)
            x = x * (1 + scale) + shift
        return h + self.conv2(self.act(x))


class ConvEncoder(nn.Module):
    """``(x: (B, in_channels, H, W), t: (B,), cond: (B, cond_dim) | None) -> (B, out_channels, H, W)``,
    the same call as :class:`dfm.networks.dit.DiT`, at any ``H x W``.

    Args:
        width: channels of the hidden feature maps.
        depth: number of residual blocks.
        time_conditioned: scale/shift every block from a sinusoidal embedding of ``t`` (otherwise
            ``t`` is ignored, e.g. for a context-only encoder).
        cond_dim: width of an optional extra conditioning vector added to the timestep embedding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int = 64,
        depth: int = 3,
        time_conditioned: bool = True,
        *,
        cond_dim: int | None = None,
    ):
        super().__init__()
        self.time = TimestepEmbedding(width) if time_conditioned else None
        self.cond = nn.Linear(cond_dim, width) if cond_dim else None
        embed_dim = width if time_conditioned or cond_dim else None
        self.inp = nn.Conv2d(in_channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(ResidualConvBlock(width, 2 ** (i % 4), embed_dim) for i in range(depth))
        self.out = nn.Sequential(_norm(width), nn.SiLU(), nn.Conv2d(width, out_channels, 1))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        c = self.time(t) if self.time is not None else None
        if self.cond is not None:
            if cond is None:
                raise ValueError("this ConvEncoder was built with cond_dim and needs a conditioning vector")
            c = self.cond(cond) if c is None else c + self.cond(cond)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)
