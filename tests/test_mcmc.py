"""MCMC samplers against targets with known moments, and the diagnostics against known answers.

Tolerances come from each quantity's own effective sample size, so they are as tight as the run
allows: a wrong accept/reject rule (or kinetic energy, or leapfrog) shifts the moments by far more.
"""

import math

import pytest
import torch

from dfm import mcmc
from dfm.mcmc import MCMCResult, effective_sample_size, hmc, mala, split_rhat


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_problems() -> tuple[torch.Tensor, torch.Tensor]:
    """Means (3, 3) and covariances (3, 3, 3) of three different correlated Gaussians; the second
    has scales 0.1 and 10, which no single isotropic step size handles."""
    mu = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0], [5.0, 0.0, 0.0]])
    scales = torch.tensor([[1.0, 1.0, 1.0], [0.1, 10.0, 1.0], [2.0, 0.5, 1.0]])
    corr = torch.eye(3).repeat(3, 1, 1)
    corr[0, 0, 1] = corr[0, 1, 0] = 0.9
    corr[1, 0, 1] = corr[1, 1, 0] = 0.5
    corr[2, 0, 2] = corr[2, 2, 0] = -0.6
    corr[2, 1, 2] = corr[2, 2, 1] = 0.3
    return mu, scales[:, :, None] * corr * scales[:, None, :]


def gaussian_log_prob(mu: torch.Tensor, cov: torch.Tensor):
    prec = torch.linalg.inv(cov)

    def log_prob(x):  # (P, C, D) -> (P, C)
        d = x - mu[:, None]
        return -0.5 * torch.einsum("pcd,pde,pce->pc", d, prec, d)

    return log_prob


def mixture_log_prob(means, sd, weights):
    """1-D Gaussian mixture(s): ``means``/``weights`` are (P, K); x is (P, C, 1)."""
    log_w = weights.log()[:, None]

    def log_prob(x):
        z = (x - means[:, None]) / sd  # (P, C, K)
        return torch.logsumexp(log_w - 0.5 * z**2, dim=-1)

    return log_prob


def check_gaussian_moments(result: MCMCResult, mu, cov, k: float) -> None:
    """Mean and covariance within ``k`` Monte Carlo standard errors, each from its own ESS."""
    x = result.samples.permute(1, 2, 0, 3).double()  # (S, C, P, D)
    mu, cov = mu.double(), cov.double()
    ess = effective_sample_size(x)  # (P, D)
    assert ess.min() > 150  # enough draws for the test to have teeth
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    err = (x.mean((0, 1)) - mu).abs()
    assert (err < k * sd / ess.sqrt()).all(), (err / (sd / ess.sqrt()))

    d = x - mu
    products = d[..., :, None] * d[..., None, :]  # (S, C, P, D, D): unbiased for cov, as mu is known
    var = cov.diagonal(dim1=-2, dim2=-1)
    product_var = var[..., :, None] * var[..., None, :] + cov**2  # Var[d_i d_j] for a Gaussian
    err = (products.mean((0, 1)) - cov).abs()
    tol = k * (product_var / effective_sample_size(products)).sqrt()
    assert (err < tol).all(), err / tol


def test_hmc_matches_gaussian_moments_and_adapts():
    mu, cov = gaussian_problems()
    init = torch.randn(3, 16, 3, generator=gen(1))
    result = hmc(gaussian_log_prob(mu, cov), init, steps=300, warmup=300, generator=gen(2))
    check_gaussian_moments(result, mu, cov, k=5)
    assert result.rhat.max() < 1.05
    assert ((result.accept_rate > 0.6) & (result.accept_rate < 0.9)).all(), result.accept_rate
    # the adapted inverse mass is each coordinate's variance: 0.01 and 100 for the badly scaled one
    ratio = result.inv_mass / cov.diagonal(dim1=-2, dim2=-1)
    assert ((ratio > 0.5) & (ratio < 2)).all(), ratio


def test_mala_matches_gaussian_moments():
    mu, cov = gaussian_problems()
    init = torch.randn(3, 32, 3, generator=gen(3))
    result = mala(gaussian_log_prob(mu, cov), init, steps=1500, warmup=500, generator=gen(4))
    check_gaussian_moments(result, mu, cov, k=6)
    assert result.rhat.max() < 1.05
    assert ((result.accept_rate > 0.45) & (result.accept_rate < 0.75)).all(), result.accept_rate


