"""Regularisers shared by the tasks (plugged into ``DFM(regularizers=...)``)."""

from __future__ import annotations

from torch import Tensor


def edge_aware_smoothness(field: Tensor, image: Tensor, gamma: float = 10.0) -> Tensor:
    """Mean ``|d field| * exp(-gamma * mean_c |d image|)`` over horizontal and vertical neighbours.

    Penalises changes of a pixel-aligned field (flow, disparity) except where the image has an edge,
    so the field is piecewise smooth with its discontinuities on object boundaries. ``field`` is
    ``(B, C, H, W)``, ``image`` ``(B, 3, H, W)`` at the same resolution."""
    if field.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"field {tuple(field.shape[-2:])} and image {tuple(image.shape[-2:])} differ in size")
    total = field.new_zeros(())
    for dim in (-1, -2):
        d_field = field.diff(dim=dim).abs().mean(1)
        d_image = image.diff(dim=dim).abs().mean(1)
        total = total + (d_field * (-gamma * d_image).exp()).mean()
    return total
