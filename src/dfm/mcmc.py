"""Gradient-based MCMC over a batch of independent targets, with convergence diagnostics.

Reference posteriors (e.g. ``p(z | observation)`` for a fixed differentiable generator) are sampled
here so that a diffusion model's samples can be compared against them. The module knows nothing of
the model: it takes a batched unnormalised log density ``log_prob(x: (P, C, D)) -> (P, C)`` over
``P`` independent problems, each with ``C`` chains in ``D`` dimensions.

Samplers: :func:`hmc` (Hamiltonian Monte Carlo, leapfrog integrator) and :func:`mala` (HMC with one
leapfrog step, which is exactly the Metropolis-adjusted Langevin algorithm). During warmup, each
problem's step size is adapted by a Robbins-Monro recursion on its log toward the target mean
acceptance, and its diagonal mass matrix by the pooled variance of its chains over a few doubling
windows (the scheme Stan uses). The diagnostics (:func:`split_rhat`, :func:`effective_sample_size`)
follow Gelman et al. (BDA3, ch. 11) with Geyer's initial monotone sequence, without rank
normalisation; they also apply to derived quantities (e.g. the pixels of generated images).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

LogProb = Callable[[Tensor], Tensor]

JITTER = 0.2  # each chain's step size is drawn from eps * U(1 - JITTER, 1 + JITTER) every iteration
# Step size adaptation: log eps += GAIN * (m + OFFSET) ** -DECAY * (mean acceptance - target) at
# warmup iteration m. DECAY in (0.5, 1] makes the recursion converge (the gains sum to infinity,
# their squares do not); the gain is large enough to move eps by a factor ~100 in the first tens of
# iterations. Hoffman & Gelman's dual averaging was tried first: its averaged step size is biased
# low (acceptance 0.85-0.93 for a target of 0.75 with a few hundred warmup iterations), because it
# averages iterates that keep fluctuating; the last Robbins-Monro iterate settles on the target.
GAIN, OFFSET, DECAY = 3.0, 5.0, 0.6
CHUNK = 2**22  # diagnostics take this many draws (float64) at a time, so image-sized inputs fit


@dataclass
class MCMCResult:
    """Draws kept after warmup and their convergence diagnostics, per problem."""

    samples: Tensor  # (P, S, C, D): S kept (thinned) draws of C chains
    accept_rate: Tensor  # (P,) mean Metropolis acceptance probability after warmup
    step_size: Tensor  # (P,) the frozen post-warmup step size
    inv_mass: Tensor  # (P, D) the frozen diagonal inverse mass matrix (ones without adaptation)
    rhat: Tensor  # (P, D) split-R-hat of each coordinate
    ess: Tensor  # (P, D) effective sample size of each coordinate, over all chains

    def summary(self) -> dict[str, float]:
        """The numbers to report as convergence diagnostics: worst R-hat, worst ESS, mean acceptance."""
        return {
            "rhat_max": float(self.rhat.max()),
            "ess_min": float(self.ess.min()),
            "accept_rate": float(self.accept_rate.mean()),
        }


def hmc(
    log_prob: LogProb,
    init: Tensor,
    *,
    steps: int,
    warmup: int,
    leapfrog: int = 10,
    step_size: float = 0.1,
    target_accept: float = 0.75,
    thin: int = 1,
    adapt_mass: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> MCMCResult:
    """Hamiltonian Monte Carlo on ``P`` independent targets at once.

    ``init`` is ``(P, C, D)``; ``log_prob`` maps ``(P, C, D)`` to ``(P, C)`` and must be
    differentiable (gradients are taken with autograd even inside ``torch.no_grad``). Runs
    ``warmup`` iterations that tune each problem's step size toward ``target_accept`` mean acceptance
    (and, with ``adapt_mass``, its diagonal mass matrix to its chains' variance, which matters when
    coordinates have very different scales), then ``steps`` iterations of which every ``thin``-th
    is kept. Each iteration integrates ``leapfrog`` steps with a per-chain jittered step size (so that no
    trajectory length resonates with a period of the target) and accepts or rejects per chain.
    A non-finite log density or gradient anywhere on a trajectory rejects it. All randomness comes
    from ``generator`` (a freshly seeded one when ``None``), so runs are reproducible.
    """
    _check_args(init, steps=steps, warmup=warmup, leapfrog=leapfrog, step_size=step_size,
                target_accept=target_accept, thin=thin)
    P, C, D = init.shape
    if generator is None:
        generator = torch.Generator(device=init.device)
        generator.seed()
    state = _evaluate(log_prob, init.detach().clone())
    bad = int((~state.finite).sum())
    if bad:
        raise ValueError(f"{bad} of {P * C} chains start where the log density or its gradient is not finite")

    log_eps = init.new_full((P,), math.log(step_size))
    inv_mass = init.new_ones(P, D)
    window_start, window_ends = _mass_windows(warmup) if adapt_mass else (0, [])
    moments = _Moments.start(state.x)
    samples = init.new_empty(P, steps // thin, C, D)
    accept_sum = init.new_zeros(P)
    for it in tqdm(range(warmup + steps), desc="mcmc", disable=not progress, leave=False):
        state, accept = _transition(log_prob, state, log_eps.exp(), inv_mass, leapfrog, generator)
        if it < warmup:
            log_eps += GAIN * (it + 1 + OFFSET) ** -DECAY * (accept.mean(1) - target_accept)
            if window_ends and window_start <= it < window_ends[-1]:
                moments.add(state.x)
            if it + 1 in window_ends:
                inv_mass = moments.variance().to(inv_mass.dtype)
                moments = _Moments.start(state.x)
            continue
        kept = it - warmup + 1
        accept_sum += accept.mean(1)
        if kept % thin == 0:
            samples[:, kept // thin - 1] = state.x
    by_chain = samples.permute(1, 2, 0, 3)  # (S, C, P, D): the diagnostics' layout
    return MCMCResult(
        samples=samples,
        accept_rate=accept_sum / steps,
        step_size=log_eps.exp(),
        inv_mass=inv_mass,
        rhat=split_rhat(by_chain).to(init.dtype),
        ess=effective_sample_size(by_chain).to(init.dtype),
    )


def mala(
    log_prob: LogProb,
    init: Tensor,
    *,
    steps: int,
    warmup: int,
    step_size: float = 0.1,
    target_accept: float = 0.574,
    thin: int = 1,
    adapt_mass: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> MCMCResult:
    """Metropolis-adjusted Langevin: :func:`hmc` with a single leapfrog step (the same chain).

    The default ``target_accept`` is the asymptotically optimal 0.574 (Roberts & Rosenthal 1998)."""
    return hmc(log_prob, init, steps=steps, warmup=warmup, leapfrog=1, step_size=step_size,
               target_accept=target_accept, thin=thin, adapt_mass=adapt_mass, generator=generator,
               progress=progress)


def split_rhat(x: Tensor) -> Tensor:
    """Split-R-hat (BDA3 eq. 11.4, chains split in halves) of draws ``(S, C, ...)``, shape ``(...)``.

    Values near 1 mean the chains agree; > 1.01-1.05 flags chains that have not mixed. Splitting
    also catches a chain that drifts within itself. Plain (not rank-normalised): it assumes finite
    variance. A quantity constant over all draws gives 1, chains stuck at distinct constants ``inf``.
    """
    return _by_columns(_split_rhat, x)


def effective_sample_size(x: Tensor) -> Tensor:
    """Effective sample size of the mean of draws ``(S, C, ...)`` over all chains, shape ``(...)``.

    Multi-chain autocorrelation estimate on split chains (BDA3 eq. 11.7, which also counts the
    between-chain variance as correlation), summed with Geyer's (1992) initial monotone sequence:
    pairs of consecutive autocorrelations are summed while positive and forced non-increasing. The
    autocorrelation time is floored at ``1 / log10(N)`` (so ESS <= N log10 N, for antithetic
    chains). A quantity constant over all draws gives ``N = S * C``.
    """
    return _by_columns(_ess, x)


# --- internals ----------------------------------------------------------------------------------


@dataclass
class _State:
    """Chains' positions with the log density and its gradient there."""

    x: Tensor  # (P, C, D)
    log_prob: Tensor  # (P, C)
    grad: Tensor  # (P, C, D)

    @property
    def finite(self) -> Tensor:
        """(P, C): chains whose position, log density and gradient are all finite."""
        return self.log_prob.isfinite() & self.grad.isfinite().all(-1) & self.x.isfinite().all(-1)


