"""Volume rendering against analytic scenes (slab, spheres), plus sampling, gradients and chunking."""

import math

import pytest
import torch
from torch import nn

from dfm.rendering import (
    RaySamples,
    composite,
    distortion_loss,
    importance_samples,
    merge_samples,
    render_rays,
    stratified_samples,
)


def constant_field(density_fn, colour_fn):
    """A field from ``density_fn(points) -> (..., S, 1)`` and ``colour_fn(points) -> (..., S, 3)``."""
    return lambda points, directions: {"density": density_fn(points), "rgb": colour_fn(points)}


def in_sphere(points, centre, radius):
    distance = (points - torch.as_tensor(centre, dtype=points.dtype)).norm(dim=-1, keepdim=True)
    return (distance <= radius).to(points.dtype)


def ray_sphere(origins, directions, centre, radius):
    """Entry distance and chord length of unit rays through a sphere (0 chord where they miss)."""
    to_centre = torch.as_tensor(centre, dtype=origins.dtype) - origins
    along = (to_centre * directions).sum(-1, keepdim=True)
    miss2 = (to_centre - along * directions).pow(2).sum(-1, keepdim=True)  # squared distance ray-centre
    half = (radius**2 - miss2).clamp_min(0).sqrt()
    return along - half, 2 * half


def rays_towards(targets, origin=(0.0, 0.0, 0.0)):
    targets = torch.as_tensor(targets, dtype=torch.float32)
    origins = torch.as_tensor(origin, dtype=torch.float32).expand_as(targets)
    return origins, nn.functional.normalize(targets - origins, dim=-1)


def test_homogeneous_slab_opacity_colour_and_depth_match_closed_form():
    sigma, a, b, near, far, num = 2.0, 1.0, 2.5, 0.5, 4.0, 2048
    colour, background = torch.tensor([0.9, 0.3, 0.1]), torch.tensor([0.2, 0.4, 0.6])
    field = constant_field(
        lambda p: sigma * ((p[..., 2:] >= a) & (p[..., 2:] <= b)).float(), lambda p: colour.expand(*p.shape[:-1], 3)
    )
    origins = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.0], [3.0, 0.5, 0.0]])
    directions = torch.tensor([0.0, 0.0, 1.0]).expand_as(origins)
    out = render_rays(field, origins, directions, near, far, num_coarse=num, background=background)["coarse"]

    length = b - a
    opacity = 1 - math.exp(-sigma * length)
    # weight density sigma exp(-sigma (t - a)) on [a, b]: its mean, given termination, integrated by parts
    depth = a + 1 / sigma - length * math.exp(-sigma * length) / opacity

    def close(actual, expected):
        torch.testing.assert_close(actual, expected, atol=1e-3, rtol=0)

    close(out["opacity"], torch.full((3, 1), opacity))
    close(out["rgb"], (colour * opacity + (1 - opacity) * background).expand(3, 3))
    close(out["depth"], torch.full((3, 1), depth))
    # the transmittance before the slab is 1 and behind it is what the slab lets through
    t = stratified_samples(origins, near, far, num).t
    assert out["transmittance"][t < a].eq(1).all()
    behind = out["transmittance"][t > b + 0.01]
    close(behind, torch.full_like(behind, 1 - opacity))


def test_homogeneous_sphere_transmittance_follows_the_chord_length():
    sigma, centre, radius = 1.5, (0.0, 0.0, 3.0), 1.0
    field = constant_field(lambda p: sigma * in_sphere(p, centre, radius), lambda p: torch.ones(*p.shape[:-1], 3))
    # rays from the origin at various distances from the centre; the last one misses the sphere
    targets = [[0.0, 0.0, 3.0], [0.3, 0.0, 3.0], [0.0, 0.7, 3.0], [0.6, 0.6, 3.0], [2.0, 0.0, 3.0]]
    origins, directions = rays_towards(targets)
    out = render_rays(field, origins, directions, 0.5, 5.0, num_coarse=2048)["coarse"]
    _, chord = ray_sphere(origins, directions, centre, radius)
    torch.testing.assert_close(out["opacity"], 1 - torch.exp(-sigma * chord), atol=1e-3, rtol=0)
    assert out["opacity"][-1].item() == 0 and chord[-1].item() == 0


