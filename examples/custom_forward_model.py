"""Your own inverse problem: where is a point light on a ring, seen by 1-D cameras?

Signal S: a 2-D point on the unit circle (never observed). Forward model: a 1-D camera at angle
theta renders a 16-pixel image of a blurred bump where S projects onto its image line. One
context view leaves two candidate points (the line meets the circle twice), so the posterior is
bimodal: DFM should put samples on both, a regressor on neither.

    python examples/custom_forward_model.py      # about 1 minute on 2 CPU cores
"""

import math

import torch
from torch import nn

from dfm import DFM, ResMLP, TimestepEmbedding, Trainer, TrainConfig

PIXELS = torch.linspace(-1.5, 1.5, 16)


def render(signal, theta):
    """Forward model: project the point onto the camera's image line, draw a Gaussian bump."""
    u = signal[:, 0] * torch.cos(theta) + signal[:, 1] * torch.sin(theta)
    return torch.exp(-((PIXELS.to(u) - u[:, None]) ** 2) / 0.1) * 2 - 1  # observations in [-1, 1]


class RingViews(torch.utils.data.Dataset):
    """Context, target and novel views of a random point on the circle; the point itself is dropped."""

    def __init__(self, size=50_000, seed=0):
        g = torch.Generator().manual_seed(seed)
        phi = torch.rand(size, generator=g) * 2 * math.pi
        self.points = torch.stack([phi.cos(), phi.sin()], -1)
        self.thetas = torch.rand(size, 3, generator=g) * math.pi

    def __len__(self):
        return len(self.points)

    def __getitem__(self, i):
        s, th = self.points[i : i + 1], self.thetas[i]
        views = {f"{k}_obs": render(s, th[j : j + 1])[0] for j, k in enumerate(["ctxt", "trgt", "novel"])}
        return {**views, "ctxt_params": th[0], "trgt_params": th[1], "novel_params": th[2]}


class Denoiser(nn.Module):
    """(context view, its angle, noisy target view, t, target angle) -> the point S."""

    def __init__(self, width=128):
        super().__init__()
        self.time = TimestepEmbedding(width)
        self.net = ResMLP(16 + 16 + 4, 2, cond_dim=width, width=width, depth=3)

    def forward(self, ctxt_obs, ctxt_theta, noisy_obs, t, trgt_theta):
        angles = torch.stack([ctxt_theta.cos(), ctxt_theta.sin(), trgt_theta.cos(), trgt_theta.sin()], -1)
        return self.net(torch.cat([ctxt_obs, noisy_obs, angles], -1), self.time(t))


if __name__ == "__main__":
    model = DFM(Denoiser(), render, p_uncond=0.0)
    config = TrainConfig(steps=1500, batch_size=256, lr=1e-3, warmup_steps=100, checkpoint_every=0, preview_every=0)
    trainer = Trainer(model, RingViews(), config, out_dir="outputs/example_ring")
    trainer.fit(resume=True)

    # One context view from the camera at theta = 0 of the point (0.6, 0.8): x = 0.6, y = +-0.8.
    n, theta_c = 200, torch.zeros(200)
    ctxt = render(torch.tensor([[0.6, 0.8]]).expand(n, 2), theta_c)
    trgt_theta = torch.full((n,), math.pi / 2)  # sample the view from the camera looking along y
    out = trainer.ema_model.sample(ctxt, theta_c, trgt_theta, (n, 16), generator=torch.Generator().manual_seed(0))
    s = out.signal
    near = {y: ((s - torch.tensor([0.6, y])).norm(dim=1) < 0.2).float().mean().item() for y in (0.8, -0.8)}
    print(f"samples within 0.2 of (0.6, 0.8): {near[0.8]:.2f}, of (0.6, -0.8): {near[-0.8]:.2f} (ideal: 0.5 each)")
