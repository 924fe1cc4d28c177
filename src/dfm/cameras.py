"""Cameras and rays in one convention, with converters to the others at the edges.

Convention (OpenCV): the camera frame has x right, y down, z forward (the camera looks along +z).
A pose is a camera-to-world matrix ``c2w``: its rotation columns are the camera axes in world
coordinates and its last column the camera centre. Intrinsics ``K`` are normalised by the image
size: fx, cx in units of the width and fy, cy in units of the height, so one ``K`` serves every
resolution of the same view and ``cx = cy = 0.5`` is a centred principal point. A pixel at
``(u, v)`` pixels is at ``(u / W, v / H)`` normalised, and pixel ``(i, j)`` (row, column) is
sampled at its centre ``((j + 0.5) / W, (i + 0.5) / H)``. Skew is not supported.

Rays have **unit-length** world-space directions, so a distance ``t`` along a ray is Euclidean and
near/far bounds are distances from the camera centre; :func:`z_depth` turns an expected ray
distance (what a volume renderer composites) into z-depth (what :func:`project` and depth maps use).

The world is z-up where it matters (:func:`look_at`, :func:`orbit`); the camera convention does not
depend on it.

Dimension names (jaxtyping): ``*batch`` the cameras' batch shape; ``N`` points (or rays, or pixels)
per camera; ``H W`` an image's height and width; ``{height}``, ``{width}``, ``{size}``, ``{n}`` the
argument of that name. ``*#batch`` marks arguments that broadcast against the batch shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

_FLIP_YZ = (1.0, -1.0, -1.0, 1.0)  # OpenCV <-> OpenGL camera axes, as column scales of c2w
_FLIP_XY = (-1.0, -1.0, 1.0)  # OpenCV <-> PyTorch3D camera axes


class CameraError(Exception):
    """Cameras are malformed; the message names their source (a file, a dataset) and the camera."""


# --- intrinsics -------------------------------------------------------------------------------


def _intrinsics_matrix(
    fx: Float[Tensor, "*#batch"],
    fy: Float[Tensor, "*#batch"],
    cx: Float[Tensor, "*#batch"],
    cy: Float[Tensor, "*#batch"],
) -> Float[Tensor, "*batch 3 3"]:
    fx, fy, cx, cy = torch.broadcast_tensors(fx, fy, cx, cy)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack([fx, zero, cx, zero, fy, cy, zero, zero, one], -1).unflatten(-1, (3, 3))


def normalized_intrinsics(
    fx: float | Float[Tensor, "*#batch"],
    fy: float | Float[Tensor, "*#batch"],
    cx: float | Float[Tensor, "*#batch"],
    cy: float | Float[Tensor, "*#batch"],
    width: int,
    height: int,
) -> Float[Tensor, "*batch 3 3"]:
    """``K`` normalised by the image size, from focal lengths and principal point in pixels."""
    fx, fy, cx, cy = (torch.as_tensor(v) for v in (fx, fy, cx, cy))
    return _intrinsics_matrix(fx / width, fy / height, cx / width, cy / height)


def pixel_intrinsics(K: Float[Tensor, "*batch 3 3"], width: int, height: int) -> Float[Tensor, "*batch 3 3"]:
    """The inverse of :func:`normalized_intrinsics`: ``K`` in pixels for a ``width x height`` image."""
    return K * torch.tensor([width, height, 1.0], dtype=K.dtype, device=K.device)[:, None]


def intrinsics_from_fov(fov_y_degrees: float, aspect: float = 1.0) -> Float[Tensor, "3 3"]:
    """Normalised ``K`` with a centred principal point and square pixels, from the vertical
    field of view and the aspect ratio ``width / height``."""
    fy = 0.5 / math.tan(math.radians(fov_y_degrees) / 2)
    return _intrinsics_matrix(*(torch.tensor(v) for v in (fy / aspect, fy, 0.5, 0.5)))


def intrinsics_to_pytorch3d_ndc(
    K: Float[Tensor, "*batch 3 3"], width: int, height: int
) -> tuple[Float[Tensor, "*batch 2"], Float[Tensor, "*batch 2"]]:
    """``(focal_length, principal_point)`` of a PyTorch3D ``PerspectiveCameras`` in NDC
    (``in_ndc=True``, the format Co3D stores): NDC has +x left, +y up, and the shorter image side spans
    [-1, 1] between the outer pixel edges."""
    s = min(width, height)
    sizes = torch.tensor([width, height], dtype=K.dtype, device=K.device)
    focal = 2 * sizes / s * torch.stack([K[..., 0, 0], K[..., 1, 1]], -1)
    principal = sizes / s * (1 - 2 * torch.stack([K[..., 0, 2], K[..., 1, 2]], -1))
    return focal, principal


def intrinsics_from_pytorch3d_ndc(
    focal_length: Float[Tensor, "*batch 2"], principal_point: Float[Tensor, "*batch 2"], width: int, height: int
) -> Float[Tensor, "*batch 3 3"]:
    """The inverse of :func:`intrinsics_to_pytorch3d_ndc`: normalised ``K``."""
    s = min(width, height)
    sizes = torch.tensor([width, height], dtype=focal_length.dtype, device=focal_length.device)
    f = focal_length * s / (2 * sizes)
    c = (1 - principal_point * s / sizes) / 2
    return _intrinsics_matrix(f[..., 0], f[..., 1], c[..., 0], c[..., 1])


# --- rays and projection ----------------------------------------------------------------------


def pixel_grid(
    height: int, width: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Float[Tensor, "{height}*{width} 2"]:
    """Normalised ``(x, y)`` of every pixel centre, row-major (pixel ``(i, j)`` is row ``i * width + j``)."""
    y = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    x = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    return torch.stack(torch.meshgrid(x, y, indexing="xy"), -1).reshape(-1, 2)


def rays(
    c2w: Float[Tensor, "*batch 4 4"], K: Float[Tensor, "*batch 3 3"], uv: Float[Tensor, "*batch N 2"]
) -> tuple[Float[Tensor, "*batch N 3"], Float[Tensor, "*batch N 3"]]:
    """World-space rays ``(origins, directions)`` through normalised pixel coordinates ``uv``; the
    directions have unit length. The point at distance ``t`` along a ray has z-depth
    ``z_depth(t, directions, c2w)``."""
    fx, fy, cx, cy = (K[..., None, r, c] for r, c in ((0, 0), (1, 1), (0, 2), (1, 2)))
    x, y = (uv[..., 0] - cx) / fx, (uv[..., 1] - cy) / fy
    d = torch.stack([x, y, torch.ones_like(x)], -1)
    d = d / d.norm(dim=-1, keepdim=True)
    directions = torch.einsum("...ij,...nj->...ni", c2w[..., :3, :3], d)
    return c2w[..., None, :3, 3].expand_as(directions), directions


def z_depth(
    distance: Float[Tensor, "*batch N"], directions: Float[Tensor, "*batch N 3"], c2w: Float[Tensor, "*batch 4 4"]
) -> Float[Tensor, "*batch N"]:
    """Convert distances along unit rays ``directions`` of camera ``c2w`` to z-depth in that camera,
    e.g. a volume renderer's expected ray distance to a depth map."""
    return distance * torch.einsum("...ni,...i->...n", directions, c2w[..., :3, 2])


