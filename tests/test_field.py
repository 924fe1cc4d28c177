"""Pixel-aligned feature sampling, the time-conditioned field, the small CNN encoder, and rendering them."""

import math

import pytest
import torch

from dfm.cameras import image_rays, intrinsics_from_fov, look_at, orbit, pixel_grid, rays, world_to_camera
from dfm.networks.cnn import ConvEncoder
from dfm.networks.field import PixelAlignedField, positional_encoding, sample_pixel_features
from dfm.rendering import render_rays


def views(batch: int, num_views: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``c2w`` ``(B, V, 4, 4)`` on an orbit of radius 3 around the origin and ``K`` ``(B, V, 3, 3)`` (60° fov)."""
    c2w = orbit(batch * num_views, radius=3.0, elevation_deg=20.0, dtype=dtype).unflatten(0, (batch, num_views))
    return c2w, intrinsics_from_fov(60.0).to(dtype).expand(batch, num_views, 3, 3)


def randomise_zero_layers(model: torch.nn.Module) -> None:
    """Give the zero-initialised (FiLM) layers weights, so that the conditioning has an effect."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def field_inputs(batch=2, num_views=2, rays_=7, samples=5, channels=8, size=8, seed=0):
    """Points within 0.3 of the origin (seen by every orbit view), directions, feature maps, cameras, t."""
    g = torch.Generator().manual_seed(seed)
    points = 0.6 * torch.rand(batch, rays_, samples, 3, generator=g) - 0.3
    directions = torch.nn.functional.normalize(torch.randn(batch, rays_, samples, 3, generator=g), dim=-1)
    feature_maps = torch.randn(batch, num_views, channels, size, size, generator=g)
    c2w, K = views(batch, num_views)
    return points, directions, feature_maps, c2w, K, torch.tensor([10.0, 700.0])[:batch]


def test_positional_encoding_values():
    x = torch.tensor([[0.25, -0.5]])
    a, b = math.pi * x, 2 * math.pi * x
    expected = torch.cat([x, a.sin(), a.cos(), b.sin(), b.cos()], -1)
    assert torch.allclose(positional_encoding(x, 2), expected)
    assert torch.allclose(positional_encoding(x, 2, include_input=False), expected[:, 2:])
    assert positional_encoding(torch.zeros(4, 5, 3), 6).shape == (4, 5, 39)


def test_a_pixel_centre_reads_exactly_that_pixels_feature():
    B, V, C, H, W = 2, 2, 4, 5, 7
    c2w, K = views(B, V, torch.float64)
    feature_maps = torch.randn(B, V, C, H, W, dtype=torch.float64)
    origins, directions = rays(c2w, K, pixel_grid(H, W, dtype=torch.float64).expand(B, V, H * W, 2))
    distance = 1.0 + 3.0 * torch.rand(B, V, H * W, 1, dtype=torch.float64)
    points = origins + distance * directions  # pixel (i, j)'s centre, row-major, at random depths
    features, points_cam, valid = sample_pixel_features(feature_maps, points, c2w, K)
    assert torch.allclose(features, feature_maps.flatten(-2).transpose(-1, -2), atol=1e-10)
    assert torch.allclose(points_cam, world_to_camera(points, c2w))
    assert valid.all() and valid.shape == (B, V, H * W, 1)


def test_points_behind_outside_or_on_the_camera_plane_are_invalid_with_zero_features():
    c2w = look_at(torch.tensor([0.0, -3.0, 0.0]))[None, None]  # looks along +y
    K = intrinsics_from_fov(60.0)[None, None]
    feature_maps = torch.randn(1, 1, 3, 4, 4) + 5  # no feature is zero
    points = torch.tensor([
        [0.0, 0.0, 0.0],  # in front, at the image centre
        [0.0, -6.0, 0.0],  # behind (it would project to the image centre too)
        [5.0, 0.0, 0.0],  # in front, far outside the image
        [0.0, -3.0, 0.0],  # the camera centre: depth 0
        [1.0, -3.0, 0.5],  # on the camera plane
    ])[None, None].requires_grad_()
    features, _, valid = sample_pixel_features(feature_maps, points, c2w, K)
    assert valid[0, 0, :, 0].tolist() == [True, False, False, False, False]
    assert (features[0, 0, 0] != 0).all() and (features[0, 0, 1:] == 0).all()
    features.sum().backward()
    assert points.grad.isfinite().all()


def test_gradcheck_through_sampling_wrt_feature_maps_and_points():
    c2w, K = views(1, 2, torch.float64)
    feature_maps = torch.randn(1, 2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    points = (0.6 * torch.rand(1, 2, 3, 3, dtype=torch.float64) - 0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda f, p: sample_pixel_features(f, p, c2w, K)[0], (feature_maps, points))


def test_field_shapes_and_output_ranges():
    points, directions, feature_maps, c2w, K, t = field_inputs()
    field = PixelAlignedField(8, width=32, out_features=3, direction_frequencies=2)
    randomise_zero_layers(field)
    out = field(10 * points, directions, feature_maps, c2w, K, t)  # many points outside the views, too
    assert out["density"].shape == (2, 7, 5, 1) and out["rgb"].shape == (2, 7, 5, 3)
    assert out["features"].shape == (2, 7, 5, 3)
    assert (out["density"] >= 0).all() and (out["rgb"].abs() <= 1).all()
    assert "features" not in PixelAlignedField(8, width=32)(points, directions, feature_maps, c2w, K, t)


def test_the_mean_over_views_is_permutation_invariant_and_ignores_views_that_see_nothing():
    points, directions, feature_maps, c2w, K, t = field_inputs(num_views=3)
    field = PixelAlignedField(8, width=32, direction_frequencies=0)
    randomise_zero_layers(field)
    base = field(points, directions, feature_maps, c2w, K, t)
    order = torch.tensor([2, 0, 1])
    permuted = field(points, directions, feature_maps[:, order], c2w[:, order], K[:, order], t)
    for name in base:
        assert torch.allclose(base[name], permuted[name], atol=1e-6)

    away = look_at(torch.tensor([5.0, 0.0, 0.0]), (10.0, 0.0, 0.0)).expand(2, 1, 4, 4)  # sees none of the points
    more = (torch.cat([feature_maps, torch.randn(2, 1, 8, 8, 8)], 1), torch.cat([c2w, away], 1), torch.cat([K, K[:, :1]], 1))
    extended = field(points, directions, *more, t)
    assert torch.allclose(base["rgb"], extended["rgb"], atol=1e-6)
    field.masked_mean = False  # a plain mean is diluted by the blind view
    unmasked = field(points, directions, feature_maps, c2w, K, t)["rgb"]
    assert not torch.allclose(unmasked, field(points, directions, *more, t)["rgb"])


def test_gradients_reach_the_feature_maps_and_every_parameter():
    points, directions, feature_maps, c2w, K, t = field_inputs()
    feature_maps.requires_grad_()
    field = PixelAlignedField(8, width=32, out_features=2, global_dim=4)
    out = field(points, directions, feature_maps, c2w, K, t, torch.randn(2, 4))
    sum(value.sum() for value in out.values()).backward()
    assert feature_maps.grad.abs().sum() > 0
    for name, p in field.named_parameters():
        assert p.grad is not None and p.grad.isfinite().all(), name


def test_time_and_global_latent_change_the_output():
    points, directions, feature_maps, c2w, K, _ = field_inputs(batch=1)
    field = PixelAlignedField(8, width=32, global_dim=4)
    randomise_zero_layers(field)
    latent = torch.randn(1, 4)
    base = field(points, directions, feature_maps, c2w, K, torch.tensor([10.0]), latent)["rgb"]
    assert not torch.allclose(base, field(points, directions, feature_maps, c2w, K, torch.tensor([900.0]), latent)["rgb"])
    assert not torch.allclose(base, field(points, directions, feature_maps, c2w, K, torch.tensor([10.0]), latent + 1)["rgb"])
    with pytest.raises(ValueError, match="latent"):
        field(points, directions, feature_maps, c2w, K, torch.tensor([10.0]))


def test_bound_field_renders_coarse_and_fine_in_chunks_and_trains_the_encoder():
    B, V, size = 2, 2, 8
    c2w, K = views(B, V + 1)
    context_c2w, context_K, target_c2w, target_K = c2w[:, :V], K[:, :V], c2w[:, V], K[:, V]
    images = torch.rand(B, V, 3, size, size) * 2 - 1
    encoder = ConvEncoder(3, 8, width=16, depth=2)
    field = PixelAlignedField(8, width=32, out_features=2)
    t = torch.tensor([5.0, 300.0])
    feature_maps = encoder(images.flatten(0, 1), torch.zeros(B * V)).unflatten(0, (B, V))
    bound = field.bind(feature_maps, context_c2w, context_K, t)
    origins, directions = image_rays(target_c2w, target_K, 4, 4)  # (B, 16, 3)
    settings = dict(near=1.5, far=4.5, num_coarse=6, num_fine=4, background=-1.0)
    chunked = render_rays(bound, origins, directions, **settings, chunk=5)
    whole = render_rays(bound, origins, directions, **settings)
    for level in ("coarse", "fine"):
        assert chunked[level]["rgb"].shape == (B, 16, 3) and chunked[level]["features"].shape == (B, 16, 2)
        assert (chunked[level]["rgb"].abs() <= 1).all()
        # chunks are matrix products of other shapes, whose kernels may sum in another order
        assert torch.allclose(chunked[level]["rgb"], whole[level]["rgb"], atol=1e-5)
    (chunked["coarse"]["rgb"].square().mean() + chunked["fine"]["rgb"].square().mean()).backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_conv_encoder_keeps_the_resolution_and_depends_on_time():
    encoder = ConvEncoder(5, 6, width=16, depth=3)
    for h, w in ((8, 8), (7, 9)):
        assert encoder(torch.randn(2, 5, h, w), torch.tensor([1.0, 2.0])).shape == (2, 6, h, w)
    x = torch.randn(1, 5, 8, 8)
    assert not torch.allclose(encoder(x, torch.tensor([10.0])), encoder(x, torch.tensor([900.0])))
    untimed = ConvEncoder(5, 6, width=16, time_conditioned=False)
    assert torch.equal(untimed(x, torch.tensor([10.0])), untimed(x, torch.tensor([900.0])))
    with pytest.raises(ValueError, match="conditioning"):
        ConvEncoder(5, 6, width=16, cond_dim=3)(x, torch.tensor([10.0]))

