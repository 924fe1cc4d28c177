"""Exact posteriors of the toy problems checked against brute-force importance weighting.

The brute force shares nothing with the implementation but the prior sampler:
it weights a large prior sample by the Gaussian observation likelihoods
directly (no information form, no mixture algebra, no quadrature grid).
Tolerances are a few Monte-Carlo standard errors, derived from the effective
sample size, so they are tight enough to catch wrong weights or covariances.
"""

import math

import pytest
import torch

from dfm.tasks.toy.problems import GaussianMixtureProblem, ManifoldProblem

N_PRIOR = 1_000_000
N_POST = 100_000
Z = 5.0  # standard errors allowed


def _loglik(obs, params, signals, var):
    """log N(obs; params @ S, var I) up to a constant, for every row S of ``signals``."""
    return -((obs.double() - signals @ params.double().T) ** 2).sum(-1) / (2 * var)


def _weighted_moments(signals, log_w):
    w = torch.softmax(log_w, 0)
    mean = w @ signals
    centred = signals - mean
    cov = (w[:, None] * centred).T @ centred
    return mean, cov, 1.0 / (w**2).sum()


PROBLEMS = {
    "gmm": GaussianMixtureProblem(),
    "gmm-broad-context": GaussianMixtureProblem(context_noise=0.3),
    "manifold": ManifoldProblem(),
}


@pytest.mark.parametrize("name", PROBLEMS)
def test_context_posterior_matches_importance_weighting(name):
    problem = PROBLEMS[name]
    g = torch.Generator().manual_seed(0)
    prior = problem.sample_signals(N_PRIOR, g).double()
    ex = problem.sample_examples(2, g)
    for i in range(2):
        y, a = ex["ctxt_obs"][i], ex["ctxt_params"][i]
        mean, cov, ess = _weighted_moments(prior, _loglik(y, a, prior, problem.context_noise**2))
        sd = cov.diagonal().sqrt()
        se = 1 / ess.sqrt() + 1 / math.sqrt(N_POST)

        samples = problem.posterior_sample(y, a, N_POST, g)
        assert samples.shape == (N_POST, problem.signal_dim) and samples.dtype == torch.float32
        samples = samples.double()
        assert ((samples.mean(0) - mean).abs() <= Z * sd * se).all()
        cov_tol = Z * math.sqrt(2) * sd[:, None] * sd[None] * se
        assert ((torch.cov(samples.T) - cov).abs() <= cov_tol).all()

        # abar -> 0: x_t carries no information, the denoiser is E[S | y_c].
        x = torch.randn(1, 2, generator=g)
        den = problem.exact_denoiser(y[None], a[None], x, torch.tensor([1e-9]), ex["trgt_params"][i : i + 1])
        assert ((den[0].double() - mean).abs() <= Z * sd / ess.sqrt()).all()
        den0 = problem.exact_denoiser(y[None], a[None], x, torch.tensor([0.0]), ex["trgt_params"][i : i + 1])
        torch.testing.assert_close(den0, den, atol=1e-4, rtol=0)


@pytest.mark.parametrize("alpha_bar", [0.3, 0.9])
@pytest.mark.parametrize("name", ["gmm-broad-context", "manifold"])  # a sharper context leaves too few effective samples
def test_denoiser_matches_importance_weighting(name, alpha_bar):
    problem = PROBLEMS[name]
    g = torch.Generator().manual_seed(1)
    prior = problem.sample_signals(N_PRIOR, g).double()
    ex = problem.sample_examples(3, g)
    x = math.sqrt(alpha_bar) * ex["trgt_obs"] + math.sqrt(1 - alpha_bar) * torch.randn(3, 2, generator=g)
    abar = torch.full((3,), alpha_bar)
    den = problem.exact_denoiser(ex["ctxt_obs"], ex["ctxt_params"], x, abar, ex["trgt_params"]).double()
    assert den.shape == (3, problem.signal_dim)
    for i in range(3):
        log_w = _loglik(ex["ctxt_obs"][i], ex["ctxt_params"][i], prior, problem.context_noise**2)
        log_w += _loglik(x[i], math.sqrt(alpha_bar) * ex["trgt_params"][i], prior, 1 - alpha_bar)
        mean, cov, ess = _weighted_moments(prior, log_w)
        assert ess > 1000
        assert ((den[i] - mean).abs() <= Z * cov.diagonal().sqrt() / ess.sqrt()).all()


@pytest.mark.parametrize("problem", [GaussianMixtureProblem(context_noise=1e-3), ManifoldProblem()], ids=["gmm", "manifold"])
def test_denoiser_at_high_snr_recovers_signal(problem):
    """abar = 1 - 1e-6 (noise variance ~1e-6) must neither blow up nor lose accuracy."""
    g = torch.Generator().manual_seed(2)
    ex = problem.sample_examples(500, g)
    abar = torch.full((500,), 1 - 1e-6)
    x = abar.sqrt()[:, None] * ex["trgt_obs"]
    den = problem.exact_denoiser(ex["ctxt_obs"], ex["ctxt_params"], x, abar, ex["trgt_params"])
    assert torch.isfinite(den).all()
    # The (nearly) exact target observation must be reproduced by the estimate ...
    assert (problem.project(ex["trgt_params"], den) - ex["trgt_obs"]).abs().max() < 2e-3
    # ... and together with the context it pins down the signal.
    err = (den - ex["signal"]).norm(dim=-1)
    assert err.median() < 1e-2 and err.quantile(0.9) < 5e-2
    # abar == 1 exactly (a noise-free x_t) is the limit, not a division by zero.
    den1 = problem.exact_denoiser(ex["ctxt_obs"], ex["ctxt_params"], ex["trgt_obs"], torch.ones(500), ex["trgt_params"])
    assert torch.isfinite(den1).all() and (den1 - den).norm(dim=-1).median() < 1e-3