def test_opaque_sphere_depth_is_its_surface_and_the_nearer_surface_wins():
    centre, radius, near, far, num = (0.0, 0.0, 3.0), 1.0, 0.5, 6.0, 128
    field = constant_field(lambda p: 1e4 * in_sphere(p, centre, radius), lambda p: torch.ones(*p.shape[:-1], 3))
    origins, directions = rays_towards([[0.0, 0.0, 3.0], [0.4, 0.0, 3.0], [0.0, -0.6, 2.5], [0.5, 0.5, 3.5]])
    entry, chord = ray_sphere(origins, directions, centre, radius)
    assert chord.gt(0).all()
    out = render_rays(field, origins, directions, near, far, num_coarse=num)["coarse"]
    torch.testing.assert_close(out["opacity"], torch.ones(4, 1))
    assert (out["depth"] - entry).abs().max() <= (far - near) / num

    red, green = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    small, big = ((0.0, 0.0, 2.0), 0.3), ((0.0, 0.0, 4.0), 1.5)
    two = constant_field(
        lambda p: 1e4 * (in_sphere(p, *small) + in_sphere(p, *big)),
        lambda p: torch.where(in_sphere(p, *small).bool(), red, green),
    )
    origins, directions = rays_towards([[0.0, 0.0, 1.0], [1.0, 0.0, 4.0]])  # through both; past the small one
    chord_small, chord_big = ray_sphere(origins, directions, *small)[1], ray_sphere(origins, directions, *big)[1]
    assert chord_small[1].item() == 0 < chord_big[1].item()
    rgb = render_rays(two, origins, directions, near, far, num_coarse=num, background=0.5)["coarse"]["rgb"]
    torch.testing.assert_close(rgb, torch.stack([red, green]))


def test_importance_samples_follow_the_weights_stay_sorted_in_range_and_survive_empty_rays():
    g = torch.Generator().manual_seed(0)
    edges = torch.linspace(1.0, 3.0, 65).expand(5, 65)[..., None]
    peaked = torch.zeros(5, 64, 1)
    peaked[:, 40] = 0.9
    fine = importance_samples(edges, peaked, 64, perturb=True, generator=g)
    assert ((fine >= edges[:, 40:41]) & (fine <= edges[:, 41:42])).float().mean() > 0.9

    # a two-bin pdf with masses 1/4, 3/4: the quantiles split 1:3
    two = importance_samples(torch.tensor([[[0.0], [1.0], [2.0]]]), torch.tensor([[[1.0], [3.0]]]), 400)
    assert (two < 1).sum().item() == 100

    weights = torch.rand(5, 64, 1, generator=g) ** 8
    for w in (weights, torch.zeros(5, 64, 1)):
        t = importance_samples(edges, w, 32, perturb=True, generator=g)
        assert t.shape == (5, 32, 1) and t.isfinite().all()
        assert t.diff(dim=-2).ge(0).all() and t.ge(1.0).all() and t.le(3.0).all()
    # empty rays: evenly spread over the bins
    spread = importance_samples(edges, torch.zeros(5, 64, 1), 4)
    torch.testing.assert_close(spread, torch.tensor([1.25, 1.75, 2.25, 2.75]).expand(5, 4)[..., None])

    # a real coarse pass: the fine samples gather at the surface of an opaque sphere
    field = constant_field(lambda p: 1e4 * in_sphere(p, (0.0, 0.0, 3.0), 1.0), lambda p: torch.ones(*p.shape[:-1], 3))
    origins, directions = rays_towards([[0.0, 0.0, 3.0], [0.5, 0.2, 3.0]])
    coarse = stratified_samples(origins, 0.5, 6.0, 64, perturb=True, generator=g)
    density = field(origins[:, None] + coarse.t * directions[:, None], None)["density"]
    out = composite(density, {}, coarse.deltas, coarse.t)
    fine = importance_samples(coarse.edges, out["weights"], 64, perturb=True, generator=g)
    entry, _ = ray_sphere(origins, directions, (0.0, 0.0, 3.0), 1.0)
    # the weight sits on the bin of the first sample inside: it starts at most one bin before the
    # surface and ends at most two bins after it
    width = 5.5 / 64
    offset = fine - entry[:, None]
    assert ((offset >= -width) & (offset <= 2 * width)).float().mean() > 0.9


def test_merged_samples_are_sorted_and_their_bins_tile_near_to_far():
    g = torch.Generator().manual_seed(1)
    coarse = stratified_samples(torch.zeros(3, 3), 0.5, 4.0, 16, perturb=True, generator=g)
    fine = importance_samples(coarse.edges, torch.rand(3, 16, 1, generator=g), 8, perturb=True, generator=g)
    merged = merge_samples(coarse, fine)
    assert merged.t.shape == (3, 24, 1) and merged.edges.shape == (3, 25, 1)
    assert merged.t.diff(dim=-2).ge(0).all()
    assert (merged.t >= merged.edges[:, :-1]).all() and (merged.t <= merged.edges[:, 1:]).all()
    torch.testing.assert_close(merged.deltas.sum(-2), torch.full((3, 1), 3.5))


