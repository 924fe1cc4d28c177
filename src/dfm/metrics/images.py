"""Per-image reconstruction scores: PSNR, SSIM and LPIPS of predictions against a ground truth.

All take images in [-1, 1], the convention inside models, and return one score per predicted image
``(N,)``; ``truth`` is ``(N, 3, H, W)`` or a single ``(3, H, W)`` image that every prediction is
compared with. Both are clamped to [-1, 1] first (a sample's overshoot cannot be displayed), and
PSNR and SSIM see them mapped to [0, 1] with ``data_range=1``, as in the image literature.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dfm.metrics.inception import MetricWeightsError
from dfm.networks.lpips import LPIPS

__all__ = ["lpips_distance", "psnr", "ssim"]


def _pair(pred: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
    """``pred`` ``(N, 3, H, W)`` and ``truth`` expanded to it, both clamped to [-1, 1]."""
    if pred.dim() != 4 or truth.shape not in (pred.shape, pred.shape[1:]):
        raise ValueError(
            f"expected pred (N, C, H, W) and truth (C, H, W) or (N, C, H, W) of the same size, "
            f"got {tuple(pred.shape)} and {tuple(truth.shape)}"
        )
    return pred.clamp(-1, 1), truth.expand_as(pred).clamp(-1, 1)


def _unit(pred: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
    p, t = _pair(pred, truth)
    return (p + 1) / 2, (t + 1) / 2


def psnr(pred: Tensor, truth: Tensor) -> Tensor:
    """``(N,)`` PSNR in dB, ``10 log10(1 / MSE)`` on [0, 1] images (``inf`` for a perfect match)."""
    # Imported on use: torchmetrics adds ~0.5 s to `import dfm.metrics`, which toy tasks import.
    from torchmetrics.functional.image import peak_signal_noise_ratio

    p, t = _unit(pred, truth)
    return peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(pred: Tensor, truth: Tensor) -> Tensor:
    """``(N,)`` SSIM (11x11 Gaussian window, torchmetrics' defaults) on [0, 1] images."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    p, t = _unit(pred, truth)
    return structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")


@torch.no_grad()
def lpips_distance(network: LPIPS | None, pred: Tensor, truth: Tensor) -> Tensor:
    """``(N,)`` LPIPS distances through ``network`` (from :func:`dfm.networks.lpips.load_lpips`).

    Raises:
        MetricWeightsError: ``network`` is None, i.e. ``load_lpips`` had no weight files: a score from
            a random network would look valid but mean nothing.
    """
    if network is None:
        raise MetricWeightsError(
            "LPIPS needs its weights: build the network with dfm.networks.lpips.load_lpips(backbone_path, "
            "linear_path), which returns None when the files are not given"
        )
    return network(*_pair(pred, truth))
