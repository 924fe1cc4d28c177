"""LinearInverseDenoiser: its Gaussian posterior against an independent covariance-form computation."""

from __future__ import annotations

import pytest
import torch

from dfm.diffusion import NoiseSchedule, cosine_alphas_cumprod
from dfm.networks.linear_inverse import LinearInverseDenoiser

D, M, B = 5, 2, 8
CONTEXT_STD, PRIOR_STD = 0.1, 1.3
SCHEDULE = NoiseSchedule()
ABAR = cosine_alphas_cumprod(1000)  # float64 table, independent of the float32 log-SNR buffer


def inputs(seed: int, t: torch.Tensor):
    g = torch.Generator().manual_seed(seed)
    a_c = torch.randn(B, M, D, generator=g)
    a_t = torch.randn(B, M, D, generator=g)
    y_c = torch.randn(B, M, generator=g)
    x_t = torch.randn(B, M, generator=g)
    return y_c, a_c, x_t, t.float(), a_t


def reference_posterior(y_c, a_c, x_t, t, a_t, has_ctxt):
    """Mean and covariance of S | observations in covariance (Kalman gain) form, float64.

    Prior S ~ N(0, p^2 I); y_c = A_c S + sigma_c eps (only where has_ctxt);
    x_t = sqrt(abar) A_t S + sqrt(1 - abar) eps. Stack the observations, condition the joint Gaussian."""
    means, covs = [], []
    for i in range(y_c.shape[0]):
        abar = ABAR[int(t[i])]
        hs, ys, noise = [], [], []
        if has_ctxt[i]:
            hs.append(a_c[i].double())
            ys.append(y_c[i].double())
            noise += [CONTEXT_STD**2] * M
        hs.append(abar.sqrt() * a_t[i].double())
        ys.append(x_t[i].double())
        noise += [float(1 - abar)] * M
        h, y, r = torch.cat(hs), torch.cat(ys), torch.diag(torch.tensor(noise, dtype=torch.float64))
        prior = PRIOR_STD**2 * torch.eye(D, dtype=torch.float64)
        s_yy = h @ prior @ h.T + r
        gain = prior @ h.T @ torch.linalg.inv(s_yy)
        means.append(gain @ y)
        covs.append(prior - gain @ h @ prior)
    return torch.stack(means), torch.stack(covs)


def make(precondition: bool = True, seed: int = 0) -> LinearInverseDenoiser:
    torch.manual_seed(seed)
    return LinearInverseDenoiser(
        D, M, SCHEDULE, context_std=CONTEXT_STD, prior_std=PRIOR_STD, width=32, depth=1, precondition=precondition
    )


def assert_close(actual, expected, rtol=2e-4):
    """Relative to the size of the expected tensor (entries of a covariance can be ~0)."""
    actual, expected = actual.double(), expected.double()
    err = (actual - expected).abs().max().item()
    assert err <= rtol * max(expected.abs().max().item(), 1e-3), (err, expected.abs().max().item())


TIMESTEPS = {
    "t=0": torch.zeros(B),
    "t=999": torch.full((B,), 999.0),
    "mixed": torch.tensor([0, 1, 10, 250, 500, 750, 998, 999]),
}