def _evaluate(log_prob: LogProb, x: Tensor) -> _State:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        lp = log_prob(x)
        if lp.shape != x.shape[:2]:
            raise ValueError(f"log_prob must map {tuple(x.shape)} to {tuple(x.shape[:2])}, got {tuple(lp.shape)}")
        (grad,) = torch.autograd.grad(lp.sum(), x)
    return _State(x.detach(), lp.detach(), grad)


def _transition(
    log_prob: LogProb, state: _State, eps: Tensor, inv_mass: Tensor, leapfrog: int, generator: torch.Generator
) -> tuple[_State, Tensor]:
    """One HMC iteration; returns the new state and each chain's acceptance probability ``(P, C)``."""
    x = state.x
    u = torch.rand(x.shape[:2] + (1,), generator=generator, device=x.device, dtype=x.dtype)
    h = eps[:, None, None] * (1 + JITTER * (2 * u - 1))  # (P, C, 1)
    m = inv_mass[:, None, :]  # (P, 1, D)
    p = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) / m.sqrt()
    energy = -state.log_prob + 0.5 * (m * p * p).sum(-1)

    ok = torch.ones_like(state.log_prob, dtype=torch.bool)
    new = state
    p = p + 0.5 * h * new.grad
    for i in range(leapfrog):
        new = _evaluate(log_prob, new.x + h * m * p)
        finite = new.finite
        ok &= finite
        # a zero gradient keeps a failed trajectory finite; it is rejected below anyway
        new.grad = torch.where(finite[..., None], new.grad, 0.0)
        p = p + (0.5 if i == leapfrog - 1 else 1.0) * h * new.grad
    new_energy = -new.log_prob + 0.5 * (m * p * p).sum(-1)

    # the all-finite condition is symmetric under reversing the trajectory, so detailed balance holds
    log_accept = torch.where(ok, (energy - new_energy).clamp(max=0), -math.inf)
    u = torch.rand(log_accept.shape, generator=generator, device=x.device, dtype=x.dtype)
    take = u.log() < log_accept
    moved = _State(
        x=torch.where(take[..., None], new.x, state.x),
        log_prob=torch.where(take, new.log_prob, state.log_prob),
        grad=torch.where(take[..., None], new.grad, state.grad),
    )
    return moved, log_accept.exp()


