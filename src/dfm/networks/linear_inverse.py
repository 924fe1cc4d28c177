"""A denoiser for signals observed through linear projections, preconditioned by the Wiener filter.

For ``O = A S`` the exact denoiser under a Gaussian prior ``S ~ N(0, prior_std^2 I)`` is known in
closed form: combine the context ``y_c = A_c S + context_std * eps`` and the noisy target
``x_t = sqrt(abar) A_t S + sqrt(1 - abar) eps`` as two linear-Gaussian observations. This is
what EDM's ``c_skip`` is for images (the Wiener filter of a Gaussian with variance sigma_data^2),
carried through the forward model.

Two consequences shape the network:

* **Skip and scale.** ``S = m + L @ net(...)`` with ``m, L L^T`` the mean and covariance of that
  Gaussian posterior: the network only learns how the true posterior departs from the Gaussian
  one, in the directions the observations leave uncertain.
* **Sufficient inputs.** Whatever the prior, the observations enter the posterior of S only through
  the Gaussian likelihood's information form, i.e. through ``(m, L)``. So the network sees
  ``(m, L)`` instead of the raw ``(y_c, A_c, x_t, A_t)``: a 14-number summary from which the exact
  denoiser is a smooth function, rather than 21 numbers it would have to learn to combine.
  (Measured on the toy GMM at 6000 steps: raw inputs plus ``(m, diag L)`` reach 17x the
  exact-posterior floor, ``(m, L)`` alone 7x.)

With ``precondition=False`` it is a plain MLP over the raw inputs (the ablation baseline).
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
        self.register_buffer("triu", torch.triu_indices(d, d), persistent=False)
        # inputs: (m, upper triangle of L) or the raw observations and projections; plus a context flag
        in_dim = (d + d * (d + 1) // 2 if precondition else 2 * m + 2 * m * d) + 1
        self.time = TimestepEmbedding(width)
        self.net = ResMLP(in_dim, d, cond_dim=width, width=width, depth=depth)

    def gaussian_posterior(
        self, ctxt_obs: Tensor, ctxt_params: Tensor, noisy_obs: Tensor, t: Tensor, trgt_params: Tensor, has_ctxt: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Mean and upper-triangular factor ``L`` (``L L^T = cov``) of p(S | y_c, x_t) under the
        Gaussian prior, computed in float64 (precisions reach ~1e5 at t = 0)."""
        f64 = torch.float64
        a_c, a_t = ctxt_params.to(f64), trgt_params.to(f64)
        log_snr = self.schedule.log_snr(t).to(f64)
        abar = torch.sigmoid(log_snr)
        ctxt_prec = has_ctxt.to(f64) / self.context_std**2
        eye = torch.eye(self.signal_dim, dtype=f64, device=a_c.device)
        precision = (
            eye / self.prior_std**2
            + ctxt_prec[:, None, None] * a_c.mT @ a_c
            + log_snr.exp()[:, None, None] * a_t.mT @ a_t  # abar / (1 - abar)
        )
        info = ctxt_prec[:, None] * (a_c.mT @ ctxt_obs.to(f64)[..., None]).squeeze(-1) + (
            (abar.sqrt() / (1 - abar))[:, None] * (a_t.mT @ noisy_obs.to(f64)[..., None]).squeeze(-1)
        )
        chol = torch.linalg.cholesky(precision)  # precision = C C^T
        mean = torch.cholesky_solve(info[..., None], chol).squeeze(-1)
        cov_factor = torch.linalg.solve_triangular(chol.mT, eye.expand_as(precision), upper=True)  # C^-T
        return mean.to(ctxt_obs.dtype), cov_factor.to(ctxt_obs.dtype)

    def forward(self, ctxt_obs: Tensor, ctxt_params: Tensor, noisy_obs: Tensor, t: Tensor, trgt_params: Tensor) -> Tensor:
        # A context zeroed for classifier-free guidance carries no information: treat it as absent.
        has_ctxt = (ctxt_obs != 0).any(dim=-1)
        flag = has_ctxt[:, None].to(ctxt_obs.dtype)
        if not self.precondition:
            raw = [ctxt_obs, ctxt_params.flatten(1), noisy_obs, trgt_params.flatten(1), flag]
            return self.net(torch.cat(raw, dim=-1), self.time(t))
        mean, cov_factor = self.gaussian_posterior(ctxt_obs, ctxt_params, noisy_obs, t, trgt_params, has_ctxt)
        tri = cov_factor[:, self.triu[0], self.triu[1]]
        out = self.net(torch.cat([mean / self.prior_std, tri / self.prior_std, flag], dim=-1), self.time(t))
        return mean + (cov_factor @ out[..., None]).squeeze(-1)