def depth_points(
    depth: Float[Tensor, "*batch H W"], c2w: Float[Tensor, "*batch 4 4"], K: Float[Tensor, "*batch 3 3"]
) -> Float[Tensor, "*batch H*W 3"]:
    """World points (row-major) of z-depth maps seen by cameras ``c2w``, ``K``: the inverse of
    :func:`project` at every pixel centre."""
    origins, directions = image_rays(c2w, K, *depth.shape[-2:])
    distance = depth.flatten(-2) / torch.einsum("...ni,...i->...n", directions, c2w[..., :3, 2])  # z-depth -> along the ray
    return origins + distance[..., None] * directions


def image_rays(
    c2w: Float[Tensor, "*batch 4 4"], K: Float[Tensor, "*batch 3 3"], height: int, width: int
) -> tuple[Float[Tensor, "*batch {height}*{width} 3"], Float[Tensor, "*batch {height}*{width} 3"]]:
    """Rays ``(origins, directions)`` through every pixel centre, row-major."""
    uv = pixel_grid(height, width, c2w.device, c2w.dtype)
    return rays(c2w, K, uv.expand(c2w.shape[:-2] + uv.shape))


def patch_rays(
    c2w: Float[Tensor, "*batch 4 4"],
    K: Float[Tensor, "*batch 3 3"],
    height: int,
    width: int,
    top: int | Int[Tensor, "*#batch"],
    left: int | Int[Tensor, "*#batch"],
    size: int,
) -> tuple[Float[Tensor, "*batch {size}*{size} 3"], Float[Tensor, "*batch {size}*{size} 3"]]:
    """Rays ``(origins, directions)`` through the ``size x size`` pixels starting at row ``top``, column
    ``left`` (per camera if tensors), row-major, equal to ``image_rays`` at those pixels, so the target
    is ``image[..., top:top + size, left:left + size]``."""
    top, left = (torch.as_tensor(v, device=c2w.device) for v in (top, left))
    if (top < 0).any() or (left < 0).any() or (top + size > height).any() or (left + size > width).any():
        raise ValueError(f"a {size}x{size} patch at top={top.tolist()}, left={left.tolist()} leaves the {width}x{height} image")
    i = torch.arange(size, device=c2w.device, dtype=c2w.dtype)
    v = (top[..., None, None] + i[:, None] + 0.5) / height
    u = (left[..., None, None] + i[None, :] + 0.5) / width
    uv = torch.stack(torch.broadcast_tensors(u, v), -1).flatten(-3, -2)
    return rays(c2w, K, uv.expand(c2w.shape[:-2] + uv.shape[-2:]))