@pytest.mark.parametrize("sampler", [hmc, mala])
def test_overlapping_mixture_histogram_matches_density(sampler):
    """Two overlapping modes (means +-1, sd 0.7) with unequal weights: chains move between them, so
    the draws' CDF and the mass of each mode must match the density (checks the accept/reject rule
    where the target is far from Gaussian)."""
    means = torch.tensor([[-1.0, 1.0], [-1.0, 1.0]])
    weights = torch.tensor([[0.3, 0.7], [0.7, 0.3]])
    sd = 0.7
    init = 2 * torch.randn(2, 32, 1, generator=gen(5))
    steps = 400 if sampler is hmc else 1500
    result = sampler(mixture_log_prob(means, sd, weights), init, steps=steps, warmup=200, generator=gen(6))
    x = result.samples[..., 0].permute(1, 2, 0).double()  # (S, C, P)

    def true_cdf(t):  # t (..., P)
        return (weights.double() * torch.special.ndtr((t[..., None] - means.double()) / sd)).sum(-1)

    right = (x > 0).double()
    p_right = 1 - true_cdf(torch.zeros(2, dtype=torch.float64))
    ess = effective_sample_size(right)
    assert ((right.mean((0, 1)) - p_right).abs() < 5 * (p_right * (1 - p_right) / ess).sqrt()).all()

    flat = x.reshape(-1, 2).sort(0).values  # (N, P)
    n = flat.shape[0]
    ecdf_hi = torch.arange(1, n + 1, dtype=torch.float64)[:, None] / n
    cdf = true_cdf(flat)
    ks = torch.maximum(ecdf_hi - cdf, cdf - (ecdf_hi - 1 / n)).amax(0)
    assert (ks < 2.0 / torch.minimum(ess, effective_sample_size(x)).sqrt()).all(), ks


def test_rhat_flags_chains_stuck_in_separate_modes():
    means, weights = torch.tensor([[-8.0, 8.0]]), torch.tensor([[0.5, 0.5]])
    init = torch.cat([torch.full((1, 8, 1), -8.0), torch.full((1, 8, 1), 8.0)], dim=1)
    result = hmc(mixture_log_prob(means, 0.5, weights), init, steps=100, warmup=100, generator=gen(7))
    assert result.rhat.item() > 1.5
    assert result.summary()["rhat_max"] > 1.5


def test_split_rhat_of_iid_draws_is_one():
    x = torch.randn(4000, 8, 3, generator=gen(8))
    rhat = split_rhat(x)
    assert rhat.shape == (3,)
    assert ((rhat - 1).abs() < 0.02).all(), rhat


def test_split_rhat_flags_a_drifting_chain():
    """A single chain whose two halves differ: only splitting catches it."""
    x = torch.randn(1000, 1, generator=gen(9))
    x[500:] += 3
    assert split_rhat(x).item() > 1.5


def test_ess_of_iid_draws_is_the_number_of_draws():
    x = torch.randn(2000, 4, 5, generator=gen(10))
    ess = effective_sample_size(x)
    assert ess.shape == (5,)
    assert ((ess / 8000 - 1).abs() < 0.2).all(), ess


def test_ess_of_ar1_matches_its_autocorrelation_time():
    rho, steps, chains = 0.9, 5000, 4
    noise = torch.randn(steps, chains, 2, generator=gen(11), dtype=torch.float64)
    x = torch.empty_like(noise)
    x[0] = noise[0]  # stationary start
    for t in range(1, steps):
        x[t] = rho * x[t - 1] + math.sqrt(1 - rho**2) * noise[t]
    expected = steps * chains * (1 - rho) / (1 + rho)
    ess = effective_sample_size(x)
    assert ((ess / expected - 1).abs() < 0.3).all(), (ess, expected)


def test_diagnostics_of_constant_quantities():
    const = torch.ones(10, 4)
    assert split_rhat(const).item() == 1 and effective_sample_size(const).item() == 40
    stuck = torch.arange(4.0).expand(10, 4)  # each chain constant, at a different value
    assert split_rhat(stuck).item() == math.inf
    with pytest.raises(ValueError, match="S >= 4"):
        split_rhat(torch.randn(3, 4))


