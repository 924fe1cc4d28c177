"""A residual MLP with FiLM conditioning: the workhorse for vector-valued signals and fields."""

from __future__ import annotations

from torch import Tensor, nn


class FiLMBlock(nn.Module):
    """Pre-norm residual block whose normalised input is scaled and shifted by the condition."""

    def __init__(self, width: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(cond_dim, 2 * width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.film(cond).chunk(2, dim=-1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class ResMLP(nn.Module):
    """``in_dim -> width -> depth x FiLMBlock(cond) -> out_dim``; the output layer starts at zero
    so that a preconditioned denoiser starts from its skip connection."""

    def __init__(self, in_dim: int, out_dim: int, cond_dim: int, width: int = 256, depth: int = 4):
        super().__init__()
        self.inp = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList(FiLMBlock(width, cond_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, out_dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, cond)
        return self.out(h)