def test_composite_gradcheck_in_density_and_values():
    g = torch.Generator().manual_seed(2)
    density = (torch.rand(3, 6, 1, generator=g, dtype=torch.float64) * 3).requires_grad_()
    rgb = torch.rand(3, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    features = torch.randn(3, 6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    samples = stratified_samples(torch.zeros(3, 3, dtype=torch.float64), 1.0, 2.0, 6, perturb=True, generator=g)

    def f(density, rgb, features):
        out = composite(density, {"rgb": rgb, "features": features}, samples.deltas, samples.t, background=0.3)
        return out["rgb"], out["features"], out["depth"], out["opacity"], out["weights"]

    assert torch.autograd.gradcheck(f, (density, rgb, features))


@pytest.mark.parametrize("spacing", ["linear", "disparity"])
def test_stratified_spacing_midpoints_and_perturbation(spacing):
    near, far = torch.tensor([[0.5], [1.0]]), torch.tensor([[10.0], [4.0]])
    samples = stratified_samples(torch.zeros(2, 3), near, far, 8, spacing=spacing)
    coordinate = (lambda t: t) if spacing == "linear" else (lambda t: 1 / t)
    e, t = coordinate(samples.edges), coordinate(samples.t)
    torch.testing.assert_close(e.diff(dim=-2), e.diff(dim=-2)[:, :1].expand(2, 8, 1))  # evenly spaced
    torch.testing.assert_close(t, (e[:, 1:] + e[:, :-1]) / 2)  # midpoints in that coordinate
    torch.testing.assert_close(samples.edges[:, 0], near)
    torch.testing.assert_close(samples.edges[:, -1], far)

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return stratified_samples(torch.zeros(2, 3), near, far, 8, spacing=spacing, perturb=True, generator=g)

    a, b = draw(0), draw(1)
    torch.testing.assert_close(a.t, draw(0).t)
    assert not torch.equal(a.t, b.t)
    assert (a.t >= a.edges[:, :-1]).all() and (a.t <= a.edges[:, 1:]).all()


def test_stratified_samples_reject_unknown_spacing_and_disparity_from_zero():
    with pytest.raises(ValueError, match="spacing"):
        stratified_samples(torch.zeros(2, 3), 0.5, 4.0, 8, spacing="log")
    with pytest.raises(ValueError, match="near > 0"):
        stratified_samples(torch.zeros(2, 3), 0.0, 4.0, 8, spacing="disparity")


class TinyField(nn.Module):
    """A smooth learnable field with a feature channel; checks that it keeps the rays' batch shape."""

    def __init__(self, seed: int, batch_dims: int = 1):
        super().__init__()
        self.net, self.batch_dims = nn.Linear(6, 1 + 3 + 2), batch_dims
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, points, directions):
        assert points.dim() == self.batch_dims + 2
        h = self.net(torch.cat([points, directions], -1))
        return {"density": nn.functional.softplus(h[..., :1]), "rgb": h[..., 1:4].sigmoid(), "features": h[..., 4:]}


def test_chunked_rendering_equals_unchunked_for_flat_and_batched_rays():
    field, fine_field = TinyField(0), TinyField(1)
    g = torch.Generator().manual_seed(3)
    origins = torch.randn(10, 3, generator=g)
    directions = nn.functional.normalize(torch.randn(10, 3, generator=g), dim=-1)
    near, far = torch.rand(10, 1, generator=g) + 0.2, torch.rand(10, 1, generator=g) + 3
    background = torch.tensor([0.1, 0.2, 0.3])
    kwargs = dict(num_coarse=12, num_fine=8, fine_field=fine_field, spacing="disparity", background=background)
    with torch.no_grad():
        whole = render_rays(field, origins, directions, near, far, **kwargs)
        chunked = render_rays(field, origins, directions, near, far, chunk=3, **kwargs)
        # (B, R) rays: chunks split R only, so the field still sees the batch dimension
        batched = dict(kwargs, fine_field=TinyField(1, batch_dims=2))
        rays = (origins.view(2, 5, 3), directions.view(2, 5, 3), 0.5, 4.0)
        whole_b = render_rays(TinyField(0, 2), *rays, **batched)
        chunked_b = render_rays(TinyField(0, 2), *rays, chunk=2, **batched)
    for a, b in ((whole, chunked), (whole_b, chunked_b)):
        assert a.keys() == b.keys() == {"coarse", "fine"}
        for level in a:
            assert a[level].keys() == b[level].keys()
            for name in a[level]:
                torch.testing.assert_close(a[level][name], b[level][name])
    assert whole["fine"]["features"].shape == (10, 2) and whole["fine"]["weights"].shape == (10, 20, 1)
    assert whole_b["fine"]["rgb"].shape == (2, 5, 3) and whole_b["coarse"]["edges"].shape == (2, 5, 13, 1)


def test_checkpointed_rendering_recomputes_the_field_and_gives_the_same_gradients():
    class CountingField(TinyField):
        calls = 0

        def forward(self, points, directions):
            self.calls += 1
            return super().forward(points, directions)

    g = torch.Generator().manual_seed(6)
    origins = torch.randn(10, 3, generator=g)
    directions = nn.functional.normalize(torch.randn(10, 3, generator=g), dim=-1)
    kwargs = dict(num_coarse=12, num_fine=8, spacing="disparity", background=0.2)
    results = {}
    for name, options in {"plain": {}, "checkpointed": dict(chunk=4, checkpoint=True)}.items():
        field, fine_field = CountingField(0), CountingField(1)
        out = render_rays(field, origins, directions, 0.5, 4.0, fine_field=fine_field, **kwargs, **options)
        calls_forward = field.calls + fine_field.calls
        (out["fine"]["rgb"].sum() + out["coarse"]["depth"].sum() + out["fine"]["features"].square().sum()).backward()
        grads = [p.grad for p in (*field.parameters(), *fine_field.parameters())]
        results[name] = (out, grads, calls_forward, field.calls + fine_field.calls)
    (plain, plain_grads, plain_fwd, plain_all), (ckpt, ckpt_grads, ckpt_fwd, ckpt_all) = results.values()
    for level in plain:
        for key in plain[level]:
            torch.testing.assert_close(ckpt[level][key], plain[level][key])
    for a, b in zip(plain_grads, ckpt_grads):
        torch.testing.assert_close(a, b)
    assert (plain_fwd, plain_all) == (2, 2)  # one coarse and one fine query, nothing recomputed
    assert (ckpt_fwd, ckpt_all) == (6, 12)  # 3 chunks x 2 passes, then recomputed in the backward pass
    with pytest.raises(ValueError, match="global RNG"):
        render_rays(field, origins, directions, 0.5, 4.0, num_coarse=4, perturb=True, generator=g, checkpoint=True)


def test_coarse_and_fine_fields_each_learn_from_their_own_rendering_only():
    field, fine_field = TinyField(0), TinyField(1)
    origins, directions = rays_towards([[0.0, 0.0, 1.0], [0.3, 0.1, 1.0], [-0.2, 0.4, 1.0]])
    out = render_rays(
        field, origins, directions, 0.5, 4.0, num_coarse=16, num_fine=16, fine_field=fine_field,
        perturb=True, generator=torch.Generator().manual_seed(4),
    )
    assert not out["fine"]["edges"].requires_grad  # importance samples carry no gradient
    out["fine"]["rgb"].sum().backward()
    assert all(p.grad is None for p in field.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fine_field.parameters())
    out["coarse"]["rgb"].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in field.parameters())

    weights = torch.rand(2, 8, 1, requires_grad=True)
    assert not importance_samples(torch.linspace(0, 1, 9).expand(2, 9)[..., None], weights, 4).requires_grad