@dataclass
class _Moments:
    """Running per-problem variance over chains and iterations (shifted float64 sums)."""

    shift: Tensor  # (P, D) float64
    total: Tensor  # (P, D)
    squares: Tensor  # (P, D)
    count: int = 0

    @classmethod
    def start(cls, x: Tensor) -> _Moments:
        shift = x.detach().to(torch.float64).mean(1)
        return cls(shift, torch.zeros_like(shift), torch.zeros_like(shift))

    def add(self, x: Tensor) -> None:
        d = x.to(torch.float64) - self.shift[:, None]
        self.total += d.sum(1)
        self.squares += (d * d).sum(1)
        self.count += x.shape[1]

    def variance(self) -> Tensor:
        """Regularised toward 1e-3 for few draws (as Stan does), so a mass never collapses to zero."""
        n = self.count
        mean = self.total / n
        var = (self.squares / n - mean * mean).clamp(min=0)
        return n / (n + 5) * var + 1e-3 * 5 / (n + 5)


def _mass_windows(warmup: int) -> tuple[int, list[int]]:
    """Start of the first mass-adaptation window and the iterations where each window ends.

    Stan's schedule scaled to ``warmup``: the first 15% only tunes the step size (chains are still
    travelling to the typical set), then windows of doubling length (from 5%) estimate the variance,
    the last one stretched to end at 90%; the last 10% retunes the step size for the final mass.
    """
    if warmup < 20:
        return 0, []
    start, stop, width = int(0.15 * warmup), warmup - int(0.1 * warmup), max(int(0.05 * warmup), 1)
    ends, end = [], start
    while end < stop:
        end = end + width
        if end + 2 * width > stop:
            end = stop
        ends.append(end)
        width *= 2
    return start, ends


