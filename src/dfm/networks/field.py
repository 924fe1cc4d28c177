"""A pixel-aligned radiance field (pixelNeRF-style) conditioned on the diffusion time: the 3-D denoiser's signal.

Each query point is projected into every view; the view's feature map (from an image encoder, e.g.
:class:`dfm.networks.dit.DiT` or :class:`dfm.networks.cnn.ConvEncoder`) is sampled bilinearly there
and concatenated with a positional encoding of the point in that view's camera frame. A residual MLP
with FiLM from the timestep embedding processes each view separately for the first ``mean_after``
blocks, averages over the views and finishes with the remaining blocks. Cameras follow
:mod:`dfm.cameras` (OpenCV, normalised intrinsics).

Dimension names (jaxtyping): ``B`` scenes; ``V`` views per scene; ``F`` feature channels and
``H W`` the size of a feature map; ``*points`` the query points' shape within a scene (typically
``R S``: rays, samples per ray); ``G`` the width of the global latent; ``*batch D`` coordinates of
any shape.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Real
from torch import Tensor, nn

from dfm.cameras import world_to_camera
from dfm.networks.embeddings import TimestepEmbedding
from dfm.networks.mlp import FiLMBlock
from dfm.rendering import Field


def positional_encoding(
    x: Float[Tensor, "*batch D"], num_frequencies: int, include_input: bool = True
) -> Float[Tensor, "*batch D*({include_input}+2*{num_frequencies})"]:
    """NeRF's encoding of coordinates ``x``: ``[x, sin(f_0 x), cos(f_0 x), ..., sin(f_{L-1} x),
    cos(f_{L-1} x)]`` with ``f_k = 2^k pi`` and ``L = num_frequencies``, each entry ``D`` wide."""
    freqs = math.pi * 2.0 ** torch.arange(num_frequencies, dtype=x.dtype, device=x.device)
    args = x[..., None, :] * freqs[:, None]  # (..., L, D)
    encoded = torch.cat([args.sin(), args.cos()], -1).flatten(-2)
    return torch.cat([x, encoded], -1) if include_input else encoded


def sample_pixel_features(
    feature_maps: Float[Tensor, "B V F H W"],
    points: Float[Tensor, "B V *points 3"],
    c2w: Float[Tensor, "B V 4 4"],
    K: Float[Tensor, "B V 3 3"],
    *,
    min_depth: float = 1e-6,
) -> tuple[Float[Tensor, "B V *points F"], Float[Tensor, "B V *points 3"], Bool[Tensor, "B V *points 1"]]:
    """Project world ``points`` ``[b, v]`` into view ``v`` of scene ``b`` and bilinearly sample that
    view's ``feature_maps`` there.

    Returns ``features``, the points in each camera's frame ``points_cam`` and ``valid``: the point
    lies in front of the camera (z-depth > ``min_depth``) and projects inside the image,
    ``0 <= u, v <= 1``. Invalid points get zero features (and no gradient through them).

    Convention: normalised ``uv`` in [0, 1] spans the image from its outer pixel edges (as in
    :mod:`dfm.cameras`), so pixel ``(i, j)`` (row, column) has its centre at ``((j + 0.5) / W, (i + 0.5) /
    H)``. ``F.grid_sample`` with ``align_corners=False`` uses the same edge-to-edge convention on [-1, 1],
    so ``grid = 2 uv - 1`` and a point projecting to that centre reads exactly ``feature_maps[..., i, j]``.
    Within half a pixel of the border bilinear sampling blends with zeros (``padding_mode="zeros"``).

    The projection is ``dfm.cameras.project``'s, with the division by depth guarded, so that points
    on or behind a camera's plane give no inf/NaN values or gradients.
    """
    B, V, C, H, W = feature_maps.shape
    batch = points.shape[:-1]
    points_cam = world_to_camera(points.reshape(B, V, -1, 3), c2w)  # (B, V, N, 3)
    z = points_cam[..., 2:]
    front = z > min_depth
    focal = torch.diagonal(K[..., :2, :2], dim1=-2, dim2=-1)[..., None, :]  # (B, V, 1, 2): fx, fy
    uv = focal * points_cam[..., :2] / torch.where(front, z, torch.ones_like(z)) + K[..., None, :2, 2]
    valid = front & ((uv >= 0) & (uv <= 1)).all(-1, keepdim=True)
    grid = (2 * uv - 1).flatten(0, 1)[:, :, None]  # (B V, N, 1, 2)
    sampled = F.grid_sample(feature_maps.flatten(0, 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    features = sampled[..., 0].unflatten(0, (B, V)).transpose(-1, -2) * valid  # (B, V, N, F)
    return features.reshape(*batch, C), points_cam.reshape(*batch, 3), valid.reshape(*batch, 1)


class PixelAlignedField(nn.Module):
    """:meth:`forward` returns a dict with, per point,

    - ``density`` ``(B *points 1)``: softplus, so it is positive everywhere and empty space keeps a
      gradient (a ReLU density that reaches exactly 0 can never become occupied again);
    - ``rgb`` ``(B *points 3)`` in [-1, 1] (tanh), the models' image range: render it with
      ``background=-1`` for the paper's black background;
    - ``features`` ``(B *points out_features)``, unbounded, only when ``out_features > 0``.

    Points and directions are in world space (directions unit length, as rays give them).
    :meth:`bind` fixes the conditioning and returns a plain field for :func:`dfm.rendering.render_rays`.

    Args:
        feature_dim: channels ``F`` of the feature maps.
        width, blocks: the residual MLP (512 and 5 in the paper).
        mean_after: blocks run per view before the mean over views (3 in the paper; 0 averages right
            after the input layer).
        num_frequencies: positional-encoding frequencies of the point in each camera frame.
        direction_frequencies: if not None, also encode the viewing direction in each camera frame
            with that many frequencies (0: the raw direction).
        out_features: extra feature channels to output (composited like ``rgb``).
        global_dim: width of an optional global latent per scene (e.g. pooled from the noisy-target
            encoder), added to the timestep embedding that FiLMs every block. Pixel-aligned features
            are local, so without it the field can choose a colour region by region (a sample split
            between two modes); a global vector lets every query agree on one mode.
        masked_mean: average only over the views in which the point is valid (in front and inside
            the image), so views that cannot see a point do not dilute it; a point that no view sees
            averages over all of them (its features are zero, its position still informs the MLP).
    """

    def __init__(
        self,
        feature_dim: int,
        *,
        width: int = 128,
        blocks: int = 5,
        mean_after: int = 3,
        num_frequencies: int = 6,
        direction_frequencies: int | None = None,
        out_features: int = 0,
        global_dim: int | None = None,
        masked_mean: bool = True,
    ):
        super().__init__()
        if not 0 <= mean_after <= blocks:
            raise ValueError(f"mean_after must be in [0, blocks={blocks}], got {mean_after}")
        self.num_frequencies, self.direction_frequencies = num_frequencies, direction_frequencies
        self.out_features, self.masked_mean = out_features, masked_mean
        in_dim = feature_dim + 3 * (1 + 2 * num_frequencies)
        if direction_frequencies is not None:
            in_dim += 3 * (1 + 2 * direction_frequencies)
        self.inp = nn.Linear(in_dim, width)
        self.time = TimestepEmbedding(width)
        self.latent = nn.Linear(global_dim, width) if global_dim else None
        self.view_blocks = nn.ModuleList(FiLMBlock(width, width) for _ in range(mean_after))
        self.scene_blocks = nn.ModuleList(FiLMBlock(width, width) for _ in range(blocks - mean_after))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, 4 + out_features))

    def forward(
        self,
        points: Float[Tensor, "B *points 3"],
        directions: Float[Tensor, "B *points 3"],
        feature_maps: Float[Tensor, "B V F H W"],
        c2w: Float[Tensor, "B V 4 4"],
        K: Float[Tensor, "B V 3 3"],
        t: Real[Tensor, "B"],
        latent: Float[Tensor, "B G"] | None = None,
    ) -> dict[str, Float[Tensor, "B *points _"]]:
        B, V = feature_maps.shape[:2]
        if points.shape[0] != B:
            raise ValueError(f"points {tuple(points.shape)} and feature maps {tuple(feature_maps.shape)} differ in batch size")
        batch = points.shape[:-1]
        flat = points.reshape(B, 1, -1, 3).expand(B, V, -1, 3)
        features, points_cam, valid = sample_pixel_features(feature_maps, flat, c2w, K)  # (B, V, N, .)
        inputs = [features, positional_encoding(points_cam, self.num_frequencies)]
        if self.direction_frequencies is not None:
            directions_cam = torch.einsum("bvji,bnj->bvni", c2w[..., :3, :3], directions.reshape(B, -1, 3))
            inputs.append(positional_encoding(directions_cam, self.direction_frequencies))

        c = self.time(t)
        if self.latent is not None:
            if latent is None:
                raise ValueError("this field was built with global_dim and needs a latent")
            c = c + self.latent(latent)
        h = self.inp(torch.cat(inputs, -1))  # (B, V, N, width)
        for block in self.view_blocks:
            h = block(h, c[:, None, None])
        if self.masked_mean:
            w = valid.to(h.dtype)
            w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))
            h = (w * h).sum(1) / w.sum(1)
        else:
            h = h.mean(1)
        for block in self.scene_blocks:
            h = block(h, c[:, None])

        raw = self.out(h).reshape(*batch, 4 + self.out_features)
        out = {"density": F.softplus(raw[..., :1]), "rgb": torch.tanh(raw[..., 1:4])}
        if self.out_features:
            out["features"] = raw[..., 4:]
        return out

    def bind(
        self,
        feature_maps: Float[Tensor, "B V F H W"],
        c2w: Float[Tensor, "B V 4 4"],
        K: Float[Tensor, "B V 3 3"],
        t: Real[Tensor, "B"],
        latent: Float[Tensor, "B G"] | None = None,
    ) -> Field:
        """This field with its conditioning fixed: ``(points, directions) -> dict``, for
        :func:`dfm.rendering.render_rays` on rays ``(B R 3)`` (its chunks split ``R`` and keep ``B``)."""
        return partial(self, feature_maps=feature_maps, c2w=c2w, K=K, t=t, latent=latent)
