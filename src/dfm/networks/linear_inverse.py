"""A denoiser for signals observed through linear projections, preconditioned by the Wiener filter.

For ``O = A S`` the exact denoiser under a Gaussian prior ``S ~ N(0, prior_std^2 I)`` is known in
closed form: combine the context ``y_c = A_c S + context_std * eps`` and the noisy target
``x_t = sqrt(abar) A_t S + sqrt(1 - abar) eps`` as two linear-Gaussian observations. This is
what EDM's ``c_skip`` is for images (the Wiener filter of a Gaussian with variance sigma_data^2),
carried through the forward model. The network then only learns how the true (non-Gaussian)
posterior departs from the Gaussian one, in the directions the observations leave uncertain:

    S = m + L @ net(features),   m, L L^T = mean and covariance of the Gaussian posterior.

With ``precondition=False`` it is a plain MLP over the same raw inputs (the baseline).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dfm.diffusion import NoiseSchedule
from dfm.networks.embeddings import TimestepEmbedding
from dfm.networks.mlp import ResMLP


class LinearInverseDenoiser(nn.Module):
    def __init__(
        self,
        signal_dim: int,
        obs_dim: int,
        schedule: NoiseSchedule,
        *,
        context_std: float = 0.05,
        prior_std: float = 1.0,
        width: int = 256,
        depth: int = 4,
        precondition: bool = True,
    ):
        super().__init__()
        self.signal_dim, self.obs_dim = signal_dim, obs_dim
        self.schedule = schedule
        self.context_std, self.prior_std = context_std, prior_std
        self.precondition = precondition
        d, m = signal_dim, obs_dim
        # raw inputs: y_c, A_c, x_t, A_t, context-present flag; preconditioned adds m and diag(L)
        in_dim = 2 * m + 2 * m * d + 1 + (2 * d if precondition else 0)
        self.time = TimestepEmbedding(width)
        self.net = ResMLP(in_dim, d, cond_dim=width, width=width, depth=depth)

    def gaussian_posterior(
        self, ctxt_obs: Tensor, ctxt_params: Tensor, noisy_obs: Tensor, t: Tensor, trgt_params: Tensor, has_ctxt: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Mean and Cholesky factor of p(S | y_c, x_t) under the Gaussian prior (float64 for stability at t=0)."""
        f64 = torch.float64
        a_c, a_t = ctxt_params.to(f64), trgt_params.to(f64)
        snr = self.schedule.log_snr(t).to(f64).exp()  # abar / (1 - abar)
        abar = torch.sigmoid(self.schedule.log_snr(t).to(f64))
        ctxt_prec = has_ctxt.to(f64) / self.context_std**2
        eye = torch.eye(self.signal_dim, dtype=f64, device=a_c.device)
        precision = (
            eye / self.prior_std**2
            + ctxt_prec[:, None, None] * a_c.mT @ a_c
            + snr[:, None, None] * a_t.mT @ a_t
        )
        rhs = ctxt_prec[:, None] * (a_c.mT @ ctxt_obs.to(f64)[..., None]).squeeze(-1) + (
            (abar.sqrt() / (1 - abar))[:, None] * (a_t.mT @ noisy_obs.to(f64)[..., None]).squeeze(-1)
        )
        chol_prec = torch.linalg.cholesky(precision)
        mean = torch.cholesky_solve(rhs[..., None], chol_prec).squeeze(-1)
        # covariance factor: L = (chol_prec^T)^-1, i.e. L L^T = precision^-1
        cov_factor = torch.linalg.solve_triangular(chol_prec.mT, eye.expand_as(precision), upper=True)
        dtype = ctxt_obs.dtype
        return mean.to(dtype), cov_factor.to(dtype)

    def forward(self, ctxt_obs: Tensor, ctxt_params: Tensor, noisy_obs: Tensor, t: Tensor, trgt_params: Tensor) -> Tensor:
        # A context zeroed for classifier-free guidance carries no information: treat it as absent.
        has_ctxt = (ctxt_obs != 0).any(dim=-1)
        feats = [ctxt_obs, ctxt_params.flatten(1), noisy_obs, trgt_params.flatten(1), has_ctxt[:, None].to(ctxt_obs.dtype)]
        if self.precondition:
            mean, cov_factor = self.gaussian_posterior(ctxt_obs, ctxt_params, noisy_obs, t, trgt_params, has_ctxt)
            std = cov_factor.square().sum(-1).sqrt()
            feats += [mean / self.prior_std, std / self.prior_std]
        out = self.net(torch.cat(feats, dim=-1), self.time(t))
        if not self.precondition:
            return out
        return mean + (cov_factor @ out[..., None]).squeeze(-1)
