"""Samplers: plain functions over an x0-predicting model, k-diffusion style.

Every sampler has the signature ``sampler(model, x, timesteps, schedule, *, generator, callback,
progress, **options) -> x_clean`` where ``model(x_t, t) -> x0`` returns the clean estimate of the
observation at timestep ``t`` (a 0-dim tensor) and ``timesteps`` decrease from noise to ``0``;
after the last one the sampler steps to the clean observation (``abar = 1``).

In DFM the "model" is ``forward(denoise(context, x_t, t), target_params)``: samplers never know
about signals. The DFM pipeline keeps the signal of the last evaluation (see ``dfm.model``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dfm.diffusion import NoiseSchedule

X0Model = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[dict], None] | None


def _alpha_sigma(schedule: NoiseSchedule, t: Tensor | None) -> tuple[Tensor, Tensor]:
    """sqrt(abar) and sqrt(1 - abar) at ``t``; ``None`` is the clean end of the chain."""
    if t is None:
        return torch.tensor(1.0), torch.tensor(0.0)
    abar = schedule.alpha_bar(t.reshape(1)).squeeze(0).cpu()
    return abar.sqrt(), (1 - abar).sqrt()


def _steps(timesteps: Tensor, progress: bool):
    nexts = list(timesteps[1:]) + [None]
    return tqdm(list(zip(timesteps, nexts)), desc="sampling", disable=not progress, leave=False)


@torch.no_grad()
def ddim(
    model: X0Model,
    x: Tensor,
    timesteps: Tensor,
    schedule: NoiseSchedule,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback = None,
    progress: bool = False,
) -> Tensor:
    """DDIM (Song et al. 2021). ``eta = 0`` is deterministic; ``eta = 1`` is ancestral (DDPM-like)."""
    for i, (t, t_next) in enumerate(_steps(timesteps, progress)):
        x0 = model(x, t)
        a_t, s_t = _alpha_sigma(schedule, t)
        a_n, s_n = _alpha_sigma(schedule, t_next)
        eps = (x - a_t * x0) / s_t
        # std of the fresh noise; zero when stepping to the clean observation
        std = eta * (s_n / s_t) * (1 - (a_t / a_n) ** 2).clamp(min=0).sqrt()
        x = a_n * x0 + (s_n**2 - std**2).clamp(min=0).sqrt() * eps
        if eta > 0 and t_next is not None:
            x = x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x0})
    return x


@torch.no_grad()
def dpmpp_2m(
    model: X0Model,
    x: Tensor,
    timesteps: Tensor,
    schedule: NoiseSchedule,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback = None,
    progress: bool = False,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in log-SNR, data prediction.

    ``eta = 0`` is the probability-flow ODE; ``eta = 1`` is SDE-DPM-Solver++(2M), which re-draws
    part of the noise at every step, as ancestral sampling does, so that a sample that has drifted
    between modes can still settle into one (in between: a share of the noise). The first step is
    first order (no history yet); the last step lands on the clean observation, which is the last
    x0 estimate (as diffusers does with ``final_sigmas_type="zero"``).
    """
    x0_prev, h_prev = None, None
    for i, (t, t_next) in enumerate(_steps(timesteps, progress)):
        x0 = model(x, t)
        if t_next is None:
            x = x0
        else:
            a_t, s_t = _alpha_sigma(schedule, t)
            a_n, s_n = _alpha_sigma(schedule, t_next)
            h = torch.log(a_n / s_n) - torch.log(a_t / s_t)
            d = x0
            if x0_prev is not None:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = (s_n / s_t) * torch.exp(-eta * h) * x - a_n * torch.expm1(-(1 + eta) * h) * d
            if eta > 0:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + s_n * (-torch.expm1(-2 * eta * h)).sqrt() * noise
            x0_prev, h_prev = x0, h
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "denoised": x0})
    return x


SAMPLERS = {"ddim": ddim, "dpmpp_2m": dpmpp_2m}