def random_pixel_rays(
    c2w: Float[Tensor, "*batch 4 4"],
    K: Float[Tensor, "*batch 3 3"],
    height: int,
    width: int,
    n: int,
    generator: torch.Generator | None = None,
) -> tuple[Float[Tensor, "*batch {n} 3"], Float[Tensor, "*batch {n} 3"], Int[Tensor, "*batch {n}"]]:
    """Rays through ``n`` distinct pixel centres drawn uniformly per camera: ``origins``, ``directions``
    and the pixels' row-major ``index``, to gather the targets from ``image.flatten(-2)``."""
    if not 0 < n <= height * width:
        raise ValueError(f"n must be in [1, {height * width}] for a {width}x{height} image, got {n}")
    device = generator.device if generator is not None else c2w.device
    scores = torch.rand(c2w.shape[:-2] + (height * width,), generator=generator, device=device)
    index = scores.argsort(-1)[..., :n].to(c2w.device)
    origins, directions = rays(c2w, K, pixel_grid(height, width, c2w.device, c2w.dtype)[index])
    return origins, directions, index


def world_to_camera(
    points: Float[Tensor, "*batch N 3"], c2w: Float[Tensor, "*batch 4 4"]
) -> Float[Tensor, "*batch N 3"]:
    """World points in the frame of camera ``c2w``."""
    return torch.einsum("...ji,...nj->...ni", c2w[..., :3, :3], points - c2w[..., None, :3, 3])


def project(
    points: Float[Tensor, "*batch N 3"], c2w: Float[Tensor, "*batch 4 4"], K: Float[Tensor, "*batch 3 3"]
) -> tuple[Float[Tensor, "*batch N 2"], Float[Tensor, "*batch N"]]:
    """Normalised pixel coordinates ``uv`` and z-depth of world points.

    ``uv`` is meaningless where ``depth <= 0`` (behind the camera); callers mask those points.
    """
    p = world_to_camera(points, c2w)
    depth = p[..., 2]
    u = K[..., None, 0, 0] * p[..., 0] / depth + K[..., None, 0, 2]
    v = K[..., None, 1, 1] * p[..., 1] / depth + K[..., None, 1, 2]
    return torch.stack([u, v], -1), depth


# --- other conventions ------------------------------------------------------------------------


def opencv_to_opengl(c2w: Float[Tensor, "*batch 4 4"]) -> Float[Tensor, "*batch 4 4"]:
    """OpenCV ``c2w`` to OpenGL / nerfstudio / Blender (camera x right, y up, z backward)."""
    return c2w * c2w.new_tensor(_FLIP_YZ)


def opengl_to_opencv(c2w: Float[Tensor, "*batch 4 4"]) -> Float[Tensor, "*batch 4 4"]:
    """The inverse of :func:`opencv_to_opengl` (flipping the camera's y and z axes is an involution)."""
    return c2w * c2w.new_tensor(_FLIP_YZ)


def opencv_to_pytorch3d(
    c2w: Float[Tensor, "*batch 4 4"],
) -> tuple[Float[Tensor, "*batch 3 3"], Float[Tensor, "*batch 3"]]:
    """PyTorch3D's world-to-view ``(R, T)`` for row vectors, ``X_view = X_world @ R + T``,
    whose view frame has x left, y up, z forward."""
    r = c2w[..., :3, :3] * c2w.new_tensor(_FLIP_XY)  # camera axes in world coordinates, x and y flipped
    return r, -torch.einsum("...ji,...j->...i", r, c2w[..., :3, 3])


