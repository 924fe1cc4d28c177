"""A Diffusion Transformer (Peebles & Xie 2023) that maps images to pixel-aligned feature maps.

Every application's image encoder: the motion denoiser reads flow off its output, the GAN denoiser
pools it into a latent, the 3-D denoiser samples pixel-aligned features from it. Pieces:

- patch embedding (a strided convolution) and a 2-D sin-cos positional embedding computed for the
  input's own grid, so the same weights run at any resolution divisible by the patch size;
- transformer blocks with adaLN-Zero: the conditioning vector (timestep embedding, plus an optional
  extra vector such as an absolute pose) produces per-block shift/scale/gate, gates start at zero so
  every block starts as the identity;
- a final adaLN layer whose linear map (zero-initialised) un-patchifies into ``out_channels`` per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import Tensor, nn

from dfm.networks.embeddings import TimestepEmbedding


@dataclass(frozen=True)
class DiTSize:
    width: int
    depth: int
    heads: int


# The paper's sizes (DiT-S/B/L/XL) and two small ones for CPU runs.
SIZES = {
    "T": DiTSize(width=64, depth=2, heads=2),
    "XS": DiTSize(width=128, depth=4, heads=4),
    "S": DiTSize(width=384, depth=12, heads=6),
    "B": DiTSize(width=768, depth=12, heads=12),
    "L": DiTSize(width=1024, depth=24, heads=16),
    "XL": DiTSize(width=1152, depth=28, heads=16),
}


def sincos_embedding_2d(height: int, width: int, dim: int, device=None) -> Tensor:
    """Fixed 2-D positional embedding ``(height * width, dim)``: half the channels encode the row,
    half the column, each as sin/cos at geometric frequencies (MAE/DiT style)."""
    if dim % 4:
        raise ValueError(f"positional embedding width must be divisible by 4, got {dim}")
    freqs = 1.0 / 10_000 ** (torch.arange(dim // 4, device=device, dtype=torch.float32) / (dim // 4))
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freqs
    cols = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freqs
    rows = torch.cat([rows.sin(), rows.cos()], dim=-1)[:, None].expand(height, width, dim // 2)
    cols = torch.cat([cols.sin(), cols.cos()], dim=-1)[None, :].expand(height, width, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(height * width, dim)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm self-attention + MLP, both modulated and gated by the conditioning (adaLN-Zero)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        q, k, v = rearrange(self.qkv(modulate(self.norm1(x), shift1, scale1)), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        attn = rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")
        x = x + gate1[:, None] * self.proj(attn)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """``(x: (B, in_channels, H, W), t: (B,), cond: (B, cond_dim) | None) -> (B, out_channels, H, W)``.

    Args:
        size: one of ``SIZES`` ("T", "XS", "S", "B", "L", "XL"); ``width``/``depth``/``heads`` override it.
        patch_size: side of the square patches (2 in the paper); H and W must be multiples of it.
        cond_dim: width of an optional extra conditioning vector added to the timestep embedding.
        checkpointing: recompute block activations in the backward pass (less memory, ~30% slower).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        size: str = "XS",
        patch_size: int = 2,
        width: int | None = None,
        depth: int | None = None,
        heads: int | None = None,
        mlp_ratio: float = 4.0,
        cond_dim: int | None = None,
        checkpointing: bool = False,
    ):
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"unknown DiT size {size!r}; available: {sorted(SIZES)}")
        preset = SIZES[size]
        width = preset.width if width is None else width
        depth = preset.depth if depth is None else depth
        heads = preset.heads if heads is None else heads
        if width % heads or width % 4:
            raise ValueError(f"DiT width {width} must be divisible by 4 and by heads={heads}")
        self.patch_size, self.out_channels, self.width = patch_size, out_channels, width
        self.checkpointing = checkpointing
        self.patch = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.time = TimestepEmbedding(width)
        self.cond = nn.Linear(cond_dim, width) if cond_dim else None
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, patch_size * patch_size * out_channels)
        for layer in (self.final_ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"DiT input {tuple(x.shape[-2:])} is not divisible by the patch size {p}")
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        tokens = rearrange(self.patch(x), "b c h w -> b (h w) c")
        tokens = tokens + sincos_embedding_2d(gh, gw, self.width, x.device).to(tokens.dtype)
        c = self.time(t)
        if self.cond is not None:
            if cond is None:
                raise ValueError("this DiT was built with cond_dim and needs a conditioning vector")
            c = c + self.cond(cond)
        for block in self.blocks:
            if self.checkpointing and self.training:
                tokens = torch.utils.checkpoint.checkpoint(block, tokens, c, use_reentrant=False)
            else:
                tokens = block(tokens, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        out = self.out(modulate(self.norm(tokens), shift, scale))
        return rearrange(out, "b (h w) (p q c) -> b c (h p) (w q)", h=gh, w=gw, p=p, q=p)
