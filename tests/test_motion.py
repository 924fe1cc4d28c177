"""The motion task: forward model, denoiser, regulariser, flow pictures, and a tiny training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfm.data.sprites import SpriteMotion, write_dataset
from dfm.networks.dit import DiT
from dfm.regularizers import edge_aware_smoothness
from dfm.runs import make_task
from dfm.tasks.motion import MotionDenoiser, MotionField, SplatWarp, motion_video, sample_motions
from dfm.visualize import flow_to_color


def test_splat_warp_moves_the_frame():
    frame = torch.zeros(1, 3, 8, 8)
    frame[..., 2, 3] = 1.0
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0], flow[:, 1] = 2.0, -1.0
    out = SplatWarp()(MotionField(flow, torch.zeros(1, 1, 8, 8)), frame)
    assert out[0, :, 1, 5].tolist() == [1.0, 1.0, 1.0] and out.sum() == 3
    with pytest.raises(ValueError, match="splatting mode"):
        SplatWarp("nearest")


def test_denoiser_outputs_a_bounded_motion_field():
    dit = DiT(6, 3, size="T", width=32, depth=1, heads=2)
    with torch.no_grad():
        dit.out.bias.copy_(torch.tensor([0.5, -1.0, 100.0] * 4))  # 2x2 patches, 3 channels
    field = MotionDenoiser(dit, flow_scale=4.0, metric_range=20.0)(torch.zeros(2, 3, 8, 8), None, torch.zeros(2, 3, 8, 8), torch.ones(2), None)
    assert field.flow.shape == (2, 2, 8, 8) and field.metric.shape == (2, 1, 8, 8)
    torch.testing.assert_close(field.flow[:, 0], torch.full((2, 8, 8), 2.0))
    torch.testing.assert_close(field.flow[:, 1], torch.full((2, 8, 8), -4.0))
    assert (field.metric < 20).all() and (field.metric > 19).all()


def test_edge_aware_smoothness_known_values():
    flat = torch.zeros(1, 3, 4, 4)
    assert edge_aware_smoothness(torch.ones(1, 2, 4, 4), flat) == 0
    step = torch.zeros(1, 2, 4, 4)
    step[..., 2:] = 1.0  # a unit jump between columns 1 and 2, in both channels
    # horizontal differences: 4 rows x 3 pairs, one pair per row jumps -> mean 1/3; vertical: 0
    torch.testing.assert_close(edge_aware_smoothness(step, flat), torch.tensor(1 / 3))
    edge = torch.zeros(1, 3, 4, 4)
    edge[..., 2:] = 0.5  # an image edge in the same place discounts the jump by exp(-gamma * 0.5)
    torch.testing.assert_close(edge_aware_smoothness(step, edge, gamma=2.0), torch.tensor(np.exp(-1.0) / 3, dtype=torch.float32))
    with pytest.raises(ValueError, match="differ in size"):
        edge_aware_smoothness(step, torch.zeros(1, 3, 8, 8))


def test_flow_colours():
    flow = torch.zeros(2, 1, 3)
    flow[0, 0, 1] = 1.0  # +x: red
    flow[1, 0, 2] = -1.0  # up on screen: hue 1/4 (yellow-green)
    rgb = (flow_to_color(flow) + 1) / 2
    torch.testing.assert_close(rgb[:, 0, 0], torch.ones(3))  # still: white
    torch.testing.assert_close(rgb[:, 0, 1], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(rgb[:, 0, 2], torch.tensor([0.5, 1.0, 0.0]))


def test_motion_video_starts_at_the_frame_and_reaches_the_warp():
    frame = torch.rand(3, 6, 6) * 2 - 1
    field = MotionField(torch.ones(2, 6, 6), torch.zeros(1, 6, 6))
    video = motion_video(frame, field, steps=5)
    assert len(video) == 10
    torch.testing.assert_close(video[0], frame)
    torch.testing.assert_close(video[4][:, 1:, 1:], frame[:, :-1, :-1])


@pytest.fixture(scope="module")
def sprites_root(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("motion"), SpriteMotion(resolution=16, sprites=1, max_radius=5), 24, progress=False)


def tiny_task(root, *overrides):
    raw = {"task": "motion", "data": {"root": str(root)}}
    return make_task(raw, ["model.size=T", "model.width=32", "model.depth=1", *overrides])


def test_training_on_one_batch_lowers_the_loss(sprites_root):
    torch.manual_seed(0)
    task = tiny_task(sprites_root)
    model = task.build_model()
    data = task.train_dataset()
    batch = torch.utils.data.default_collate([data[i] for i in range(16)])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for step in range(60):
        loss = model(batch, torch.Generator().manual_seed(step % 4))  # 4 fixed noise draws
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
        losses.append(loss["target"].item())
    assert set(loss) == {"target", "smoothness", "loss"}
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:4]), losses


def test_sampling_shapes_and_seeds(sprites_root):
    task = tiny_task(sprites_root)
    model = task.build_model().eval()
    frames, truth = task.test_frames(2)
    assert frames.shape == truth.shape == (2, 3, 16, 16)
    nexts, motion = sample_motions(model, frames, 3, seed=1, steps=3)
    assert nexts.shape == (2, 3, 3, 16, 16) and motion.flow.shape == (2, 3, 2, 16, 16)
    again, _ = sample_motions(model, frames, 3, seed=1, steps=3)
    torch.testing.assert_close(nexts, again)
