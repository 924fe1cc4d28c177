"""Scores over the K samples a model draws for one context: how different they are, and the best one.

A posterior sampler should give *different* plausible completions where the context is silent and
agree where it is not; :func:`pairwise_diversity` measures the first (optionally only over the
unseen region), :func:`best_of_k` the fidelity a user picking the best of K samples would get.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["best_of_k", "pairwise_diversity"]

Distance = Callable[[Tensor, Tensor], Tensor]  # (B, 3, H, W) x2 in [-1, 1] -> (B,), e.g. an LPIPS network
_PAIRS_PER_BATCH = 32  # bounds the memory of a network distance on K(K-1)/2 pairs


@torch.no_grad()
def pairwise_diversity(samples: Tensor, distance: Distance | None, mask: Tensor | None = None) -> float:
    """Mean distance over all pairs ``i < j`` of one context's samples ``(K, 3, H, W)`` in [-1, 1].

    ``distance`` is a per-pair network distance such as LPIPS, or None for the mean absolute pixel
    difference. ``mask`` ``(1, H, W)`` (bool or 0/1) restricts the measure to a region, typically the
    part the context does not see: the pixel distance averages over the region only; for a network
    both images are painted 0 (mid-grey) outside it, so only the region differs, while the network
    still averages over the whole frame (compare such values only between equal masks).
    """
    if samples.dim() != 4 or len(samples) < 2:
        raise ValueError(f"pairwise_diversity needs (K >= 2, C, H, W) samples, got {tuple(samples.shape)}")
    if mask is not None:
        if mask.shape != (1, *samples.shape[-2:]):
            raise ValueError(f"mask must be (1, H, W) = {(1, *samples.shape[-2:])}, got {tuple(mask.shape)}")
        mask = mask.to(samples)
        if mask.sum() == 0:
            raise ValueError("mask selects no pixel")
    i, j = torch.triu_indices(len(samples), len(samples), offset=1, device=samples.device)  # (P,) each
    if distance is None:
        diff = (samples[i] - samples[j]).abs()  # (P, C, H, W)
        if mask is None:
            return diff.mean().item()
        return ((diff * mask).sum() / (mask.sum() * diff.shape[0] * diff.shape[1])).item()
    if mask is not None:
        samples = samples * mask
    chunks = zip(i.split(_PAIRS_PER_BATCH), j.split(_PAIRS_PER_BATCH))
    return (sum(distance(samples[a], samples[b]).sum() for a, b in chunks) / len(i)).item()


@torch.no_grad()
def best_of_k(
    samples: Tensor, truth: Tensor, score: Callable[[Tensor, Tensor], Tensor], higher_is_better: bool = True
) -> float:
    """Best value of ``score(samples, truth) -> (K,)`` among the K samples ``(K, 3, H, W)`` for one
    ``truth`` ``(3, H, W)``: e.g. :func:`~dfm.metrics.psnr`, or an LPIPS distance with
    ``higher_is_better=False``."""
    values = score(samples, truth)  # (K,)
    return (values.max() if higher_is_better else values.min()).item()