def test_gmm_prior_moments():
    p = GaussianMixtureProblem()
    s = p.sample_signals(400_000, torch.Generator().manual_seed(3)).double()
    mean = p.weights @ p.means
    second = (p.weights[:, None, None] * (p.covariances + p.means[:, :, None] * p.means[:, None, :])).sum(0)
    torch.testing.assert_close(s.mean(0), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(s.T), second - mean[:, None] * mean[None], atol=0.02, rtol=0)
    assert torch.pdist(p.means).min() > 2  # well separated
    assert 0.5 < s.std(0).min() and s.std(0).max() < 1.5  # O(1) scale


def test_manifold_posterior_samples_lie_on_curve():
    p = ManifoldProblem()
    g = torch.Generator().manual_seed(4)
    ex = p.sample_examples(1, g)
    samples = p.posterior_sample(ex["ctxt_obs"][0], ex["ctxt_params"][0], 300, g).double()
    # Consecutive points are <= max|f'| / 1e5 = 3.3e-4 apart, so on-curve samples are within 1.7e-4.
    dense = p.curve(torch.linspace(0, 1, 100_001, dtype=torch.float64))
    dist = torch.cat([torch.cdist(c, dense).min(1).values for c in samples.split(100)])
    assert dist.max() < 2e-4
    # Sub-cell jitter: samples are not confined to the quadrature grid points.
    assert torch.unique(samples, dim=0).shape[0] == 300


def test_manifold_grid_is_converged_at_smallest_noise():
    coarse = ManifoldProblem()
    fine = ManifoldProblem(grid=2 * coarse.grid)
    too_coarse = ManifoldProblem(grid=coarse.grid // 16)
    g = torch.Generator().manual_seed(5)
    ex = coarse.sample_examples(1000, g)
    abar = torch.full((1000,), 1 - 1e-5, dtype=torch.float64)  # noise std 3e-3 < t=0 of a cosine schedule
    x = abar.sqrt()[:, None] * ex["trgt_obs"] + (1 - abar).sqrt()[:, None] * torch.randn(1000, 2, generator=g)
    args = (ex["ctxt_obs"].double(), ex["ctxt_params"].double(), x, abar, ex["trgt_params"].double())
    ref = fine.exact_denoiser(*args)
    assert (coarse.exact_denoiser(*args) - ref).abs().max() < 1e-8
    assert (too_coarse.exact_denoiser(*args) - ref).abs().max() > 1e-4  # the check has teeth


def test_denoiser_handles_large_batches_in_chunks():
    p = ManifoldProblem(chunk_elements=2**16)  # 4 rows per chunk
    g = torch.Generator().manual_seed(6)
    ex = p.sample_examples(10, g)
    abar = torch.rand(10, generator=g)
    args = (ex["ctxt_obs"], ex["ctxt_params"], ex["trgt_obs"], abar, ex["trgt_params"])
    torch.testing.assert_close(p.exact_denoiser(*args), ManifoldProblem().exact_denoiser(*args))


@pytest.mark.parametrize("name", ["gmm", "manifold"])
def test_sample_examples(name):
    problem = PROBLEMS[name]
    n, d = 20_000, problem.signal_dim
    ex = problem.sample_examples(n, torch.Generator().manual_seed(7))
    for key in ("ctxt", "trgt", "novel"):
        assert ex[f"{key}_obs"].shape == (n, 2) and ex[f"{key}_obs"].dtype == torch.float32
        params = ex[f"{key}_params"]
        assert params.shape == (n, 2, d) and params.dtype == torch.float32
        torch.testing.assert_close(params.norm(dim=-1), torch.ones(n, 2))
    assert ex["signal"].shape == (n, d)
    assert torch.equal(ex["trgt_obs"], (ex["trgt_params"] @ ex["signal"][..., None])[..., 0])
    assert torch.equal(ex["novel_obs"], (ex["novel_params"] @ ex["signal"][..., None])[..., 0])
    resid = ex["ctxt_obs"] - (ex["ctxt_params"] @ ex["signal"][..., None])[..., 0]
    assert abs(resid.std().item() / problem.context_noise - 1) < 0.03
    assert abs(resid.mean().item()) < 0.03 * problem.context_noise

    again = problem.sample_examples(n, torch.Generator().manual_seed(7))
    assert all(torch.equal(ex[k], again[k]) for k in ex)
    other = problem.sample_examples(n, torch.Generator().manual_seed(8))
    assert not torch.equal(ex["signal"], other["signal"])


def test_problem_definition_depends_only_on_seed():
    assert torch.equal(GaussianMixtureProblem(seed=1).means, GaussianMixtureProblem(seed=1).means)
    assert not torch.equal(GaussianMixtureProblem(seed=1).means, GaussianMixtureProblem(seed=2).means)
    assert torch.equal(ManifoldProblem(seed=1).grid_points, ManifoldProblem(seed=1).grid_points)
    assert not torch.equal(ManifoldProblem(seed=1).grid_points, ManifoldProblem(seed=2).grid_points)
