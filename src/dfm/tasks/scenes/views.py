"""Which views, and which pixels of them, a training example of the 3-D task uses.

:class:`ViewSelection` owns the choice of context, target and novel views; :class:`PatchGeometry`
owns the square of pixels that is rendered and compared. The dataset draws both; the renderer
reads the same geometry to cast the rays of a patch, so the two cannot disagree.

Two ways of choosing views, for the two kinds of data:

- ``canonical`` (Synth3D): view 0 is the scene's canonical context camera (it defines which side is
  hidden), plus ``context_views - 1`` others; the target is any other view (or one of
  ``target_views``); the novel view any view but the target, the context included, so that the
  sampled scene is also trained to reproduce the images it was given.
- ``interval`` (Co3D, RealEstate10k: views are video frames): as the paper does, a random context
  frame, a target ``min_gap`` to ``max_gap`` frames after it (or before it, with ``reverse``: the
  frame order reversed at random, an augmentation for RealEstate10k's forward-moving cameras), a
  novel frame between them, and ``context_views - 1`` more context frames from the same stretch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dfm.config import check_values
from dfm.data.vimeo import DatasetError

MODES = ("canonical", "interval")


@dataclass
class ViewSelection:
    mode: str = "canonical"  # canonical | interval (see the module docstring)
    context_views: int = 1
    target_views: list[int] | None = None  # canonical: the views a target is drawn from; None: any but view 0
    min_gap: int = 1  # interval: the target's distance from the context frame, in frames
    max_gap: int = 8
    reverse: bool = False  # interval: reverse the frame order at random

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"data.views.mode must be one of {MODES}, got {self.mode!r}")
        check_values(self, "data.views", positive=["context_views", "min_gap", "max_gap"])
        if self.min_gap > self.max_gap:
            raise ValueError(f"data.views.min_gap ({self.min_gap}) must be <= data.views.max_gap ({self.max_gap})")

    def needed(self) -> int:
        """The fewest views a scene must have."""
        return self.context_views + 1 if self.mode == "canonical" else max(self.context_views, 2) + self.min_gap - 1

    def check(self, num_views: int, where: str) -> None:
        """DatasetError unless a scene of ``num_views`` views can give an example."""
        if num_views < self.needed():
            raise DatasetError(f"{where} has {num_views} views; data.views ({self.mode}, {self.context_views} context) needs {self.needed()}")
        if self.mode == "canonical" and self.target_views is not None and not (
            self.target_views and all(0 < v < num_views for v in self.target_views)
        ):
            raise DatasetError(f"target_views {list(self.target_views)}: {where} has views 0-{num_views - 1}, and view 0 is always the context")

    def draw(self, num_views: int, rng: np.random.Generator) -> tuple[list[int], int, int]:
        """``(context views, target view, novel view)`` of a scene with ``num_views`` views."""
        if self.mode == "canonical":
            others = 1 + rng.permutation(num_views - 1)
            k = self.context_views
            target = int(others[k - 1] if self.target_views is None else rng.choice(self.target_views))
            context = [0, *[int(v) for v in others if v != target][: k - 1]]
            novel = int(rng.choice([v for v in range(num_views) if v != target]))
            return context, target, novel
        gap = int(rng.integers(self.min_gap, min(self.max_gap, num_views - 1) + 1))
        start = int(rng.integers(0, num_views - gap))
        first, last = start, start + gap
        if self.reverse and rng.random() < 0.5:
            first, last = last, first
        between = [v for v in range(min(first, last), max(first, last) + 1) if v != last]  # the context frame too
        novel = int(rng.choice(between))
        extra = [v for v in between if v != first]
        context = [first, *[int(v) for v in rng.permutation(extra)[: self.context_views - 1]]]
        return context, last, novel


@dataclass
class PatchGeometry:
    """A ``size x size`` square of a ``resolution x resolution`` image; ``size`` None: the whole image."""

    resolution: int
    size: int | None = None

    def __post_init__(self) -> None:
        if self.size is not None and not 0 < self.size <= self.resolution:
            raise ValueError(f"data.patch_size {self.size} does not fit {self.resolution}x{self.resolution} images")

    def draw(self, rng: np.random.Generator, count: int) -> Tensor:
        """``count`` random patches' ``(top, left)`` ``(count, 2)``, uniform over the positions inside the image."""
        return torch.from_numpy(rng.integers(0, self.resolution - self.size + 1, size=(count, 2)))

    def crop(self, image: Tensor, patch: Tensor) -> Tensor:
        """The patch ``(top, left)`` of ``image`` ``(..., H, W)``."""
        top, left = int(patch[0]), int(patch[1])
        return image[..., top : top + self.size, left : left + self.size]
