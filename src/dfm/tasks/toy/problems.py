"""Low-dimensional linear inverse problems whose posteriors are known exactly.

A signal ``S`` in ``R^D`` is only ever seen through random linear projections
``O = A S`` with ``A`` a ``2 x D`` matrix whose rows have unit norm, drawn afresh
per example.  The *context* observation is noisy, ``y_c = A_c S + sigma_c eps``;
the *target* and *novel* observations are noise-free.  A diffusion model over
the target observation sees ``x_t = sqrt(abar) O_t + sqrt(1 - abar) eps``.

Because every observation is linear-Gaussian in ``S``, all the conditionals a
forward-model diffusion method could be asked to produce have a ground truth:

* :meth:`LinearToyProblem.posterior_sample` draws exact samples of
  ``p(S | y_c)``, the distribution a trained model should reproduce.
* :meth:`LinearToyProblem.exact_denoiser` returns ``E[S | y_c, x_t]``, the
  minimiser of the denoising loss, i.e. what the network should learn.

Both reduce to one primitive.  Given the observations, the likelihood of ``S``
is ``exp(-1/2 S^T M S + c^T S)`` up to a constant (the *information form*,
:meth:`LinearToyProblem.likelihood_information`).  Working with ``(M, c)``
rather than with observation covariances stays exact in both limits of the
noise schedule: ``abar -> 0`` simply adds nothing to ``(M, c)`` and ``abar -> 1``
adds a large but finite precision, which float64 handles without cancellation
trouble.  Subclasses only combine ``(M, c)`` with their prior.

All problem parameters are fixed by ``seed`` (they *define* the problem); all
sampling randomness comes from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["LinearToyProblem", "GaussianMixtureProblem", "ManifoldProblem"]

# Smallest noise variance 1 - abar used in the x_t likelihood.  abar == 1 is
# then treated as an (essentially) noise-free observation instead of dividing
# by zero; float32 inputs cannot come closer to 1 than ~6e-8 anyway.
_MIN_NOISE_VAR = 1e-10


def _randn(shape, generator: torch.Generator, dtype=torch.float32) -> Tensor:
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)


def _random_rotation(dim: int, generator: torch.Generator) -> Tensor:
    """Haar-distributed orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = torch.linalg.qr(_randn((dim, dim), generator, torch.float64))
    return q * torch.sign(torch.diagonal(r))


