import math

import pytest
import torch
from diffusers import DDPMScheduler

from dfm.diffusion import NoiseSchedule


def test_cosine_schedule_matches_diffusers():
    ours = NoiseSchedule(1000)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    t = torch.arange(1000).float()
    torch.testing.assert_close(ours.alpha_bar(t), ref.alphas_cumprod.float(), rtol=1e-4, atol=1e-7)


def test_fractional_timesteps_interpolate_log_snr():
    s = NoiseSchedule()
    mid = s.log_snr(torch.tensor([10.5]))
    ends = s.log_snr(torch.tensor([10.0, 11.0]))
    torch.testing.assert_close(mid, ends.mean().reshape(1))


def test_add_noise_statistics():
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((100_000,), 2.0)
    t = torch.full((100_000,), 500.0)
    xt = s.add_noise(x0, t, torch.randn(100_000, generator=g))
    abar = s.alpha_bar(torch.tensor([500.0])).item()
    assert abs(xt.mean().item() - 2 * math.sqrt(abar)) < 0.01
    assert abs(xt.var().item() - (1 - abar)) < 0.01


def test_sampling_timesteps():
    s = NoiseSchedule()
    for spacing in ["uniform", "karras"]:
        ts = s.sampling_timesteps(50, spacing)
        assert ts.shape == (50,) and ts[0] >= 970 and abs(ts[-1]) < 1e-6
        assert (ts[1:] < ts[:-1]).all()
    # karras puts more steps at low noise than uniform spacing
    assert (s.sampling_timesteps(50, "karras") < 100).sum() > (s.sampling_timesteps(50, "uniform") < 100).sum()
    # and it is evenly spaced in sigma^(1/rho)
    ts = s.sampling_timesteps(20, "karras", rho=7.0)
    abar = s.alpha_bar(ts).double()
    r = (((1 - abar) / abar).sqrt()) ** (1 / 7)
    d = r[:-1] - r[1:]
    torch.testing.assert_close(d, d.mean().expand_as(d), rtol=2e-3, atol=1e-6)


def test_timestep_bias_draws_high_noise_more_often_in_proportion():
    s = NoiseSchedule(num_steps=10)
    g = torch.Generator().manual_seed(0)
    t = s.sample_timesteps(200_000, g, bias=1.0)
    assert ((t >= 0) & (t <= 9) & (t == t.round())).all()
    freq = torch.bincount(t.long(), minlength=10).double() / len(t)
    expected = torch.arange(1, 11, dtype=torch.float64) / 55  # p(t) proportional to t + 1
    torch.testing.assert_close(freq, expected, atol=3e-3, rtol=0)
    uniform = torch.bincount(s.sample_timesteps(100_000, g).long(), minlength=10).double() / 100_000
    torch.testing.assert_close(uniform, torch.full((10,), 0.1, dtype=torch.float64), atol=4e-3, rtol=0)
    with pytest.raises(ValueError, match="bias must be >= 0"):
        s.sample_timesteps(4, g, bias=-1.0)