def test_diagnostics_by_chunks_match_all_at_once(monkeypatch):
    """Image-sized quantities go through the diagnostics a few columns at a time."""
    x = torch.randn(50, 4, 6, 5, generator=gen(16)).cumsum(0)
    rhat, ess = split_rhat(x), effective_sample_size(x)
    assert rhat.shape == ess.shape == (6, 5)
    monkeypatch.setattr(mcmc, "CHUNK", 50 * 4 * 7)  # 7 of the 30 columns at a time
    torch.testing.assert_close(split_rhat(x), rhat)
    torch.testing.assert_close(effective_sample_size(x), ess)


def test_same_seed_same_samples_different_seed_different():
    mu, cov = gaussian_problems()
    init = torch.randn(3, 4, 3, generator=gen(12))
    run = lambda seed: hmc(gaussian_log_prob(mu, cov), init, steps=20, warmup=30, generator=gen(seed))
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.step_size, b.step_size)
    assert not torch.equal(a.samples, c.samples)


def nan_beyond_two(x):
    """Standard normal, but log density and gradient are NaN where x[..., 0] > 2."""
    return -0.5 * (x**2).sum(-1) + 0 * (2 - x[..., 0]).sqrt()


@pytest.mark.parametrize("sampler", [hmc, mala])
def test_nan_region_is_rejected_never_sampled(sampler):
    init = torch.zeros(2, 16, 2)
    result = sampler(nan_beyond_two, init, steps=300, warmup=200, generator=gen(13))
    assert result.samples.isfinite().all() and (result.samples[..., 0] <= 2).all()
    assert result.rhat.isfinite().all() and result.step_size.isfinite().all()
    # the target is the normal truncated at 2: mean -pdf(2) / cdf(2)
    x0 = result.samples[..., 0].permute(1, 2, 0).double()
    expected = -math.exp(-2) / math.sqrt(2 * math.pi) / torch.special.ndtr(torch.tensor(2.0)).item()
    assert ((x0.mean((0, 1)) - expected).abs() < 5 / effective_sample_size(x0).sqrt()).all()


def test_non_finite_start_raises():
    init = torch.zeros(2, 4, 2)
    init[0, 1, 0] = 3.0  # in the NaN region
    init[1, 2, 1] = math.inf
    with pytest.raises(ValueError, match="2 of 8 chains"):
        hmc(nan_beyond_two, init, steps=10, warmup=0, generator=gen())


def test_works_inside_no_grad_and_gives_the_same_chain():
    mu, cov = gaussian_problems()
    init = torch.randn(3, 4, 3, generator=gen(14))
    run = lambda: hmc(gaussian_log_prob(mu, cov), init, steps=10, warmup=10, generator=gen(15))
    with torch.no_grad():
        inside = run()
    outside = run()
    assert torch.equal(inside.samples, outside.samples)
    assert not inside.samples.requires_grad


def test_result_shapes_and_summary():
    P, C, D, steps, thin = 2, 5, 3, 20, 3
    result = hmc(lambda x: -0.5 * (x**2).sum(-1), torch.zeros(P, C, D), steps=steps, warmup=10, thin=thin,
                 generator=gen())
    assert result.samples.shape == (P, steps // thin, C, D)
    assert result.accept_rate.shape == result.step_size.shape == (P,)
    assert result.inv_mass.shape == result.rhat.shape == result.ess.shape == (P, D)
    summary = result.summary()
    assert set(summary) == {"rhat_max", "ess_min", "accept_rate"}
    assert all(isinstance(v, float) for v in summary.values())


def test_rejects_bad_arguments():
    log_prob = lambda x: -0.5 * (x**2).sum(-1)
    with pytest.raises(ValueError, match="problems, chains, dims"):
        hmc(log_prob, torch.zeros(4, 2), steps=10, warmup=0)
    with pytest.raises(ValueError, match="kept draws"):
        hmc(log_prob, torch.zeros(1, 4, 2), steps=10, warmup=0, thin=5)
    with pytest.raises(ValueError, match="must map"):
        hmc(lambda x: log_prob(x).sum(), torch.zeros(1, 4, 2), steps=10, warmup=0)