class LinearToyProblem:
    """Signal prior + random unit-row projections + exact posterior machinery.

    Subclasses implement :meth:`sample_signals` and the two prior-specific
    posterior primitives :meth:`_posterior_mean` / :meth:`_posterior_sample`,
    both expressed in terms of the likelihood information ``(M, c)``.
    """

    obs_dim: int = 2

    def __init__(self, signal_dim: int, context_noise: float):
        if context_noise <= 0:
            raise ValueError("context_noise must be positive (the posterior would be degenerate)")
        self.signal_dim = int(signal_dim)
        self.context_noise = float(context_noise)

    # ------------------------------------------------------------------ data
    def sample_signals(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` independent signals from the prior, ``(n, D)`` float32."""
        raise NotImplementedError

    def sample_projections(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` random ``(2, D)`` projections with unit-norm rows, ``(n, 2, D)``.

        Unit rows keep every observation on the same O(1) scale as the signal,
        so one noise schedule suits all projections.
        """
        a = _randn((n, self.obs_dim, self.signal_dim), generator)
        return a / a.norm(dim=-1, keepdim=True)

    @staticmethod
    def project(params: Tensor, signal: Tensor) -> Tensor:
        """Apply the forward model: ``(B, 2, D) x (B, D) -> (B, 2)``."""
        return (params @ signal.unsqueeze(-1)).squeeze(-1)

    def sample_examples(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Training/evaluation examples: one signal seen through three projections.

        Only the context observation is noisy; target and novel observations
        are exact projections of ``signal`` (``trgt_obs == project(trgt_params, signal)``).
        """
        signal = self.sample_signals(n, generator)
        ctxt_params = self.sample_projections(n, generator)
        trgt_params = self.sample_projections(n, generator)
        novel_params = self.sample_projections(n, generator)
        noise = _randn((n, self.obs_dim), generator)
        return {
            "ctxt_obs": self.project(ctxt_params, signal) + self.context_noise * noise,
            "ctxt_params": ctxt_params,
            "trgt_obs": self.project(trgt_params, signal),
            "trgt_params": trgt_params,
            "novel_obs": self.project(novel_params, signal),
            "novel_params": novel_params,
            "signal": signal,
        }

    # ------------------------------------------------------------- posterior
    def likelihood_information(
        self,
        ctxt_obs: Tensor,
        ctxt_params: Tensor,
        noisy_obs: Tensor | None = None,
        alpha_bar: Tensor | float | None = None,
        trgt_params: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Information form ``(M, c)`` of the likelihood of ``S``, float64.

        ``p(y_c, x_t | S) ∝ exp(-1/2 S^T M S + c^T S)`` with
        ``M = A_c^T A_c / sigma_c^2 + abar/(1-abar) A_t^T A_t`` and
        ``c = A_c^T y_c / sigma_c^2 + sqrt(abar)/(1-abar) A_t^T x_t``, i.e. the
        stacked observation ``[A_c; sqrt(abar) A_t] S`` with block noise
        ``diag(sigma_c^2 I, (1-abar) I)``.  Without ``noisy_obs`` only the
        context is used.  Shapes: ``(B, 2)``, ``(B, 2, D)`` -> ``(B, D, D)``, ``(B, D)``.
        """
        a_c = ctxt_params.double()
        prec_c = 1.0 / self.context_noise**2
        m = prec_c * a_c.mT @ a_c
        c = prec_c * (a_c.mT @ ctxt_obs.double().unsqueeze(-1)).squeeze(-1)
        if noisy_obs is not None:
            a_t = trgt_params.double()
            abar = torch.as_tensor(alpha_bar, dtype=torch.float64, device=a_t.device)
            abar = abar.reshape(-1).expand(a_t.shape[0])
            var = (1.0 - abar).clamp_min(_MIN_NOISE_VAR)
            m = m + (abar / var)[:, None, None] * (a_t.mT @ a_t)
            c = c + (abar.sqrt() / var)[:, None] * (a_t.mT @ noisy_obs.double().unsqueeze(-1)).squeeze(-1)
        return m, c

    def posterior_sample(
        self, ctxt_obs: Tensor, ctxt_params: Tensor, n: int, generator: torch.Generator
    ) -> Tensor:
        """``n`` exact samples of ``p(S | y_c)`` for ONE context.

        ``ctxt_obs`` is ``(2,)``, ``ctxt_params`` ``(2, D)``; returns ``(n, D)``
        float32 on the device of ``ctxt_obs``.
        """
        m, c = self.likelihood_information(ctxt_obs[None], ctxt_params[None])
        return self._posterior_sample(m[0], c[0], n, generator).to(ctxt_obs.device, torch.float32)

    def exact_denoiser(
        self,
        ctxt_obs: Tensor,
        ctxt_params: Tensor,
        noisy_obs: Tensor,
        alpha_bar: Tensor | float,
        trgt_params: Tensor,
    ) -> Tensor:
        """The Bayes-optimal denoiser ``E[S | y_c, x_t]``, batched.

        Shapes: ``ctxt_obs (B, 2)``, ``ctxt_params (B, 2, D)``, ``noisy_obs (B, 2)``,
        ``alpha_bar (B,)`` (or a scalar), ``trgt_params (B, 2, D)`` -> ``(B, D)`` in
        the dtype of ``noisy_obs``.  Exact for any ``abar`` in ``[0, 1]``:
        ``abar = 0`` gives the context posterior mean ``E[S | y_c]``.
        """
        m, c = self.likelihood_information(ctxt_obs, ctxt_params, noisy_obs, alpha_bar, trgt_params)
        return self._posterior_mean(m, c).to(noisy_obs.dtype)

    def _posterior_mean(self, m: Tensor, c: Tensor) -> Tensor:
        """Mean of ``prior(S) * exp(-1/2 S^T M S + c^T S)``, batched, float64."""
        raise NotImplementedError

    def _posterior_sample(self, m: Tensor, c: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """``n`` samples of ``prior(S) * exp(-1/2 S^T M S + c^T S)`` for one ``(M, c)``."""
        raise NotImplementedError


class GaussianMixtureProblem(LinearToyProblem):
    """Signal prior: a Gaussian mixture; every posterior is a Gaussian mixture in closed form.

    The component means sit at the vertices of a regular simplex with edge
    length ``separation`` (in a random subspace), so components are well
    separated, yet a 2-D projection can superimpose them, which makes the
    context posterior genuinely multimodal.  Each covariance has eigenvalues
    log-spaced in ``[0.02, 0.4]`` under its own random rotation.  With the
    defaults the per-coordinate standard deviations of ``S`` lie in 0.6..1.2.
    Weights are random (``∝ 1 + U[0, 1]``) so that errors in mixture weights
    are not hidden by symmetry.
    """

    def __init__(
        self,
        dim: int = 4,
        components: int = 3,
        context_noise: float = 0.05,
        seed: int = 0,
        separation: float = 3.0,
        eigenvalue_range: tuple[float, float] = (0.02, 0.4),
    ):
        super().__init__(dim, context_noise)
        if not 1 <= components <= dim:
            raise ValueError("need 1 <= components <= dim for the simplex construction of the means")
        g = torch.Generator().manual_seed(seed)
        basis = _random_rotation(dim, g)[:, :components].T  # orthonormal rows
        # Orthonormal vectors are sqrt(2) apart; centre them so E[S] = 0.
        means = basis * (separation / math.sqrt(2.0))
        self.means = means - means.mean(0)
        eigs = torch.logspace(*(math.log10(v) for v in eigenvalue_range), dim, dtype=torch.float64)
        rots = torch.stack([_random_rotation(dim, g) for _ in range(components)])
        self.covariances = rots @ torch.diag_embed(eigs) @ rots.mT
        w = 1.0 + torch.rand(components, generator=g, dtype=torch.float64)
        self.weights = w / w.sum()

        # Quantities reused by every posterior computation.
        self._chol = torch.linalg.cholesky(self.covariances)
        self._prec = torch.cholesky_inverse(self._chol)
        self._prec_mean = (self._prec @ self.means.unsqueeze(-1)).squeeze(-1)
        # log pi_k - 1/2 mu^T Lambda mu - 1/2 log|Sigma|: the prior's share of the log weight.
        self._log_w0 = (
            self.weights.log()
            - 0.5 * (self.means * self._prec_mean).sum(-1)
            - torch.diagonal(self._chol, dim1=-2, dim2=-1).log().sum(-1)
        )

    def sample_signals(self, n: int, generator: torch.Generator) -> Tensor:
        dev = generator.device
        k = torch.multinomial(self.weights.to(dev), n, replacement=True, generator=generator)
        z = _randn((n, self.signal_dim), generator, torch.float64)
        s = self.means.to(dev)[k] + (self._chol.to(dev)[k] @ z.unsqueeze(-1)).squeeze(-1)
        return s.float()

    def _components(self, m: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Posterior mixture: log weights ``(B, K)``, means ``(B, K, D)``, precision Cholesky ``(B, K, D, D)``.

        Component ``k`` has precision ``P_k = Lambda_k + M`` and mean
        ``P_k^{-1} h_k`` with ``h_k = Lambda_k mu_k + c``; its weight is the
        Gaussian integral ``pi_k |Sigma_k|^{-1/2} |P_k|^{-1/2}
        exp(h_k^T P_k^{-1} h_k / 2 - mu_k^T Lambda_k mu_k / 2)``
        (normalised later, so factors common to all k are dropped).
        """
        dev = m.device
        prec = self._prec.to(dev) + m[:, None]
        h = self._prec_mean.to(dev) + c[:, None]
        chol = torch.linalg.cholesky(prec)
        mean = torch.cholesky_solve(h.unsqueeze(-1), chol).squeeze(-1)
        log_w = (
            self._log_w0.to(dev)
            + 0.5 * (h * mean).sum(-1)
            - torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
        )
        return torch.log_softmax(log_w, -1), mean, chol

    def _posterior_mean(self, m: Tensor, c: Tensor) -> Tensor:
        log_w, mean, _ = self._components(m, c)
        return (log_w.exp().unsqueeze(-1) * mean).sum(-2)

    def _posterior_sample(self, m, c, n, generator):
        log_w, mean, chol = (x[0].to(generator.device) for x in self._components(m[None], c[None]))
        k = torch.multinomial(log_w.exp(), n, replacement=True, generator=generator)
        z = _randn((n, self.signal_dim, 1), generator, torch.float64)
        # Covariance P^{-1} = L^{-T} L^{-1}, so L^{-T} z has the right covariance.
        dev = torch.linalg.solve_triangular(chol[k].mT, z, upper=True).squeeze(-1)
        return mean[k] + dev


class ManifoldProblem(LinearToyProblem):
    """Signal prior: ``S = f(u)``, ``u ~ U[0, 1]``, on a random smooth closed curve in ``R^D``.

    ``f(u) = sum_{k=1..modes} a_k cos(2 pi k u) + b_k sin(2 pi k u)`` with
    ``a_k, b_k ~ N(0, k^-2 I)``, each coordinate rescaled to unit standard
    deviation over ``u``.  The prior is singular (a 1-D set in ``R^D``), the
    hard case for diffusion models, while posteriors stay 1-D integrals.

    Posteriors are computed by quadrature on the uniform grid
    ``u_g = (g + 1/2) / grid``.  Because the curve is closed, every integrand
    is smooth and periodic in ``u``, and the equal-weight rule is the
    trapezoidal rule, which converges geometrically: its relative error is
    about ``2 exp(-2 pi^2 (w / h)^2)`` for a likelihood of width ``w`` in ``u``
    and grid spacing ``h``.  The narrowest likelihood comes from ``x_t`` at the
    smallest noise, ``w ≈ sqrt(1 - abar) / |A_t f'(u)|``.  With the default
    ``grid = 16384`` and the default curve (length 19.5, max ``|f'| ≈ 33``) the
    denoiser is exact to float64 round-off down to ``1 - abar = 1e-5`` (noise
    std 3e-3, half the ~6e-3 at t = 0 of a 1000-step cosine schedule): a 4x
    finer grid changes it by < 1e-12 (worst of 2000 random examples).  At
    ``1 - abar = 1e-6`` the worst case is 1e-4 (median 1e-13).  For still
    smaller noise the error stays bounded by about ``h |f'| / 2 ≈ 1e-3``, as
    the weights merely snap to the nearest grid points.  Cost: ~0.4 s for
    B = 10,000 on 2 CPU cores, memory bounded by ``chunk_elements``.

    Posterior samples draw a grid cell from the quadrature weights and then
    ``u`` uniformly within the cell, so they lie exactly on the curve.  The
    within-cell density is taken as flat, which is accurate since the context
    likelihood (noise ``context_noise``) is far wider than a cell.
    """

    def __init__(
        self,
        dim: int = 5,
        context_noise: float = 0.1,
        seed: int = 0,
        grid: int = 16384,
        modes: int = 3,
        chunk_elements: int = 2**21,
    ):
        super().__init__(dim, context_noise)
        g = torch.Generator().manual_seed(seed)
        scale = 1.0 / torch.arange(1, modes + 1, dtype=torch.float64)
        cos = _randn((modes, dim), g, torch.float64) * scale[:, None]
        sin = _randn((modes, dim), g, torch.float64) * scale[:, None]
        # Variance over u of coordinate d is sum_k (a_kd^2 + b_kd^2) / 2.
        std = ((cos**2 + sin**2).sum(0) / 2).sqrt()
        self.cos_coef, self.sin_coef = cos / std, sin / std
        self.frequencies = 2 * math.pi * torch.arange(1, modes + 1, dtype=torch.float64)
        self.grid = int(grid)
        # Rows of the (chunk, grid) weight matrix processed at once: bounds memory
        # to a few times chunk_elements float64 values (~16 MB each by default).
        self.chunk_elements = int(chunk_elements)
        self.grid_u = (torch.arange(self.grid, dtype=torch.float64) + 0.5) / self.grid
        self.grid_points = self.curve(self.grid_u)
        # log-weight of grid point g is theta . phi_g with phi_g = [vec(f f^T), f]
        # and theta = [-vec(M)/2, c]: one matmul per chunk instead of residuals.
        f = self.grid_points
        self._features = torch.cat([(f[:, :, None] * f[:, None, :]).flatten(1), f], 1)

    def curve(self, u: Tensor) -> Tensor:
        """Evaluate ``f(u)`` for ``u`` of any shape -> ``(*u.shape, D)`` float64."""
        dev = u.device
        phase = u.double().unsqueeze(-1) * self.frequencies.to(dev)
        return phase.cos() @ self.cos_coef.to(dev) + phase.sin() @ self.sin_coef.to(dev)

    def sample_signals(self, n: int, generator: torch.Generator) -> Tensor:
        u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
        return self.curve(u).float()

    @staticmethod
    def _log_weights(m: Tensor, c: Tensor, features: Tensor) -> Tensor:
        """Unnormalised log posterior weights of the grid points, ``(B, grid)``."""
        return torch.cat([-0.5 * m.flatten(1), c], 1) @ features.T

    def _posterior_mean(self, m: Tensor, c: Tensor) -> Tensor:
        points, features = self.grid_points.to(m.device), self._features.to(m.device)
        chunk = max(1, self.chunk_elements // self.grid)
        out = [
            torch.softmax(self._log_weights(mi, ci, features), -1) @ points
            for mi, ci in zip(m.split(chunk), c.split(chunk))
        ]
        return torch.cat(out) if out else m.new_zeros(0, self.signal_dim)

    def _posterior_sample(self, m, c, n, generator):
        dev = generator.device
        log_w = self._log_weights(m[None], c[None], self._features.to(m.device))[0]
        w = torch.softmax(log_w, -1).to(dev)
        cell = torch.multinomial(w, n, replacement=True, generator=generator)
        jitter = torch.rand(n, generator=generator, device=dev, dtype=torch.float64) - 0.5
        return self.curve(self.grid_u.to(dev)[cell] + jitter / self.grid)