def test_distortion_loss_matches_the_quadratic_double_sum():
    g = torch.Generator().manual_seed(5)
    weights = torch.rand(4, 16, 1, generator=g, dtype=torch.float64)
    edges = torch.rand(4, 17, 1, generator=g, dtype=torch.float64).cumsum(-2)
    w, e = weights[..., 0], edges[..., 0]
    m = (e[:, 1:] + e[:, :-1]) / 2
    inter = (w[:, :, None] * w[:, None, :] * (m[:, :, None] - m[:, None, :]).abs()).sum((1, 2))
    naive = inter + (w**2 * e.diff(dim=-1)).sum(-1) / 3
    torch.testing.assert_close(distortion_loss(weights, edges), naive)
    # one bin: only the intra-interval term w^2 delta / 3 is left
    single = distortion_loss(torch.tensor([[[0.7]]]), torch.tensor([[[1.0], [1.6]]]))
    torch.testing.assert_close(single, torch.tensor([0.7**2 * 0.6 / 3]))


def test_ray_samples_deltas_are_bin_lengths():
    samples = RaySamples(t=torch.tensor([[[0.5], [2.0]]]), edges=torch.tensor([[[0.0], [1.0], [3.0]]]))
    torch.testing.assert_close(samples.deltas, torch.tensor([[[1.0], [2.0]]]))
