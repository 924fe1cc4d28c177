"""Training examples for the 3-D task: (context views, target view, novel view) of one scene.

View 0 of every scene is its canonical context camera (the one that defines which side is hidden,
see :mod:`dfm.data.synth3d`), so it is always a context view. The target is drawn from the other
views, or only from ``target_views`` (say, those facing what the context hides, where the denoiser
has to generate rather than copy); the novel view from every view but the target, the context
views included, so that the sampled scene is also trained to reproduce the images it was given
(with the target's features in the field, nothing else asks that of it). With ``patch_size`` a
random square of each is what the loss compares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dfm.data.synth3d import Synth3DDataset
from dfm.data.vimeo import DatasetError


class SceneViews(Dataset):
    """Item ``i`` draws views and patches of scene ``i % scenes`` from ``(seed, i)`` alone, and each
    scene appears ``repeats`` times per epoch with different draws.

    Keys: ``ctxt_obs`` ``(V, 3, H, W)``, ``ctxt_params`` (``c2w`` ``(V, 4, 4)``, ``K`` ``(V, 3, 3)``),
    ``trgt_obs`` ``(3, H, W)`` (the whole view: the denoiser sees all of it, noised), ``trgt_params``,
    ``novel_obs`` and ``novel_params``, and with a patch ``trgt_pixels`` (the target's patch) and
    ``patch`` (top, left) in both params."""

    def __init__(
        self, root: str | Path, split: str = "train", resolution: int = 32, context_views: int = 1,
        patch_size: int | None = None, repeats: int = 1, seed: int = 0, target_views: list[int] | None = None,
    ):
        self.scenes = Synth3DDataset(root, split)
        self.context_views, self.patch_size, self.repeats, self.seed = context_views, patch_size, repeats, seed
        first = self.scenes[0]
        views, _, height, width = first["images"].shape
        if (height, width) != (resolution, resolution):
            raise DatasetError(f"{root} holds {width}x{height} images; the model is configured for {resolution}x{resolution} (data.resolution)")
        if views < context_views + 1:
            raise DatasetError(f"{root} has {views} views per scene; {context_views} context views + a target need more")
        if patch_size is not None and not 0 < patch_size <= min(height, width):
            raise DatasetError(f"patch_size {patch_size} does not fit the {width}x{height} images of {root}")
        if target_views is not None and not (target_views and all(0 < v < views for v in target_views)):
            raise DatasetError(f"target_views {list(target_views)}: {root} has views 0-{views - 1}, and view 0 is always the context")
        self.resolution, self.target_views = height, target_views

    def __len__(self) -> int:
        return len(self.scenes) * self.repeats

    def __getitem__(self, index: int) -> dict:
        scene = self.scenes[index % len(self.scenes)]
        rng = np.random.default_rng([self.seed, index])
        others = 1 + rng.permutation(len(scene["images"]) - 1)
        k = self.context_views
        target = int(others[k - 1] if self.target_views is None else rng.choice(self.target_views))
        context = [0, *[int(v) for v in others if v != target][: k - 1]]
        novel = int(rng.choice([v for v in range(len(scene["images"])) if v != target]))

        def cameras(view) -> dict[str, Tensor]:
            return {"c2w": scene["c2w"][view], "K": scene["K"][view]}

        item = {
            "ctxt_obs": scene["images"][context], "ctxt_params": cameras(context),
            "trgt_obs": scene["images"][target], "trgt_params": cameras(target),
            "novel_obs": scene["images"][novel], "novel_params": cameras(novel),
        }
        if self.patch_size is not None:
            p = self.patch_size
            (top, left), (novel_top, novel_left) = rng.integers(0, self.resolution - p + 1, size=(2, 2))
            item["trgt_params"]["patch"] = torch.tensor([top, left])
            item["trgt_pixels"] = item["trgt_obs"][:, top : top + p, left : left + p]
            item["novel_params"]["patch"] = torch.tensor([novel_top, novel_left])
            item["novel_obs"] = item["novel_obs"][:, novel_top : novel_top + p, novel_left : novel_left + p]
        return item
