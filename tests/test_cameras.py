"""Cameras and rays: the pixel-centre convention, projection <-> rays, the other conventions
(checked by projecting in each one's own documented formulas), pose paths and validation."""

from __future__ import annotations

import math

import pytest
import torch

from dfm import cameras as cam


def random_c2w(n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """Random rigid poses (rotation from a QR decomposition, made proper) with centres in a unit-ish box."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q[torch.linalg.det(q) < 0, :, 0] *= -1
    c2w = torch.eye(4, dtype=dtype).repeat(n, 1, 1)
    c2w[:, :3, :3], c2w[:, :3, 3] = q, torch.randn(n, 3, generator=generator, dtype=dtype)
    return c2w


def random_K(n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    f = 0.8 + torch.rand(n, 2, generator=generator, dtype=dtype)
    c = 0.4 + 0.2 * torch.rand(n, 2, generator=generator, dtype=dtype)
    return cam.normalized_intrinsics(f[:, 0], f[:, 1], c[:, 0], c[:, 1], 1, 1)


def points_in_front(c2w: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """World points in front of each camera (camera-space z in [1, 3], |x|, |y| < z / 2)."""
    z = 1 + 2 * torch.rand(c2w.shape[0], n, 1, generator=generator, dtype=c2w.dtype)
    xy = (torch.rand(c2w.shape[0], n, 2, generator=generator, dtype=c2w.dtype) - 0.5) * z
    p_cam = torch.cat([xy, z], -1)
    return torch.einsum("bij,bnj->bni", c2w[:, :3, :3], p_cam) + c2w[:, None, :3, 3]


def test_pixel_grid_is_pixel_centres_x_then_y_row_major():
    torch.testing.assert_close(cam.pixel_grid(2, 2), torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]))
    grid = cam.pixel_grid(3, 4)
    assert grid.shape == (12, 2)
    torch.testing.assert_close(grid[4 * 2 + 1], torch.tensor([1.5 / 4, 2.5 / 3]))  # row 2, column 1


def test_intrinsics_round_trip_and_fov():
    K = cam.normalized_intrinsics(50.0, 40.0, 32.0, 24.0, width=64, height=48)
    torch.testing.assert_close(K, torch.tensor([[50 / 64, 0, 0.5], [0, 40 / 48, 0.5], [0, 0, 1]]))
    torch.testing.assert_close(cam.pixel_intrinsics(K, 64, 48), torch.tensor([[50.0, 0, 32], [0, 40, 24], [0, 0, 1]]))
    # the ray through the middle of the top edge is fov/2 off the axis; square pixels at aspect 2
    K = cam.intrinsics_from_fov(60.0, aspect=2.0).double()
    _, d = cam.rays(torch.eye(4, dtype=torch.float64), K, torch.tensor([[0.5, 0.0]], dtype=torch.float64))
    assert math.degrees(math.acos(d[0, 2])) == pytest.approx(30.0)
    pixels = cam.pixel_intrinsics(K, 200, 100)
    assert pixels[0, 0] == pytest.approx(pixels[1, 1])


def test_ray_through_principal_point_is_the_optical_axis():
    g = torch.Generator().manual_seed(0)
    c2w, K = random_c2w(4, g), random_K(4, g)
    principal = K[:, None, :2, 2]
    origins, d = cam.rays(c2w, K, principal)
    torch.testing.assert_close(d[:, 0], c2w[:, :3, 2])
    torch.testing.assert_close(origins[:, 0], c2w[:, :3, 3])
    # for a centred principal point that is uv = (0.5, 0.5), the centre of an odd-sized image
    K = cam.intrinsics_from_fov(50.0).double().expand(4, 3, 3)
    _, d = cam.image_rays(c2w, K, 3, 5)
    torch.testing.assert_close(d[:, 7], c2w[:, :3, 2])
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(4, 15, dtype=torch.float64))


def test_project_then_rays_round_trip_and_z_depth():
    g = torch.Generator().manual_seed(1)
    c2w, K = random_c2w(3, g), random_K(3, g)
    points = points_in_front(c2w, 10, g)
    uv, depth = cam.project(points, c2w, K)
    origins, directions = cam.rays(c2w, K, uv)
    distance = (points - origins).norm(dim=-1)
    torch.testing.assert_close(origins + distance[..., None] * directions, points)
    torch.testing.assert_close(cam.z_depth(distance, directions, c2w), depth)
    torch.testing.assert_close(cam.world_to_camera(points, c2w)[..., 2], depth)


def test_look_at_centre_ray_hits_the_target_and_world_up_is_image_up():
    eye = torch.tensor([[3.0, 1.0, 2.0], [-1.0, -4.0, 0.5]], dtype=torch.float64)
    target = torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64)
    c2w = cam.look_at(eye, target)
    K = cam.intrinsics_from_fov(40.0).double().expand(2, 3, 3)
    origins, d = cam.rays(c2w, K, torch.full((2, 1, 2), 0.5, dtype=torch.float64))
    to_target = target - eye
    torch.testing.assert_close(d[:, 0], to_target / to_target.norm(dim=-1, keepdim=True))
    assert (c2w[:, 2, 1] < 0).all()  # camera y (image down) has a negative world z component
    assert c2w[:, 2, 0].abs().max() < 1e-12  # no roll: camera x is horizontal
    cam.validate_cameras(c2w, K, "look_at")
    uv, _ = cam.project(target.expand(2, 1, 3), c2w, K)
    torch.testing.assert_close(uv, torch.full((2, 1, 2), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="parallel"):
        cam.look_at(torch.tensor([0.0, 0.0, 2.0]))


def test_image_patch_and_random_rays():
    g = torch.Generator().manual_seed(2)
    c2w, K = random_c2w(2, g), random_K(2, g)
    h, w = 6, 8
    origins, d = cam.image_rays(c2w, K, h, w)
    assert origins.shape == d.shape == (2, h * w, 3)
    image_d = d.reshape(2, h, w, 3)

    _, pd = cam.patch_rays(c2w, K, h, w, top=1, left=3, size=4)
    assert pd.shape == (2, 16, 3)
    torch.testing.assert_close(pd.reshape(2, 4, 4, 3), image_d[:, 1:5, 3:7])
    _, pd = cam.patch_rays(c2w, K, h, w, top=torch.tensor([0, 2]), left=torch.tensor([4, 0]), size=4)
    torch.testing.assert_close(pd.reshape(2, 4, 4, 3)[0], image_d[0, 0:4, 4:8])
    torch.testing.assert_close(pd.reshape(2, 4, 4, 3)[1], image_d[1, 2:6, 0:4])
    with pytest.raises(ValueError, match="leaves"):
        cam.patch_rays(c2w, K, h, w, top=3, left=0, size=4)

    ro, rd, index = cam.random_pixel_rays(c2w, K, h, w, 10, torch.Generator().manual_seed(0))
    assert ro.shape == rd.shape == (2, 10, 3) and index.shape == (2, 10)
    assert all(len(set(row.tolist())) == 10 for row in index)  # distinct pixels per camera
    torch.testing.assert_close(rd, d.gather(1, index[..., None].expand(2, 10, 3)))
    _, _, again = cam.random_pixel_rays(c2w, K, h, w, 10, torch.Generator().manual_seed(0))
    assert torch.equal(index, again)
    with pytest.raises(ValueError, match="n must be"):
        cam.random_pixel_rays(c2w, K, h, w, h * w + 1)


def test_opengl_round_trip_and_projection():
    g = torch.Generator().manual_seed(3)
    c2w, K = random_c2w(3, g), random_K(3, g)
    gl = cam.opencv_to_opengl(c2w)
    torch.testing.assert_close(cam.opengl_to_opencv(gl), c2w)
    # project in OpenGL's own terms: the camera looks along -z with y up
    points = points_in_front(c2w, 5, g)
    p = torch.einsum("bji,bnj->bni", gl[:, :3, :3], points - gl[:, None, :3, 3])
    u = K[:, None, 0, 0] * p[..., 0] / -p[..., 2] + K[:, None, 0, 2]
    v = -K[:, None, 1, 1] * p[..., 1] / -p[..., 2] + K[:, None, 1, 2]
    uv, depth = cam.project(points, c2w, K)
    torch.testing.assert_close(uv, torch.stack([u, v], -1))
    torch.testing.assert_close(depth, -p[..., 2])


@pytest.mark.parametrize("width,height", [(8, 8), (12, 8), (6, 10)])
def test_pytorch3d_round_trip_and_projection(width, height):
    """PyTorch3D (docs "Cameras"): X_view = X_world @ R + T with view x left, y up, z forward; NDC
    x_ndc = fx * X / Z + px (likewise y), +x left, +y up, the shorter side spanning [-1, 1] between the
    outer pixel edges; screen (0, 0) is the top-left corner of the top-left pixel."""
    g = torch.Generator().manual_seed(4)
    c2w, K = random_c2w(3, g), random_K(3, g)
    R, T = cam.opencv_to_pytorch3d(c2w)
    torch.testing.assert_close(cam.pytorch3d_to_opencv(R, T), c2w)
    focal, principal = cam.intrinsics_to_pytorch3d_ndc(K, width, height)
    torch.testing.assert_close(cam.intrinsics_from_pytorch3d_ndc(focal, principal, width, height), K)

    points = points_in_front(c2w, 5, g)
    view = points @ R + T[:, None, :]
    ndc = focal[:, None, :] * view[..., :2] / view[..., 2:] + principal[:, None, :]
    s = min(width, height)
    screen = torch.stack([width / 2 - ndc[..., 0] * s / 2, height / 2 - ndc[..., 1] * s / 2], -1)
    uv, depth = cam.project(points, c2w, K)
    torch.testing.assert_close(uv * torch.tensor([width, height], dtype=uv.dtype), screen)
    torch.testing.assert_close(depth, view[..., 2])


def test_orbit_cameras_look_at_the_target_from_the_right_place():
    target = (0.5, -0.2, 0.1)
    c2w = cam.orbit(6, radius=2.5, elevation_deg=30.0, target=target, start_azimuth_deg=15.0, dtype=torch.float64)
    assert c2w.shape == (6, 4, 4)
    cam.validate_cameras(c2w, cam.intrinsics_from_fov(45.0).expand(6, 3, 3), "orbit")
    offset = c2w[:, :3, 3] - torch.tensor(target, dtype=torch.float64)
    torch.testing.assert_close(offset.norm(dim=-1), torch.full((6,), 2.5, dtype=torch.float64))
    torch.testing.assert_close(torch.rad2deg(torch.asin(offset[:, 2] / 2.5)), torch.full((6,), 30.0, dtype=torch.float64))
    azimuth = torch.rad2deg(torch.atan2(offset[:, 1], offset[:, 0]))
    expected = (15.0 + 60.0 * torch.arange(6, dtype=torch.float64) + 180) % 360 - 180
    torch.testing.assert_close(azimuth, expected)
    torch.testing.assert_close(c2w[:, :3, 2], -offset / 2.5)  # the optical axis points at the target


def test_quaternions_round_trip_including_half_turns():
    g = torch.Generator().manual_seed(5)
    R = torch.cat([random_c2w(20, g)[:, :3, :3], torch.diag_embed(torch.tensor(
        [[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64))])
    q = cam.quaternion_from_matrix(R)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(24, dtype=torch.float64))
    torch.testing.assert_close(cam.matrix_from_quaternion(q), R)


def test_interpolate_poses_endpoints_and_midpoint():
    g = torch.Generator().manual_seed(6)
    a, b = random_c2w(2, g)
    s = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    path = cam.interpolate_poses(a, b, s)
    assert path.shape == (3, 4, 4)
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[2], b)
    mid = path[1]
    cam.validate_cameras(mid, cam.intrinsics_from_fov(45.0), "midpoint", tolerance=1e-9)
    torch.testing.assert_close(mid[:3, 3], (a[:3, 3] + b[:3, 3]) / 2)

    def angle(r1, r2):
        return torch.acos(((torch.trace(r1.T @ r2) - 1) / 2).clamp(-1, 1))

    total = angle(a[:3, :3], b[:3, :3])
    torch.testing.assert_close(angle(a[:3, :3], mid[:3, :3]), total / 2)
    torch.testing.assert_close(angle(mid[:3, :3], b[:3, :3]), total / 2)
    # batched poses, a scalar fraction, and two (nearly) equal rotations
    same = cam.interpolate_poses(torch.stack([a, a]), torch.stack([a, b]), 0.25)
    torch.testing.assert_close(same[0], a)


def test_validate_cameras_names_the_source_and_the_problem():
    c2w = cam.orbit(3, 3.0, 20.0)
    K = cam.intrinsics_from_fov(45.0).expand(3, 3, 3).clone()
    cam.validate_cameras(c2w, K, "ok.json")

    def broken(change):
        c, k = c2w.clone(), K.clone()
        change(c, k)
        return c, k

    cases = [
        (lambda c, k: c[1, 0, 3].fill_(float("nan")), "camera 1: c2w has NaN"),
        (lambda c, k: k[2, 0, 2].fill_(float("inf")), "camera 2: K has NaN or inf"),
        (lambda c, k: c[2, :3, :3].mul_(1.1), "camera 2: the rotation is not rigid"),
        (lambda c, k: c[0, :3, 0].neg_(), "camera 0: the rotation is not rigid"),  # a reflection: det = -1
        (lambda c, k: c[1, 3, 0].fill_(0.5), "camera 1: the bottom row"),
        (lambda c, k: k[0, 1, 1].fill_(-1.0), "camera 0: focal lengths must be positive"),
        (lambda c, k: k[1, 0, 1].fill_(0.1), "camera 1: K must be"),
    ]
    for change, message in cases:
        with pytest.raises(cam.CameraError, match=f"^bad.json: {message}"):
            cam.validate_cameras(*broken(change), "bad.json")
    with pytest.raises(cam.CameraError, match="same batch shape"):
        cam.validate_cameras(c2w, K[:2], "bad.json")


def test_gradients_flow_through_rays_and_projection():
    g = torch.Generator().manual_seed(7)
    c2w, K = random_c2w(1, g), random_K(1, g)
    uv = torch.rand(1, 3, 2, generator=g, dtype=torch.float64)
    points = points_in_front(c2w, 3, g)
    for x in (c2w, K, uv, points):
        x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c, k, u: cam.rays(c, k, u), (c2w, K, uv))
    assert torch.autograd.gradcheck(lambda p, c, k: cam.project(p, c, k), (points, c2w, K))


def test_depth_points_invert_projection():
    c2w, K = cam.orbit(2, 3.0, 30.0), cam.intrinsics_from_fov(50.0).expand(2, 3, 3)
    depth = torch.rand(2, 5, 7, generator=torch.Generator().manual_seed(0)) + 1
    points = cam.depth_points(depth, c2w, K)  # (2, 35, 3)
    uv, z = cam.project(points, c2w, K)
    torch.testing.assert_close(z, depth.flatten(1))
    torch.testing.assert_close(uv, cam.pixel_grid(5, 7).expand(2, 35, 2))
