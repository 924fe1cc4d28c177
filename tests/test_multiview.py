"""The scene-source helpers: centre crop and resize with intrinsics that follow exactly, view selection, and
opening a source by name."""

from __future__ import annotations

import pytest
import torch

from dfm.cameras import normalized_intrinsics, pixel_intrinsics
from dfm.data.multiview import MultiViewScene, open_source, square_crop_resize
from dfm.data.vimeo import DatasetError


@pytest.mark.parametrize("height, width, size", [(6, 10, 3), (10, 6, 6), (8, 8, 4), (4, 6, 8)])
def test_crop_and_resize_moves_the_intrinsics_with_the_pixels(height, width, size):
    """A point projects to pixel coordinates that the crop shifts by its offset and the resize scales,
    and a 2x area shrink averages 2x2 blocks of the crop."""
    K = normalized_intrinsics(7.0, 6.5, width / 2 + 0.3, height / 2 - 0.2, width, height)[None]
    images = torch.arange(3 * height * width, dtype=torch.float32).reshape(1, 3, height, width) / 100
    out, K2, _, _ = square_crop_resize(images, K, size)
    s = min(height, width)
    top, left = (height - s) // 2, (width - s) // 2
    point = torch.tensor([0.3, -0.2, 2.0])
    before = pixel_intrinsics(K[0], width, height) @ point
    after = pixel_intrinsics(K2[0], size, size) @ point
    torch.testing.assert_close(after[:2] / after[2], (before[:2] / before[2] - torch.tensor([left, top])) * size / s)
    crop = images[..., top : top + s, left : left + s]
    if s == 2 * size:
        torch.testing.assert_close(out, crop.unflatten(-1, (size, 2)).unflatten(-3, (size, 2)).mean((-1, -3)))
    assert out.shape == (1, 3, size, size)


def test_masks_and_depths_follow_the_crop():
    images, K = torch.zeros(2, 3, 4, 8), normalized_intrinsics(4.0, 4.0, 4.0, 2.0, 8, 4).expand(2, 3, 3)
    masks = torch.zeros(2, 1, 4, 8, dtype=torch.bool)
    masks[..., 2:6] = True  # exactly the centred square
    depths = torch.arange(32.0).reshape(1, 1, 4, 8).expand(2, 1, 4, 8)
    _, _, m, d = square_crop_resize(images, K, 4, masks, depths)
    assert m.all() and torch.equal(d, depths[..., 2:6])


def test_select_keeps_the_views_asked_for_in_order():
    scene = MultiViewScene("s", torch.arange(3.0).view(3, 1, 1, 1).expand(3, 3, 2, 2), torch.eye(4).expand(3, 4, 4),
                           torch.eye(3).expand(3, 3, 3), 1.0, 2.0, depths=torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 2))
    two = scene.select([2, 0])
    assert two.images[:, 0, 0, 0].tolist() == [2.0, 0.0] and two.depths[:, 0, 0, 0].tolist() == [2.0, 0.0] and two.masks is None


def test_open_source_by_name(tmp_path):
    with pytest.raises(ValueError, match="unknown scene source 'nerf'"):
        open_source("nerf", tmp_path, "train", 16)
    with pytest.raises(DatasetError, match="Co3D needs a category"):
        open_source("co3d", tmp_path, "train", 16)
    with pytest.raises(DatasetError, match="does not exist"):
        open_source("synth3d", tmp_path / "nowhere", "train", 16)
