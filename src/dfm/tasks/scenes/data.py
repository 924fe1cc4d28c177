"""Training examples for the 3-D task: (context views, target view, novel view) of one scene, from
any scene source (:mod:`dfm.data.multiview`), with the views chosen by a :class:`ViewSelection` and
the compared pixels by a :class:`PatchGeometry` (:mod:`.views`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dfm.data.multiview import MultiViewScene, SceneSource
from dfm.data.vimeo import DatasetError
from dfm.tasks.scenes.views import PatchGeometry, ViewSelection


def cameras(scene: MultiViewScene, views) -> dict[str, Tensor]:
    """The parameters of ``views`` (an index or a list of them) of ``scene`` as the denoiser and the
    renderer take them: ``c2w``, ``K``, and the scene's ``near``/``far`` (scalars)."""
    return {
        "c2w": scene.c2w[views], "K": scene.K[views],
        "near": torch.tensor(scene.near, dtype=torch.float32), "far": torch.tensor(scene.far, dtype=torch.float32),
    }


class SceneViews(Dataset):
    """Item ``i`` draws views and patches of scene ``i % scenes`` from ``(seed, i)`` alone, and each
    scene appears ``repeats`` times per epoch with different draws.

    Keys: ``ctxt_obs`` ``(V, 3, H, W)``, ``ctxt_params`` (:func:`cameras` of the context views),
    ``trgt_obs`` ``(3, H, W)`` (the whole view: the denoiser sees all of it, noised), ``trgt_params``,
    ``novel_obs`` and ``novel_params``, and with a patch ``trgt_pixels`` (the target's patch) and
    ``patch`` (top, left) in both params."""

    def __init__(self, source: SceneSource, views: ViewSelection, patches: PatchGeometry, repeats: int = 1, seed: int = 0):
        if len(source) == 0:
            raise DatasetError(f"{source} holds no scenes")
        for i in range(len(source)):
            views.check(source.num_views(i), f"scene {source.scene_id(i)} of {source}")
        self.source, self.views, self.patches, self.repeats, self.seed = source, views, patches, repeats, seed

    def __len__(self) -> int:
        return len(self.source) * self.repeats

    def __getitem__(self, index: int) -> dict:
        i = index % len(self.source)
        rng = np.random.default_rng([self.seed, index])
        context, target, novel = self.views.draw(self.source.num_views(i), rng)
        scene = self.source.load(i, [*context, target, novel])
        size = self.patches.resolution
        if scene.images.shape[-2:] != (size, size):
            raise DatasetError(f"scene {scene.scene_id} of {self.source} has {tuple(scene.images.shape[-2:])} images, not {size}x{size}")
        k = len(context)
        item = {
            "ctxt_obs": scene.images[:k], "ctxt_params": cameras(scene, list(range(k))),
            "trgt_obs": scene.images[k], "trgt_params": cameras(scene, k),
            "novel_obs": scene.images[k + 1], "novel_params": cameras(scene, k + 1),
        }
        if self.patches.size is not None:
            patch, novel_patch = self.patches.draw(rng, 2)
            item["trgt_params"]["patch"] = patch
            item["trgt_pixels"] = self.patches.crop(item["trgt_obs"], patch)
            item["novel_params"]["patch"] = novel_patch
            item["novel_obs"] = self.patches.crop(item["novel_obs"], novel_patch)
        return item
