"""Forward models: ``forward(signal, params) -> observation``, differentiable and batched.

Any callable (or ``nn.Module``) with this signature is a forward model; the engine needs nothing
more. The application-specific ones (volume rendering, splatting, generators) live with their tasks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dfm.configurable import Configurable


class LinearProjection(Configurable, nn.Module):
    """Observe a vector signal through a per-example matrix: ``O = A S`` (params ``A``: ``(B, M, D)``)."""

    def forward(self, signal: Tensor, params: Tensor) -> Tensor:
        return torch.einsum("bmd,bd->bm", params, signal)
