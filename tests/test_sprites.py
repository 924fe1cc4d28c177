"""The procedural motion dataset: ground truth that agrees with the frames, uniform hidden
directions, and the Vimeo90K layout on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dfm.data.sprites import SpriteMotion, write_dataset
from dfm.data.vimeo import Vimeo90K
from dfm.splatting import softsplat


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / (a - b).square().mean()))  # images in [-1, 1]


def test_scene_shapes_and_ranges():
    gen = SpriteMotion(resolution=24, sprites=3, frames=7)
    scene = gen.scene(np.random.default_rng(0))
    assert scene.frames.shape == (7, 3, 24, 24)
    assert scene.frames.min() >= -1 and scene.frames.max() <= 1
    assert scene.masks.shape == (3, 24, 24) and scene.masks.dtype == torch.bool
    assert not (scene.masks.sum(0) > 1).any()  # a pixel belongs to at most one sprite
    assert scene.directions.shape == (3,) and ((0 <= scene.directions) & (scene.directions < 4)).all()
    assert scene.flow.shape == (2, 24, 24)
    assert torch.equal(scene.flow[:, ~scene.masks.any(0)], torch.zeros(2, int((~scene.masks.any(0)).sum())))


def test_velocities_are_the_documented_directions():
    v = SpriteMotion(speed=2.0).velocities
    np.testing.assert_allclose(v, [[2, 0], [0, -2], [-2, 0], [0, 2]], atol=1e-12)  # right, up, left, down


def test_sprite_moves_rigidly_by_its_velocity():
    """With one sprite and integer velocities, frame k+1 is frame k shifted by the velocity on the
    sprite's pixels (texture included), and the background never changes."""
    gen = SpriteMotion(resolution=32, sprites=1, speed=2.0)
    for seed in range(5):
        scene = gen.scene(np.random.default_rng(seed))
        dx, dy = (int(round(v)) for v in gen.velocities[int(scene.directions[0])])
        interior = scene.masks[0].clone()  # away from the anti-aliased edge, where the background shows through
        m = interior.clone()
        interior[:] = False
        interior[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
        ys, xs = torch.nonzero(interior, as_tuple=True)
        inside = (xs + dx >= 0) & (xs + dx < 32) & (ys + dy >= 0) & (ys + dy < 32)
        ys, xs = ys[inside], xs[inside]
        torch.testing.assert_close(scene.frames[1][:, ys + dy, xs + dx], scene.frames[0][:, ys, xs], atol=2e-3, rtol=0)


def test_splatting_by_the_true_flow_reproduces_the_next_frame():
    """The dataset and the forward model agree: softmax-splatting frame 1 by the true flow, with the
    sprites in front, gives frame 2 wherever something lands (disocclusions are holes)."""
    gen = SpriteMotion(resolution=32, sprites=2)
    scores = []
    for seed in range(8):
        scene = gen.scene(np.random.default_rng(seed))
        depth = sum((i + 1) * m.float() for i, m in enumerate(scene.masks))  # later sprites in front
        out, mask = softsplat(scene.frames[:1], scene.flow[None], 10 * depth[None, None])
        covered = mask[0, 0] > 0.99
        scores.append(psnr(out[0][:, covered], scene.frames[1][:, covered]))
        assert psnr(scene.frames[0], scene.frames[1]) < scores[-1]
    assert np.mean(scores) > 24, scores  # anti-aliased edges are not exactly a splat


def test_directions_are_uniform_and_independent_of_position():
    gen = SpriteMotion(resolution=32, sprites=1)
    rng = np.random.default_rng(1)
    scenes = [gen.scene(rng) for _ in range(800)]
    directions = np.array([int(s.directions[0]) for s in scenes])
    counts = np.bincount(directions, minlength=4)
    assert counts.min() > 160 and counts.max() < 240, counts  # 200 expected, ~4 sigma
    x = np.array([s.meta[0]["centre"][0] for s in scenes])
    assert abs(x[directions == 0].mean() - x[directions == 2].mean()) < 1.5  # right vs left movers


def test_invalid_parameters():
    with pytest.raises(ValueError, match="frames must be 3"):
        SpriteMotion(frames=4)
    with pytest.raises(ValueError, match="radius"):
        SpriteMotion(resolution=8, max_radius=5)
    with pytest.raises(ValueError, match="sprite_pattern"):
        SpriteMotion(sprite_pattern="dots")


def test_written_dataset_is_read_by_the_vimeo_loader(tmp_path):
    gen = SpriteMotion(resolution=16, sprites=1)
    root = write_dataset(tmp_path / "d", gen, sequences=10, test_fraction=0.2, seed=3, progress=False)
    train, test = Vimeo90K(root, "train"), Vimeo90K(root, "test")
    assert (train.layout, len(train.sequences), len(test.sequences)) == ("triplet", 8, 2)
    assert len(train) == 16  # two consecutive pairs per triplet
    scene = gen.scene(np.random.default_rng(3))  # the first scene written
    item = train[0]
    assert item["sequence"] == "00001/0001"
    assert (item["ctxt_obs"] - scene.frames[0]).abs().max() <= 1 / 127.5  # 8-bit PNG quantisation
    meta = json.loads((root / "sequences" / "00001" / "0001" / "meta.json").read_text())
    assert meta["sprites"][0]["direction"] == int(scene.directions[0])
    assert json.loads((root / "generator.json").read_text())["resolution"] == 16
