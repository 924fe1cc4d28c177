"""Volume rendering of radiance fields, as small independent stages (sample → query → composite).

Nothing here knows about networks or cameras:

- a *field* (:data:`Field`) maps sample points and their ray directions to a dict with at least
  ``"density"`` (>= 0) and ``"rgb"``; every other entry (e.g. ``"features"``) is composited the
  same way as ``rgb``;
- rays arrive as world-space ``origins`` and **unit** ``directions`` with ``near``/``far`` given
  as floats or tensors broadcastable to ``*batch 1``.

Dimension names (jaxtyping): ``*batch`` the rays' batch shape (e.g. ``R`` or ``B R``); ``S``
samples (bins) per ray and ``S+1`` their edges (``E`` edges and ``E-1`` bins in
:func:`importance_samples`, whose edges come first); ``N`` samples drawn by
:func:`importance_samples`; ``_`` a size that varies between the entries of a dict (channels).

Samples are **bins**: sample ``i`` sits at distance ``t_i`` inside the interval ``[edges_i,
edges_{i+1}]`` and stands for the whole interval, whose length ``delta_i`` weighs it in the
quadrature of the rendering integral. All distances are along the ray (ray distance, not camera
z; ``dfm.cameras.z_depth`` converts). The bins exactly tile ``[near, far]``, so whatever lies
beyond ``far`` is the background.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.utils.checkpoint
from jaxtyping import Float
from torch import Tensor

from dfm.precision import full_precision

Field = Callable[[Float[Tensor, "*batch S 3"], Float[Tensor, "*batch S 3"]], dict[str, Float[Tensor, "*batch S _"]]]
"""``field(points, directions) -> {"density": (*batch S 1), "rgb": (*batch S 3), ...}``."""
Bound = float | Float[Tensor, ""] | Float[Tensor, "*#batch 1"]
"""A ray distance (``near``, ``far``): a scalar or a tensor broadcastable to ``*batch 1``."""
Background = float | Float[Tensor, ""] | Float[Tensor, "*#batch #3"]
"""What rays that hit nothing see (added to ``rgb``): a scalar or RGB broadcastable to ``*batch 3``."""
DEPTH_SPACINGS = ("linear", "disparity")


@dataclass(frozen=True)
class RaySamples:
    """Sample distances ``t`` and the bin ``edges`` around them."""

    t: Float[Tensor, "*batch S 1"]
    edges: Float[Tensor, "*batch S+1 1"]

    @property
    def deltas(self) -> Float[Tensor, "*batch S 1"]:
        """Bin lengths."""
        return self.edges[..., 1:, :] - self.edges[..., :-1, :]


def stratified_samples(
    origins: Float[Tensor, "*batch 3"],
    near: Bound,
    far: Bound,
    num_samples: int,
    *,
    spacing: Literal["linear", "disparity"] = "linear",
    perturb: bool = False,
    generator: torch.Generator | None = None,
) -> RaySamples:
    """Split ``[near, far]`` into ``num_samples`` bins, evenly in depth (``linear``) or in disparity
    ``1/t`` (``disparity``: finer near the camera, for unbounded scenes; needs ``near > 0``).

    Without ``perturb`` each sample is its bin's midpoint (in the spacing's coordinate, so in
    ``1/t`` for ``disparity``); with it, one uniform sample per bin (stratified sampling), so that
    across training steps the field is queried everywhere along the ray, not only at fixed depths.
    ``origins`` only gives the batch shape, dtype and device.
    """
    if spacing not in DEPTH_SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; available: {DEPTH_SPACINGS}")
    batch, like = origins.shape[:-1], dict(dtype=origins.dtype, device=origins.device)
    near, far = (torch.as_tensor(x, **like).expand(*batch, 1)[..., None] for x in (near, far))  # (*batch 1 1)
    if spacing == "disparity" and (near <= 0).any():
        raise ValueError("disparity spacing needs near > 0")
    s = torch.linspace(0, 1, num_samples + 1, **like)[:, None]  # (S+1 1), the spacing's coordinate
    u = torch.rand(*batch, num_samples, 1, generator=generator, **like) if perturb else 0.5
    s_t = s[:-1] + u * (s[1:] - s[:-1])

    def to_distance(s: Tensor) -> Tensor:
        if spacing == "linear":
            return near + s * (far - near)
        return 1 / (1 / near + s * (1 / far - 1 / near))

    return RaySamples(t=to_distance(s_t), edges=to_distance(s))


def importance_samples(
    edges: Float[Tensor, "*batch E 1"],
    weights: Float[Tensor, "*batch E-1 1"],
    num_samples: int,
    *,
    perturb: bool = False,
    generator: torch.Generator | None = None,
    padding: float = 1e-5,
) -> Float[Tensor, "*batch N 1"]:
    """Draw ``N = num_samples`` sorted distances from the piecewise-constant pdf that puts mass
    ``weights`` on the bins between ``edges`` (inverse-CDF sampling).

    ``padding`` is added to every weight so that empty rays (all-zero weights) still get samples,
    spread over the bins. ``perturb`` draws stratified uniforms ``(k + U) / N``; otherwise the
    quantiles ``(k + 1/2) / N``. Inputs are detached: sample positions carry no gradient, so a loss
    on the fine rendering never reaches the coarse field through where it placed the samples (the
    coarse field is trained by its own photometric term instead).
    """
    edges, weights = edges.detach()[..., 0], weights.detach()[..., 0] + padding  # (*batch E), (*batch E-1)
    cdf = (weights / weights.sum(-1, keepdim=True)).cumsum(-1)[..., :-1].clamp(max=1)
    cdf = torch.cat([torch.zeros_like(cdf[..., :1]), cdf, torch.ones_like(cdf[..., :1])], -1)  # (*batch E)
    shape = (*weights.shape[:-1], num_samples)
    u = torch.rand(shape, generator=generator, dtype=edges.dtype, device=edges.device) if perturb else 0.5
    u = (torch.arange(num_samples, dtype=edges.dtype, device=edges.device) + u).expand(shape) / num_samples
    above = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True).clamp(1, weights.shape[-1])
    below = above - 1  # cdf[below] <= u < cdf[above]
    c0, c1, e0, e1 = cdf.gather(-1, below), cdf.gather(-1, above), edges.gather(-1, below), edges.gather(-1, above)
    fraction = ((u - c0) / (c1 - c0).clamp_min(torch.finfo(edges.dtype).tiny)).clamp(0, 1)
    return (e0 + fraction * (e1 - e0))[..., None]


def merge_samples(coarse: RaySamples, fine_t: Float[Tensor, "*batch N 1"]) -> RaySamples:
    """The sorted union of the ``S`` coarse samples and the ``N`` of ``fine_t`` (``S+N`` samples),
    which the fine field evaluates (as in NeRF). New bins meet halfway between neighbouring samples
    and still tile ``[near, far]``, so every sample stands for the stretch of ray closest to it."""
    t = torch.sort(torch.cat([coarse.t, fine_t], dim=-2), dim=-2).values
    midpoints = (t[..., 1:, :] + t[..., :-1, :]) / 2
    return RaySamples(t=t, edges=torch.cat([coarse.edges[..., :1, :], midpoints, coarse.edges[..., -1:, :]], dim=-2))


@full_precision  # transmittance is a product of many factors near 1: bf16 (8 bits) would lose it
def composite(
    density: Float[Tensor, "*batch S 1"],
    values: dict[str, Float[Tensor, "*batch S _"]],
    deltas: Float[Tensor, "*batch S 1"],
    t: Float[Tensor, "*batch S 1"],
    *,
    background: Background | None = None,
) -> dict[str, Float[Tensor, "*batch _"] | Float[Tensor, "*batch S 1"]]:
    """Alpha-composite samples along each ray (the NeRF quadrature, exact for a field that is constant
    within each bin).

    Returns, per ray, every entry of ``values`` ``(*batch C)`` (``rgb`` plus ``(1 - opacity) *
    background`` when a background is given; other entries get none), ``opacity`` ``(*batch 1)``
    (accumulated alpha, the probability that the ray terminates before the last bin ends), ``depth``
    ``(*batch 1)`` and per sample ``weights`` and ``transmittance`` (the light left *before* the
    sample) ``(*batch S 1)``.

    ``depth`` is the expected ray distance at which the ray terminates, given that it does
    (normalised by opacity); rays that hit nothing read the last sample's distance, through a tiny
    weight on it, which keeps the division finite. ``depth * opacity`` is the unnormalised one.
    Normalised depth is ill-conditioned where opacity is tiny (its gradient scales as 1 / opacity):
    a loss on the depth of possibly empty rays should weight it by opacity.
    """
    optical = density * deltas
    alpha = -torch.expm1(-optical)
    before = torch.cat([torch.zeros_like(optical[..., :1, :]), optical.cumsum(-2)[..., :-1, :]], -2)  # exclusive sum
    transmittance = torch.exp(-before)
    weights = transmittance * alpha
    opacity = weights.sum(-2)
    out = {name: (weights * value).sum(-2) for name, value in values.items()}
    if background is not None:
        out["rgb"] = out["rgb"] + (1 - opacity) * background
    eps = 1e-10
    depth = ((weights * t).sum(-2) + eps * t[..., -1, :]) / (opacity + eps)
    return out | {"depth": depth, "opacity": opacity, "weights": weights, "transmittance": transmittance}


def distortion_loss(
    weights: Float[Tensor, "*batch S 1"], edges: Float[Tensor, "*batch S+1 1"]
) -> Float[Tensor, "*batch"]:
    """Mip-NeRF 360's distortion loss per ray, for ``weights`` on the bins between ``edges``:

        sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (e_{i+1} - e_i),   m_i the bin midpoints,

    which pulls each ray's weight into one compact interval (no floaters, no haze). The double sum
    is ``2 sum_i w_i sum_{j<i} w_j (m_i - m_j)`` for sorted bins, computed in O(S) with cumulative
    sums. The loss has the units of ``edges``: pass them normalised (e.g. divided by ``far``) to
    make its weight independent of the scene's scale.
    """
    w, e = weights[..., 0], edges[..., 0]
    m, d = (e[..., 1:] + e[..., :-1]) / 2, e[..., 1:] - e[..., :-1]
    w_before = w.cumsum(-1) - w  # sum_{j<i} w_j
    wm_before = (w * m).cumsum(-1) - w * m  # sum_{j<i} w_j m_j
    return 2 * (w * (m * w_before - wm_before)).sum(-1) + (w**2 * d).sum(-1) / 3


def render_rays(
    field: Field,
    origins: Float[Tensor, "*batch 3"],
    directions: Float[Tensor, "*batch 3"],
    near: Bound,
    far: Bound,
    *,
    num_coarse: int,
    num_fine: int = 0,
    fine_field: Field | None = None,
    spacing: Literal["linear", "disparity"] = "linear",
    perturb: bool = False,
    background: Background | None = None,
    generator: torch.Generator | None = None,
    chunk: int | None = None,
    checkpoint: bool = False,
) -> dict[str, dict[str, Tensor]]:
    """Render rays through ``field``: ``{"coarse": ..., "fine": ...}`` (``"fine"`` only
    when ``num_fine > 0``), each the output of :func:`composite` plus the bin ``edges`` (for
    :func:`distortion_loss`).

    The coarse pass uses ``num_coarse`` stratified samples; the fine pass evaluates ``fine_field``
    (default: ``field``) on the union of those and ``num_fine`` samples drawn from the coarse
    weights. Put a photometric loss on both results: the sample positions are detached (see
    :func:`importance_samples`), so the coarse field learns only from its own rendering.

    ``chunk`` renders at most that many rays at a time along the last ray dimension (the leading
    batch dimensions stay whole, so a field conditioned per batch element still sees them), for full
    images without running out of memory; the results equal unchunked rendering, except that with
    ``perturb`` the random draws differ. Under autograd, ``chunk`` bounds memory only with
    ``checkpoint``: each chunk's field evaluations are then recomputed in the backward pass instead of
    stored, so training holds one chunk's activations and the rendered outputs (the field's hidden
    activations are rays x samples x width floats per layer, the bulk of a large field's memory).
    """
    if checkpoint and perturb and generator is not None:
        raise ValueError("checkpoint recomputes the samples in the backward pass: perturb them with the global RNG (generator=None), whose state it restores")
    fine_field = field if fine_field is None else fine_field

    def render(origins: Tensor, directions: Tensor, near, far) -> dict[str, dict[str, Tensor]]:
        coarse = stratified_samples(
            origins, near, far, num_coarse, spacing=spacing, perturb=perturb, generator=generator
        )
        results = {"coarse": _shade(field, origins, directions, coarse, background)}
        if num_fine:
            weights = results["coarse"]["weights"]
            fine_t = importance_samples(coarse.edges, weights, num_fine, perturb=perturb, generator=generator)
            results["fine"] = _shade(fine_field, origins, directions, merge_samples(coarse, fine_t), background)
        return results

    def render_piece(*rays: Tensor) -> dict[str, dict[str, Tensor]]:
        if checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(render, *rays, use_reentrant=False)
        return render(*rays)

    like = dict(dtype=origins.dtype, device=origins.device)
    near, far = (torch.as_tensor(x, **like).expand_as(origins[..., :1]) for x in (near, far))
    if chunk is None:
        return render_piece(origins, directions, near, far)
    dim = origins.dim() - 2  # the last ray dimension, counted from the front
    pieces = [render_piece(*rays) for rays in zip(*(x.split(chunk, dim) for x in (origins, directions, near, far)))]
    return {
        level: {name: torch.cat([piece[level][name] for piece in pieces], dim) for name in names}
        for level, names in pieces[0].items()
    }


def _shade(
    field: Field,
    origins: Float[Tensor, "*batch 3"],
    directions: Float[Tensor, "*batch 3"],
    samples: RaySamples,
    background: Background | None,
) -> dict[str, Tensor]:
    """Query ``field`` at ``samples`` along the rays and composite; adds the bin ``edges``."""
    points = origins[..., None, :] + samples.t * directions[..., None, :]  # (*batch S 3)
    out = field(points, directions[..., None, :].expand_as(points))
    values = {name: value for name, value in out.items() if name != "density"}
    rendered = composite(out["density"], values, samples.deltas, samples.t, background=background)
    return rendered | {"edges": samples.edges}