def pytorch3d_to_opencv(R: Float[Tensor, "*batch 3 3"], T: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 4 4"]:
    """The inverse of :func:`opencv_to_pytorch3d`: OpenCV ``c2w``."""
    rotation = R * R.new_tensor(_FLIP_XY)
    centre = -torch.einsum("...ij,...j->...i", R, T)
    return _rigid(rotation, centre)


def _rigid(
    rotation: Float[Tensor, "*batch 3 3"], translation: Float[Tensor, "*batch 3"]
) -> Float[Tensor, "*batch 4 4"]:
    top = torch.cat([rotation, translation[..., None]], -1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], -2)


# --- poses ------------------------------------------------------------------------------------


def look_at(
    eye: Float[Tensor, "*batch 3"],
    target: Float[Tensor, "*#batch 3"] | Sequence[float] = (0.0, 0.0, 0.0),
    up: Float[Tensor, "3"] | Sequence[float] = (0.0, 0.0, 1.0),
) -> Float[Tensor, "*batch 4 4"]:
    """``c2w`` of cameras at ``eye`` looking at ``target``, with the world ``up`` (default +z)
    appearing up in the image (camera -y)."""
    eye = torch.as_tensor(eye)
    target, up = (torch.as_tensor(v, dtype=eye.dtype, device=eye.device) for v in (target, up))
    forward = target - eye
    right = torch.linalg.cross(forward, up.expand_as(forward))
    if (right.norm(dim=-1) <= 1e-8 * forward.norm(dim=-1) * up.norm()).any():
        raise ValueError("look_at: the viewing direction is parallel to `up` (or eye == target), so the roll is undefined")
    forward = forward / forward.norm(dim=-1, keepdim=True)
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.linalg.cross(forward, right)
    return _rigid(torch.stack([right, down, forward], -1), eye)


def orbit(
    n: int, radius: float, elevation_deg: float, target: Sequence[float] = (0.0, 0.0, 0.0),
    start_azimuth_deg: float = 0.0, dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "{n} 4 4"]:
    """``n`` cameras evenly spaced on a circle about the world z axis through ``target``,
    all looking at it: at ``radius`` from it, ``elevation_deg`` above its horizontal plane, and azimuths
    ``start_azimuth_deg + 360 k / n`` measured from +x towards +y."""
    azimuth = torch.deg2rad(start_azimuth_deg + 360.0 * torch.arange(n, dtype=torch.float64) / n)
    elevation = math.radians(elevation_deg)
    offset = radius * torch.stack([
        math.cos(elevation) * azimuth.cos(), math.cos(elevation) * azimuth.sin(), torch.full_like(azimuth, math.sin(elevation))
    ], -1)
    target = torch.tensor(target, dtype=torch.float64)
    return look_at(target + offset, target).to(dtype)


