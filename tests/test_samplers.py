"""Samplers against diffusers' reference schedulers, step by step, and against known answers."""

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from dfm.diffusion import NoiseSchedule
from dfm.samplers import ddim, dpmpp_2m

SCHEDULE = NoiseSchedule()


def x0_model(x, t):
    """A smooth, t-dependent fake denoiser, so that every step's inputs matter."""
    return torch.tanh(0.7 * x) * (1 + float(t) / 2000) + 0.1


def record(sampler, timesteps, x, **kw):
    xs = []
    out = sampler(x0_model, x.clone(), timesteps, SCHEDULE, callback=lambda s: xs.append(s["x"].clone()), **kw)
    return out, xs


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers_step_by_step(eta):
    ref = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample",
        clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading",
    )
    ref.set_timesteps(50)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    # ours draws its fresh noise with torch.randn(generator=...): replay the same draws for diffusers
    gen = torch.Generator().manual_seed(7)
    ours, xs = record(ddim, ref.timesteps.float(), x, eta=eta, generator=gen)

    gen = torch.Generator().manual_seed(7)
    y = x.clone()
    for i, t in enumerate(ref.timesteps):
        noise = None
        if eta > 0 and i < len(ref.timesteps) - 1:
            noise = torch.randn(y.shape, generator=gen)
        y = ref.step(x0_model(y, t), t, y, eta=eta, variance_noise=noise).prev_sample
        torch.testing.assert_close(xs[i], y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours, y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpmpp_2m_matches_diffusers_step_by_step(eta):
    ref = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample",
        algorithm_type="sde-dpmsolver++" if eta else "dpmsolver++", solver_order=2, solver_type="midpoint",
        lower_order_final=True, final_sigmas_type="zero", timestep_spacing="linspace", thresholding=False,
    )
    ref.set_timesteps(10)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    ours, xs = record(dpmpp_2m, ref.timesteps.float(), x, eta=eta, generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    y = x.clone()
    for i, t in enumerate(ref.timesteps):
        # the same fresh noise as ours; none is drawn for the last step, which lands on x0
        noise = torch.randn(y.shape, generator=gen) if eta and i < len(ref.timesteps) - 1 else torch.zeros_like(y)
        y = ref.step(x0_model(y, t), t, y, variance_noise=noise).prev_sample
        torch.testing.assert_close(xs[i], y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours, y, atol=1e-4, rtol=1e-4)


def test_gaussian_data_converges_to_exact_distribution():
    """For data N(mu, s^2) the exact x0-denoiser is linear; the probability-flow samplers map the
    Gaussian prior onto the data distribution as the steps grow, DPM-Solver++ (2nd order) faster."""
    mu, s = 0.5, 0.3

    def exact(x, t):
        abar = SCHEDULE.alpha_bar(t.reshape(1))
        a = abar.sqrt()
        return mu + a * s**2 / (abar * s**2 + 1 - abar) * (x - a * mu)

    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    errors = {}
    for sampler in (ddim, dpmpp_2m):
        for steps in (50, 500):
            out = sampler(exact, x, SCHEDULE.sampling_timesteps(steps), SCHEDULE)
            assert abs(out.mean().item() - mu) < 0.005
            errors[sampler.__name__, steps] = abs(out.std().item() - s)
    assert errors["ddim", 500] < 0.003 and errors["dpmpp_2m", 500] < 0.003
    assert errors["ddim", 500] < errors["ddim", 50] / 5
    assert errors["dpmpp_2m", 50] < errors["ddim", 50]


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_sde_dpmpp_reaches_the_exact_gaussian_too(eta):
    """With a share of fresh noise at every step (diffusers has only eta = 1) the exact denoiser
    still yields N(mu, s^2)."""
    mu, s = -0.2, 0.4

    def exact(x, t):
        abar = SCHEDULE.alpha_bar(t.reshape(1))
        a = abar.sqrt()
        return mu + a * s**2 / (abar * s**2 + 1 - abar) * (x - a * mu)

    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    out = dpmpp_2m(exact, x, SCHEDULE.sampling_timesteps(200), SCHEDULE, eta=eta, generator=torch.Generator().manual_seed(1))
    assert abs(out.mean().item() - mu) < 0.005 and abs(out.std().item() - s) < 0.005