def _by_columns(stat: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``stat`` of split chains ``(S // 2, 2C, K) -> (K,)`` for draws ``(S, C, ...)``, shape ``(...)``.

    Each chain's halves become two chains (the middle draw of odd ``S`` is dropped); columns go
    through ``stat`` in float64, a chunk of at most ``CHUNK`` draws at a time."""
    if x.ndim < 2 or x.shape[0] < 4:
        raise ValueError(f"need draws shaped (S >= 4, C, ...), got {tuple(x.shape)}")
    S, C = x.shape[:2]
    n = S // 2
    columns = x.detach().reshape(S, C, -1).split(max(1, CHUNK // (S * C)), dim=2)
    out = [stat(torch.cat([c[:n], c[S - n :]], dim=1).to(torch.float64)) for c in columns]
    return torch.cat(out).reshape(x.shape[2:])


def _split_rhat(chains: Tensor) -> Tensor:
    within, pooled = _variances(chains)
    rhat = (pooled / within).sqrt()
    stuck = torch.where(pooled > 0, math.inf, 1.0).to(rhat)
    return torch.where(within > 0, rhat, stuck)


def _ess(chains: Tensor) -> Tensor:
    n, M = chains.shape[:2]
    total = n * M
    within, pooled = _variances(chains)
    rho = 1 - (within - _autocovariance(chains).mean(1)) / pooled  # (n, K)
    rho[0] = 1
    pairs = rho[0 : n - n % 2 : 2] + rho[1:n:2]  # (n // 2, K)
    positive = torch.cumprod(pairs > 0, dim=0).bool()
    pairs = torch.cummin(torch.where(positive, pairs, 0.0), dim=0).values
    tau = (2 * pairs.sum(0) - 1).clamp(min=1 / math.log10(total))
    return torch.where(pooled > 0, total / tau, float(total))


def _variances(chains: Tensor) -> tuple[Tensor, Tensor]:
    """Mean within-chain variance ``W`` and pooled estimate ``var+ = (n-1)/n W + B/n``, each ``(K,)``."""
    n = chains.shape[0]
    within = chains.var(0).mean(0)
    return within, (n - 1) / n * within + chains.mean(0).var(0)


def _autocovariance(chains: Tensor) -> Tensor:
    """Biased (divided by ``n``) autocovariance along dim 0 at lags ``0 .. n-1``, via FFT."""
    n = chains.shape[0]
    centred = chains - chains.mean(0)
    f = torch.fft.rfft(centred, n=2 * n, dim=0)
    return torch.fft.irfft(f.abs() ** 2, n=2 * n, dim=0)[:n] / n


def _check_args(init: Tensor, *, steps: int, warmup: int, leapfrog: int, step_size: float,
                target_accept: float, thin: int) -> None:
    if init.ndim != 3:
        raise ValueError(f"init must be (problems, chains, dims), got shape {tuple(init.shape)}")
    if not init.is_floating_point():
        raise ValueError(f"init must be floating point, got {init.dtype}")
    if thin < 1 or steps // thin < 4:
        raise ValueError(f"need thin >= 1 and steps // thin >= 4 kept draws, got steps={steps}, thin={thin}")
    if warmup < 0 or leapfrog < 1 or step_size <= 0 or not 0 < target_accept < 1:
        raise ValueError(f"need warmup >= 0, leapfrog >= 1, step_size > 0 and 0 < target_accept < 1, got "
                         f"{warmup}, {leapfrog}, {step_size}, {target_accept}")