@pytest.mark.parametrize("t", TIMESTEPS.values(), ids=TIMESTEPS.keys())
def test_gaussian_posterior_matches_covariance_form(t):
    y_c, a_c, x_t, t, a_t = inputs(0, t)
    has_ctxt = torch.tensor([True, False] * (B // 2))
    mean, factor = make().gaussian_posterior(y_c, a_c, x_t, t, a_t, has_ctxt)
    ref_mean, ref_cov = reference_posterior(y_c, a_c, x_t, t, a_t, has_ctxt)
    assert mean.dtype == torch.float32 and factor.dtype == torch.float32
    assert mean.shape == (B, D) and factor.shape == (B, D, D)
    assert torch.isfinite(mean).all() and torch.isfinite(factor).all()
    for i in range(B):
        assert_close(mean[i], ref_mean[i])
        assert_close(factor[i].double() @ factor[i].double().T, ref_cov[i])


def test_extreme_timesteps_behave_as_expected():
    """t=999: the noisy target carries (almost) nothing, so the posterior is the context-only one;
    t=0: the target's projection is nearly exact, so A_t mean ~= x_t / sqrt(abar)."""
    y_c, a_c, x_t, _, a_t = inputs(1, torch.zeros(B))
    net = make()
    has = torch.ones(B, dtype=torch.bool)
    m999, _ = net.gaussian_posterior(y_c, a_c, x_t, torch.full((B,), 999.0), a_t, has)
    m999_other_x, _ = net.gaussian_posterior(y_c, a_c, 5 * x_t, torch.full((B,), 999.0), a_t, has)
    torch.testing.assert_close(m999, m999_other_x, atol=1e-3, rtol=1e-3)
    m0, _ = net.gaussian_posterior(y_c, a_c, x_t, torch.zeros(B), a_t, has)
    projected = (a_t @ m0[..., None]).squeeze(-1)
    torch.testing.assert_close(projected, x_t / ABAR[0].sqrt().float(), atol=0.02, rtol=0.02)


def test_fresh_network_outputs_the_posterior_mean_and_zero_context_is_absent():
    y_c, a_c, x_t, t, a_t = inputs(2, torch.tensor([0, 3, 40, 200, 500, 800, 990, 999]))
    y_c[1] = 0.0
    y_c[5] = 0.0
    net = make()
    assert torch.count_nonzero(net.net.out[-1].weight) == 0  # zero output layer at init
    with torch.no_grad():
        out = net(y_c, a_c, x_t, t, a_t)
    has = torch.ones(B, dtype=torch.bool)
    has[[1, 5]] = False
    ref_mean, _ = reference_posterior(y_c, a_c, x_t, t, a_t, has)
    for i in range(B):
        assert_close(out[i], ref_mean[i])
    # the zeroed rows were not treated as a (very informative) observation y_c = 0
    as_observed, _ = reference_posterior(y_c, a_c, x_t, t, a_t, torch.ones(B, dtype=torch.bool))
    for i in (1, 5):
        assert (out[i].double() - as_observed[i]).abs().max() > 1e-2


def test_zeroed_context_row_equals_posterior_without_context():
    """Row by row: zeroing one sample's context gives that sample the no-context posterior and leaves
    the other rows untouched."""
    y_c, a_c, x_t, t, a_t = inputs(3, torch.full((B,), 300.0))
    net = make()
    with torch.no_grad():
        full = net(y_c, a_c, x_t, t, a_t)
        y_dropped = y_c.clone()
        y_dropped[2] = 0
        dropped = net(y_dropped, a_c, x_t, t, a_t)
        has = torch.ones(B, dtype=torch.bool)
        has[2] = False
        no_ctxt, _ = net.gaussian_posterior(y_c, a_c, x_t, t, a_t, has)  # y_c[2] is ignored when absent
    torch.testing.assert_close(dropped[2], no_ctxt[2], rtol=1e-5, atol=1e-6)
    keep = [i for i in range(B) if i != 2]
    torch.testing.assert_close(dropped[keep], full[keep])
    assert not torch.allclose(dropped[2], full[2], atol=1e-3)


def test_without_preconditioning_it_is_a_plain_mlp():
    y_c, a_c, x_t, t, a_t = inputs(4, torch.full((B,), 100.0))
    plain = make(precondition=False)
    out = plain(y_c, a_c, x_t, t, a_t)
    assert out.shape == (B, D) and torch.count_nonzero(out) == 0  # zero output layer, no skip connection
    # after training-like changes, the output depends on the inputs (it is a network, not a constant)
    with torch.no_grad():
        for p in plain.parameters():
            p.normal_(0, 0.3)
        a = plain(y_c, a_c, x_t, t, a_t)
        b = plain(y_c, a_c, x_t + 1, t, a_t)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("precondition", [True, False])
def test_gradients_flow_to_every_parameter(precondition):
    y_c, a_c, x_t, t, a_t = inputs(5, torch.tensor([0, 1, 10, 250, 500, 750, 998, 999]))
    net = make(precondition)
    with torch.no_grad():  # move off the zero initialisation, where upstream gradients vanish
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    target = torch.randn(B, D, generator=torch.Generator().manual_seed(0))
    (net(y_c, a_c, x_t, t, a_t) - target).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradient_to_inputs_is_the_posterior_gain():
    """At init the output is the posterior mean, linear in x_t with the Kalman gain as Jacobian."""
    y_c, a_c, x_t, t, a_t = inputs(6, torch.full((B,), 400.0))
    x_t.requires_grad_(True)
    net = make()
    out = net(y_c, a_c, x_t, t, a_t)
    v = torch.randn(B, D, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad((out * v).sum(), x_t)
    abar = ABAR[400]
    for i in range(B):
        h = torch.cat([a_c[i].double(), abar.sqrt() * a_t[i].double()])
        r = torch.diag(torch.tensor([CONTEXT_STD**2] * M + [float(1 - abar)] * M, dtype=torch.float64))
        gain = PRIOR_STD**2 * h.T @ torch.linalg.inv(PRIOR_STD**2 * h @ h.T + r)  # (D, 2M)
        assert_close(grad[i], v[i].double() @ gain[:, M:], rtol=1e-3)