def quaternion_from_matrix(R: Float[Tensor, "*batch 3 3"]) -> Float[Tensor, "*batch 4"]:
    """Unit quaternions ``(w, x, y, z)`` of rotations ``R``, sign chosen so ``w >= 0``.

    Each component is recovered from whichever of w, x, y, z is largest, so there is no division by a
    small number anywhere on the rotation group.
    """
    (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = (row.unbind(-1) for row in R.unbind(-2))
    wx, wy, wz = r21 - r12, r02 - r20, r10 - r01  # 4wx, 4wy, 4wz
    xy, xz, yz = r01 + r10, r02 + r20, r12 + r21  # 4xy, 4xz, 4yz
    # 4w^2, 4x^2, 4y^2, 4z^2
    squares = torch.stack([1 + r00 + r11 + r22, 1 + r00 - r11 - r22, 1 - r00 + r11 - r22, 1 - r00 - r11 + r22], -1)
    candidates = torch.stack([  # row k is 4 q_k q: pick the row of the largest |q_k|, then normalise
        torch.stack([squares[..., 0], wx, wy, wz], -1),
        torch.stack([wx, squares[..., 1], xy, xz], -1),
        torch.stack([wy, xy, squares[..., 2], yz], -1),
        torch.stack([wz, xz, yz, squares[..., 3]], -1),
    ], -2)
    best = squares.argmax(-1)
    q = candidates.gather(-2, best[..., None, None].expand(best.shape + (1, 4)))[..., 0, :]
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def matrix_from_quaternion(q: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 3 3"]:
    """Rotations of quaternions ``(w, x, y, z)`` (normalised first)."""
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).unflatten(-1, (3, 3))


def interpolate_poses(
    c2w_a: Float[Tensor, "*#batch 4 4"], c2w_b: Float[Tensor, "*#batch 4 4"], s: Float[Tensor, "*#batch"] | float
) -> Float[Tensor, "*batch 4 4"]:
    """Poses between ``c2w_a`` and ``c2w_b`` at fractions ``s``, all broadcast together (e.g. ``s`` of
    shape ``(S,)`` with single poses gives ``(S, 4, 4)``): rotations by slerp along the shorter arc,
    camera centres linearly."""
    s = torch.as_tensor(s, dtype=c2w_a.dtype, device=c2w_a.device)[..., None]
    qa, qb = quaternion_from_matrix(c2w_a[..., :3, :3]), quaternion_from_matrix(c2w_b[..., :3, :3])
    cos = (qa * qb).sum(-1, keepdim=True)
    qb, cos = torch.where(cos < 0, -qb, qb), cos.abs().clamp(max=1)
    angle = torch.acos(cos)
    close = angle < 1e-6  # nearly the same rotation: slerp's weights are 0/0, lerp is exact enough
    sin = torch.where(close, torch.ones_like(angle), angle.sin())
    wa = torch.where(close, 1 - s, torch.sin((1 - s) * angle) / sin)
    wb = torch.where(close, s, torch.sin(s * angle) / sin)
    rotation = matrix_from_quaternion(wa * qa + wb * qb)
    centre = (1 - s) * c2w_a[..., :3, 3] + s * c2w_b[..., :3, 3]
    return _rigid(rotation, centre)


# --- validation -------------------------------------------------------------------------------


def validate_cameras(c2w: Tensor, K: Tensor, source: str, tolerance: float = 1e-3) -> None:
    """Raise :class:`CameraError` naming ``source`` and the first bad camera unless ``c2w`` and ``K``
    are ``(*batch 4 4)`` and ``(*batch 3 3)`` and every ``c2w`` is finite and rigid (bottom row
    ``0 0 0 1``; rotation orthonormal with det 1 within ``tolerance``) and every ``K`` is finite,
    skew-free, with positive focal lengths. It checks the shapes itself, so it takes any tensors."""
    if c2w.shape[-2:] != (4, 4) or K.shape[-2:] != (3, 3) or c2w.shape[:-2] != K.shape[:-2]:
        raise CameraError(
            f"{source}: need c2w (..., 4, 4) and K (..., 3, 3) with the same batch shape, "
            f"got {tuple(c2w.shape)} and {tuple(K.shape)}"
        )
    c2w, K = c2w.detach().reshape(-1, 4, 4).double(), K.detach().reshape(-1, 3, 3).double()
    R = c2w[:, :3, :3]
    orthonormality = (R @ R.transpose(-1, -2) - torch.eye(3, dtype=R.dtype, device=R.device)).abs().amax((-1, -2))
    det = torch.linalg.det(R)
    bottom = (c2w[:, 3] - c2w.new_tensor([0, 0, 0, 1])).abs().amax(-1)
    form = torch.cat([K[:, 2] - K.new_tensor([0, 0, 1]), K[:, 0, 1:2], K[:, 1, 0:1]], -1).abs().amax(-1)
    checks = [  # (which cameras fail, what is wrong with camera i), in the order they are reported
        (~c2w.isfinite().flatten(1).all(1), lambda i: "c2w has NaN or inf entries"),
        (~K.isfinite().flatten(1).all(1), lambda i: "K has NaN or inf entries"),
        (bottom > 1e-6, lambda i: f"the bottom row of c2w is {c2w[i, 3].tolist()}, not [0, 0, 0, 1]"),
        ((orthonormality > tolerance) | ((det - 1).abs() > tolerance),
         lambda i: f"the rotation is not rigid (max |R R^T - I| = {orthonormality[i]:.3g}, det = {det[i]:.4g})"),
        ((K[:, 0, 0] <= 0) | (K[:, 1, 1] <= 0),
         lambda i: f"focal lengths must be positive, got fx = {K[i, 0, 0]:.4g}, fy = {K[i, 1, 1]:.4g}"),
        (form > 1e-6, lambda i: f"K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], got {K[i].tolist()}"),
    ]
    for bad, describe in checks:
        if bad.any():
            i = int(bad.nonzero()[0])
            raise CameraError(f"{source}: camera {i}: {describe(i)}")
