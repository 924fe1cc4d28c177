"""The motion task: forward model, denoiser, regulariser, flow pictures, and a tiny training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dfm.data.sprites import SpriteMotion, write_dataset
from dfm.diffusion import NoiseSchedule
from dfm.networks.dit import DiT
from dfm.regularizers import edge_aware_smoothness
from dfm.runs import make_task
from dfm.tasks.motion import MotionDenoiser, MotionField, SplatWarp, coarse_warp_error, motion_video, sample_motions
from dfm.visualize import flow_to_color


def test_splat_warp_moves_the_frame():
    frame = torch.zeros(1, 3, 8, 8)
    frame[..., 2, 3] = 1.0
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0], flow[:, 1] = 2.0, -1.0
    out = SplatWarp(fill=False)(MotionField(flow, torch.zeros(1, 1, 8, 8)), frame)
    assert out[0, :, 1, 5].tolist() == [1.0, 1.0, 1.0] and out.sum() == 3
    # filled: the column and row the shift uncovers copy their covered neighbours (0 here), and
    # the source's old place, covered by its left neighbour, stays 0 as well
    filled = SplatWarp()(MotionField(flow, torch.zeros(1, 1, 8, 8)), frame)
    assert filled[0, :, 1, 5].tolist() == [1.0, 1.0, 1.0] and filled[0, :, 7, :2].abs().sum() == 0
    with pytest.raises(ValueError, match="splatting mode"):
        SplatWarp("nearest")


class FixedFlow(torch.nn.Module):
    """A stand-in for the DiT that outputs one flow (in units of flow_scale) whatever it reads."""

    def __init__(self, flow: torch.Tensor):
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.flow.expand(x.shape[0], -1, -1, -1)


def test_denoiser_flow_comes_from_the_network_and_z_from_brightness_constancy():
    dit = DiT(6, 2, size="T", width=32, depth=1, heads=2)
    with torch.no_grad():
        dit.out.bias.copy_(torch.tensor([0.5, -1.0] * 4))  # 2x2 patches, 2 channels
    schedule = NoiseSchedule()
    frame, noisy, t = torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.tensor([10.0, 700.0])
    field = MotionDenoiser(dit, schedule, flow_scale=4.0, min_sigma=0.1, metric_range=20.0)(frame, None, noisy, t, None)
    torch.testing.assert_close(field.flow[:, 0], torch.full((2, 8, 8), 2.0))
    torch.testing.assert_close(field.flow[:, 1], torch.full((2, 8, 8), -4.0))
    # Z(p): the Gaussian log-likelihood of x_t(p + flow) given sqrt(abar) I_0(p), here by explicit
    # indexing (an integer flow reads x_t 2 columns right, 4 rows up; 0 outside the image)
    abar = schedule.alpha_bar(t).view(2, 1, 1)
    seen = torch.zeros_like(noisy)
    seen[..., 4:, :6] = noisy[..., :4, 2:]
    expected = -(seen - abar[:, None].sqrt() * frame).square().sum(1) / (2 * (1 - abar + abar * 0.01))
    torch.testing.assert_close(field.metric[:, 0], 20 * torch.tanh(expected / 20))
    assert (field.metric <= 0).all() and (field.metric >= -20).all()


def test_the_pixel_the_next_frame_shows_wins_a_collision():
    # a one-row frame: pixel 2 (bright) moves one pixel right onto pixel 3 (dark), which stays still
    frame = torch.full((1, 3, 1, 6), -0.5)
    frame[..., 2] = 0.8
    flow = torch.zeros(1, 2, 1, 6)
    flow[:, 0, :, 2] = 1.0
    denoiser = MotionDenoiser(FixedFlow(flow), NoiseSchedule(), flow_scale=1.0)
    t = torch.zeros(1)
    moved = frame.clone()
    moved[..., 2], moved[..., 3] = -0.5, 0.8  # the next frame agrees with the flow: the bright pixel wins
    out = SplatWarp(fill=False)(denoiser(frame, None, moved, t, None), frame)
    # Z = 0 against Z = -4 (the range's floor): the loser keeps a weight of e^-4 / (1 + e^-4), 1.3 * 0.018 = 0.024
    torch.testing.assert_close(out[..., 3], torch.full((1, 3, 1), 0.8), atol=0.025, rtol=0)
    # the next frame shows the dark pixel still there: the flow sent the bright one the wrong way, so it loses
    out = SplatWarp(fill=False)(denoiser(frame, None, frame, t, None), frame)
    torch.testing.assert_close(out[..., 3], torch.full((1, 3, 1), -0.5), atol=0.025, rtol=0)


def test_coarse_warp_error_known_values_and_reach():
    g = torch.Generator().manual_seed(0)
    frame, target = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    still = MotionField(torch.zeros(2, 2, 16, 16), torch.zeros(2, 1, 16, 16))
    assert coarse_warp_error(still, frame, frame) == 0
    pooled = [(F.avg_pool2d(frame, k) - F.avg_pool2d(target, k)).square().mean() for k in (2, 4)]
    torch.testing.assert_close(coarse_warp_error(still, frame, target), sum(pooled) / 2)
    # a smooth blob moved 3 px right: at flow 0, descending the pooled warps' error moves the flow right
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    blob = lambda cx: torch.exp(-((xx - cx) ** 2 + (yy - 8) ** 2) / 8).expand(1, 3, 16, 16)  # noqa: E731
    flow = torch.zeros(1, 2, 16, 16, requires_grad=True)
    coarse_warp_error(MotionField(flow, torch.zeros(1, 1, 16, 16)), blob(6.0), blob(9.0)).backward()
    assert -flow.grad[:, 0].sum() > 3 * flow.grad[:, 1].sum().abs()


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
    for step in range(100):
        loss = model(batch, torch.Generator().manual_seed(step % 4))  # 4 fixed noise draws
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
        losses.append(loss["target"].item())
    assert set(loss) == {"target", "smoothness", "multiscale", "loss"}
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
