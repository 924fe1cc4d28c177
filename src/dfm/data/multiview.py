"""Multi-view scene sources: what the 3-D task reads, whichever dataset it comes from.

A *source* is a list of scenes. Scene ``i`` has ``num_views(i)`` views, in capture order for video
datasets (Co3D, RealEstate10k: view distance is frame distance), and ``load(i, views)`` reads only the
views asked for, so choosing views never decodes a whole sequence. Every source returns the same
:class:`MultiViewScene`, in the conventions of :mod:`dfm.cameras`: OpenCV camera-to-world ``c2w``,
intrinsics normalised by the image size, images in ``[-1, 1]``, z-depth. Sources that read images of
another size or shape bring them to the model's square resolution with :func:`square_crop_resize`,
which moves the intrinsics exactly with the pixels.

Implementations: :class:`dfm.data.synth3d.Synth3DSource` (the procedural scenes),
:class:`dfm.data.co3d.Co3DSource`, :class:`dfm.data.re10k.RealEstate10kSource`; :func:`open_source`
opens one by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from dfm.cameras import CameraError, validate_cameras
from dfm.data.vimeo import DatasetError


@dataclass
class MultiViewScene:
    """Some views of one scene. ``near``/``far`` bound the scene along every ray (distances from the
    camera centre, in the scene's world units after any normalisation the source applies)."""

    scene_id: str
    images: Tensor  # (V, 3, H, W) float32 in [-1, 1]
    c2w: Tensor  # (V, 4, 4) float32, OpenCV camera-to-world
    K: Tensor  # (V, 3, 3) float32, normalised by the image size
    near: float
    far: float
    masks: Tensor | None = None  # (V, 1, H, W) bool, the object (Co3D, Synth3D)
    depths: Tensor | None = None  # (V, 1, H, W) float32 z-depth, 0 where unknown

    def select(self, views: Sequence[int]) -> MultiViewScene:
        """The same scene with only ``views`` (indices into this one's views), in that order."""
        index = list(views)
        return replace(
            self, images=self.images[index], c2w=self.c2w[index], K=self.K[index],
            masks=None if self.masks is None else self.masks[index],
            depths=None if self.depths is None else self.depths[index],
        )


class SceneSource(Protocol):
    """A dataset of multi-view scenes (see the module docstring)."""

    def __len__(self) -> int: ...

    def scene_id(self, index: int) -> str: ...

    def num_views(self, index: int) -> int: ...

    def load(self, index: int, views: Sequence[int] | None = None) -> MultiViewScene: ...


SOURCES = ("synth3d", "co3d", "re10k")


def open_source(
    kind: str, root: str | Path, split: str, resolution: int, near: float | None = None, far: float | None = None,
    *, category: str | None = None, subset: str | None = None, min_quality: float | None = None,
    min_point_cloud_quality: float | None = None,
) -> SceneSource:
    """The scenes of ``split`` of a dataset by name (``SOURCES``), at ``resolution``; ``near``/``far``
    None: the source's defaults. ``category``, ``subset`` and the quality thresholds are Co3D's."""
    bounds = {k: v for k, v in (("near", near), ("far", far)) if v is not None}
    if kind == "synth3d":
        from dfm.data.synth3d import Synth3DSource

        return Synth3DSource(root, split, resolution, **bounds)
    if kind == "co3d":
        from dfm.data.co3d import Co3DSource

        if not category:
            raise DatasetError("Co3D needs a category (e.g. hydrant)")
        options = {"subset": subset} if subset else {}
        return Co3DSource(
            root, category, split=split, resolution=resolution, min_quality=min_quality,
            min_point_cloud_quality=min_point_cloud_quality, **options, **bounds,
        )
    if kind == "re10k":
        from dfm.data.re10k import RealEstate10kSource

        return RealEstate10kSource(root, split, resolution, **bounds)
    raise ValueError(f"unknown scene source {kind!r}; available: {SOURCES}")


def square_crop_resize(
    images: Tensor, K: Tensor, size: int, masks: Tensor | None = None, depths: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Crop the centred square of side ``min(H, W)`` from ``(V, C, H, W)`` images (the crop starts at a
    whole pixel, ``(W - s) // 2``), then resize it to ``size x size``; returns the images and the
    normalised ``K`` of the result, which follows exactly: in pixels the principal point moves by the
    crop offset and everything scales by ``size / s``, so in normalised units ``fx' = fx W / s``,
    ``cx' = (cx W - left) / s`` (likewise for y). Pixel centres map to pixel centres (half-pixel
    convention: the resize is ``align_corners=False``; area averaging when shrinking, bilinear when
    growing). Masks are resized by area and thresholded at 1/2, depths by nearest neighbour."""
    height, width = images.shape[-2:]
    s = min(height, width)
    top, left = (height - s) // 2, (width - s) // 2

    def crop(x: Tensor) -> Tensor:
        return x[..., top : top + s, left : left + s]

    def resize(x: Tensor, mode: str) -> Tensor:
        if s == size:
            return x
        if mode == "smooth":
            mode = "area" if size < s else "bilinear"
        return F.interpolate(x, size=(size, size), mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))

    scale = torch.tensor([width / s, height / s, 1.0], dtype=K.dtype, device=K.device)[:, None]
    offset = torch.tensor([left / s, top / s, 0.0], dtype=K.dtype, device=K.device)
    K = K * scale
    K = torch.cat([K[..., :2], (K[..., 2] - offset)[..., None]], -1)  # only the last column moves
    images = resize(crop(images), "smooth")
    if masks is not None:
        masks = resize(crop(masks).float(), "smooth") > 0.5
    if depths is not None:
        depths = resize(crop(depths), "nearest-exact")
    return images, K, masks, depths


def checked_cameras(c2w: Tensor, K: Tensor, source: str) -> None:
    """:func:`dfm.cameras.validate_cameras`, raising the :class:`DatasetError` that loaders raise."""
    try:
        validate_cameras(c2w, K, source)
    except CameraError as error:
        raise DatasetError(str(error)) from error
