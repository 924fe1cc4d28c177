"""The noise schedule: how much of the target observation survives at each timestep.

DFM diffuses *observations* (never signals), with the usual variance-preserving process
``x_t = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps`` over ``T`` discrete timesteps. Timesteps
are floats so that samplers may visit any point between the training steps (``abar`` is
interpolated linearly in log-SNR, which is exact at the integers).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dfm.configurable import Configurable

TIMESTEP_SPACINGS = ("uniform", "karras")


def cosine_alphas_cumprod(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """The cosine schedule of Nichol & Dhariwal (2021), discretised through clipped betas.

    Identical to diffusers' ``beta_schedule="squaredcos_cap_v2"``, so our samplers can be
    checked step by step against diffusers' schedulers.
    """

    def f(t: float) -> float:
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    betas = torch.tensor(
        [min(1 - f((i + 1) / num_steps) / f(i / num_steps), max_beta) for i in range(num_steps)],
        dtype=torch.float64,
    )
    return torch.cumprod(1 - betas, dim=0)


class NoiseSchedule(Configurable, nn.Module):
    """A discrete variance-preserving schedule, evaluated at (possibly fractional) timesteps."""

    def __init__(self, num_steps: int = 1000, kind: str = "cosine"):
        super().__init__()
        if kind != "cosine":
            raise ValueError(f"unknown noise schedule {kind!r}; available: 'cosine'")
        self.num_steps = num_steps
        abar = cosine_alphas_cumprod(num_steps)
        # Persistent=False: derived from the config, never stored in checkpoints.
        self.register_buffer("log_snr_table", torch.log(abar / (1 - abar)).float(), persistent=False)

    def log_snr(self, t: Tensor) -> Tensor:
        """log(abar / (1 - abar)) at timesteps ``t`` in ``[0, T-1]``."""
        t = t.to(self.log_snr_table.device, torch.float32).clamp(0, self.num_steps - 1)
        lo = t.floor().long().clamp(max=self.num_steps - 2)
        frac = t - lo
        table = self.log_snr_table
        return table[lo] * (1 - frac) + table[lo + 1] * frac

    def alpha_bar(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self.log_snr(t))

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample ``q(x_t | x_0)`` given the noise; ``t`` has one entry per batch element."""
        abar = self.alpha_bar(t).to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None, device=None, bias: float = 0.0) -> Tensor:
        """Integer training timesteps, as floats: uniform, or with ``bias > 0`` drawn with probability
        proportional to ``(t + 1) ** bias`` (more of them at high noise)."""
        if bias == 0:
            return torch.randint(0, self.num_steps, (n,), generator=generator, device=device).float()
        if bias < 0:
            raise ValueError(f"timestep bias must be >= 0, got {bias}")
        weights = torch.arange(1, self.num_steps + 1, dtype=torch.float64, device=device) ** bias
        return torch.multinomial(weights, n, replacement=True, generator=generator).float()

    def sampling_timesteps(
        self, steps: int, spacing: str = "uniform", rho: float = 7.0, sigma_max: float = 80.0
    ) -> Tensor:
        """Decreasing timesteps from pure noise to ``0`` for a sampler with ``steps`` evaluations.

        ``uniform`` spaces them evenly in t from ``T-1`` (diffusers' "linspace"); ``karras`` spaces
        them evenly in ``sigma^(1/rho)`` with ``sigma = sqrt((1-abar)/abar)`` (Karras et al. 2022,
        EDM) from ``sigma_max`` down, which puts more steps at low noise where the fine detail of the
        posterior is decided. The cosine schedule reaches sigma ~ 2e4 at ``T-1``; starting there would
        spend most steps where the observation is pure noise, hence EDM's cap of 80.
        """
        if steps < 1:
            raise ValueError(f"need at least one sampling step, got {steps}")
        last = self.num_steps - 1
        if spacing == "uniform":
            return torch.linspace(last, 0, steps)
        if spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"unknown timestep spacing {spacing!r}; available: {TIMESTEP_SPACINGS}")
        table = self.log_snr_table.cpu().double()
        sigma = torch.exp(-0.5 * table)  # increasing in t
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        inv_rho = 1.0 / rho
        top = min(float(sigma[-1]), sigma_max)
        sigmas = (top**inv_rho + ramp * (sigma[0] ** inv_rho - top**inv_rho)) ** rho
        # invert sigma(t) by linear interpolation in log-sigma (monotone, exact at the integers)
        log_sigma, target = sigma.log(), sigmas.log()
        idx = torch.searchsorted(log_sigma, target).clamp(1, last)
        lo, hi = log_sigma[idx - 1], log_sigma[idx]
        t = (idx - 1) + (target - lo) / (hi - lo)
        return t.clamp(0, last).float()
