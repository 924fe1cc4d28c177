"""The procedural 3D dataset: renders that agree with closed forms and with brute-force ray marching,
a hidden side that the context camera cannot see and whose colour is uniform and independent of the
context image, and the on-disk format."""

from __future__ import annotations

import io
import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from dfm.cameras import image_rays, intrinsics_from_fov
from dfm.data.synth3d import PALETTE, Synth3D, Synth3DSource, render, write_dataset
from dfm.data.vimeo import DatasetError


def inside(shape: str, params: dict, p: torch.Tensor, shrink: float = 1.0) -> torch.Tensor:
    """Whether points ``(..., 3)`` are inside the primitive (scaled by ``shrink``), written independently of the renderer."""
    if shape == "sphere":
        return p.norm(dim=-1) <= shrink * params["radius"]
    if shape == "box":
        return (p.abs() <= shrink * torch.tensor(params["half_extents"], dtype=p.dtype)).all(-1)
    return (p[..., :2].norm(dim=-1) <= shrink * params["radius"]) & (p[..., 2].abs() <= shrink * params["half_height"])


def scene_of(shape: str, seed: int, **kwargs):
    return Synth3D(shapes=(shape,), **kwargs).scene(np.random.default_rng(seed))


def test_scene_shapes_ranges_and_cameras():
    scene = Synth3D(resolution=12, views=4).scene(np.random.default_rng(0))
    assert scene.images.shape == (4, 3, 12, 12) and scene.images.dtype == torch.float32
    assert scene.images.min() >= -1 and scene.images.max() <= 1
    for x in (scene.depth, scene.mask, scene.hidden_mask):
        assert x.shape == (4, 1, 12, 12)
    assert scene.mask.dtype == scene.hidden_mask.dtype == torch.bool
    assert (scene.depth[~scene.mask] == 0).all() and (scene.depth[scene.mask] > 0).all()
    assert not (scene.hidden_mask & ~scene.mask).any()
    assert (scene.images[:, :, ~scene.mask[0, 0]] == -1).all()  # black background
    assert scene.c2w.shape == (4, 4, 4) and scene.K.shape == (4, 3, 3)
    json.dumps(scene.meta)


def test_sphere_silhouette_is_the_projected_disc():
    """The sphere's silhouette is a cone of half-angle asin(r / D) about the optical axis: a disc of
    radius f tan(asin(r / D)) pixels. Every pixel centre clearly inside or outside it agrees."""
    res = 64
    for seed in range(4):
        scene = scene_of("sphere", seed, resolution=res, views=2)
        r, distance = scene.meta["params"]["radius"], scene.meta["camera_radius"]
        rho = res * float(scene.K[0, 1, 1]) * math.tan(math.asin(r / distance))
        centre = (torch.arange(res, dtype=torch.float64) + 0.5) - res / 2
        dist = torch.hypot(centre[None, :], centre[:, None])
        clear = (dist - rho).abs() > 1e-6
        for view in range(2):
            assert torch.equal(scene.mask[view, 0][clear], (dist < rho)[clear])
            assert abs(int(scene.mask[view].sum()) - math.pi * rho**2) < 0.25 * 2 * math.pi * rho


def test_sphere_depth_at_the_centre_pixel():
    scene = scene_of("sphere", 3, resolution=33, views=3)  # odd: a pixel centre on the optical axis
    expected = scene.meta["camera_radius"] - scene.meta["params"]["radius"]
    torch.testing.assert_close(scene.depth[:, 0, 16, 16], torch.full((3,), expected), rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", ["sphere", "box", "cylinder"])
def test_depth_and_mask_agree_with_ray_marching(shape):
    res, steps = 16, 3000
    for seed in range(2):
        scene = scene_of(shape, seed, resolution=res, views=3)
        meta = scene.meta
        origins, directions = image_rays(scene.c2w.double(), scene.K.double(), res, res)
        near, far = meta["camera_radius"] - meta["size"] - 0.05, meta["camera_radius"] + meta["size"] + 0.05
        t = torch.linspace(near, far, steps, dtype=torch.float64)
        hits = inside(shape, meta["params"], origins[..., None, :] + t[:, None] * directions[..., None, :])
        marched_mask = hits.any(-1)
        first = t[hits.float().argmax(-1)]
        cos = (directions * scene.c2w[:, None, :3, 2].double()).sum(-1)
        mask = scene.mask.flatten(1)
        assert (mask != marched_mask).sum() <= 2  # only rays grazing the surface may differ
        both = mask & marched_mask
        step = (far - near) / (steps - 1)
        assert ((scene.depth.flatten(1)[both] - (first * cos)[both]).abs() <= step + 1e-5).all()


@pytest.mark.parametrize("shape", ["sphere", "box", "cylinder"])
def test_hidden_side_is_exactly_what_the_context_camera_cannot_see(shape):
    """Hidden pixels are the surface points whose segment to the context camera's centre passes
    through the solid, so view 0 shows none and the opposite view shows some."""
    views = 6
    for seed in range(3):
        scene = scene_of(shape, seed, resolution=24, views=views)
        assert not scene.hidden_mask[0].any()
        assert scene.hidden_mask[views // 2].any()
        origins, directions = image_rays(scene.c2w.double(), scene.K.double(), 24, 24)
        cos = (directions * scene.c2w[:, None, :3, 2].double()).sum(-1)
        mask = scene.mask.flatten(1)
        points = (origins + (scene.depth.flatten(1).double() / cos)[..., None] * directions)[mask]
        context = torch.tensor(scene.meta["context_centre"], dtype=torch.float64)
        s = 1 - torch.logspace(-4, 0, 400, dtype=torch.float64)[:, None]  # dense near the surface point
        segments = context + s * (points[:, None, :] - context)
        occluded = inside(shape, scene.meta["params"], segments, shrink=1 - 1e-5).any(-1)
        disagree = (occluded != scene.hidden_mask.flatten(1)[mask]).float().mean()
        assert disagree <= 0.01, disagree  # only grazing the boundary between the sides


def test_context_view_does_not_depend_on_the_hidden_colour_and_recolouring_is_exact():
    for seed in range(6):
        scene = Synth3D(resolution=20, views=4).scene(np.random.default_rng(seed))
        meta = scene.meta
        same = render(meta, scene.c2w, scene.K, 20, 20, hidden_colour=meta["hidden_colour"])
        assert torch.equal(same.images, scene.images) and torch.equal(same.depth, scene.depth)
        for k in range(len(PALETTE)):
            other = render(meta, scene.c2w, scene.K, 20, 20, hidden_colour=k)
            assert torch.equal(other.images[0], scene.images[0])  # the posterior is the prior: uniform
            changed = (other.images != scene.images).any(1, keepdim=True)
            assert torch.equal(changed, scene.hidden_mask if k != meta["hidden_colour"] else torch.zeros_like(changed))
            assert torch.equal(other.hidden_mask, scene.hidden_mask)


def test_hidden_colour_is_uniform_over_the_palette():
    generator = Synth3D(resolution=4, views=1)
    rng = np.random.default_rng(0)
    counts = np.bincount([generator.scene(rng).meta["hidden_colour"] for _ in range(400)], minlength=4)
    chi2 = ((counts - 100) ** 2 / 100).sum()
    assert chi2 < 16.27, counts  # the 0.1% critical value of chi-squared with 3 degrees of freedom


def test_render_at_another_resolution_and_aspect():
    """Normalised intrinsics: a twice-as-wide image with the same vertical field of view and square
    pixels sees the same central columns."""
    scene = Synth3D(resolution=16, views=2).scene(np.random.default_rng(1))
    wide = render(scene.meta, scene.c2w, intrinsics_from_fov(scene.meta["fov"], aspect=2.0).expand(2, 3, 3), 16, 32)
    assert wide.images.shape == (2, 3, 16, 32)
    torch.testing.assert_close(wide.images[..., 8:24], scene.images, rtol=0, atol=1e-5)
    assert torch.equal(wide.mask[..., 8:24], scene.mask)


def test_generator_parameters_are_checked():
    with pytest.raises(ValueError, match="shapes"):
        Synth3D(shapes=("torus",))
    with pytest.raises(ValueError, match="distinct"):
        Synth3D(palette=((1.0, 0.0, 0.0), (1.0, 0.0, 0.0)))
    with pytest.raises(ValueError, match="fit"):
        Synth3D(size=(0.5, 2.0))
    two = Synth3D(resolution=4, views=1, palette=((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), shapes=("box",))
    assert two.scene(np.random.default_rng(0)).meta["hidden_colour"] in (0, 1)


@pytest.fixture
def written(tmp_path):
    generator = Synth3D(resolution=16, views=3)
    return write_dataset(tmp_path / "synth", generator, scenes=4, seed=7, test_fraction=0.25, progress=False), generator


def test_write_then_read_round_trip(written):
    root, generator = written
    assert (root / "train.txt").read_text().split() == ["000001", "000002", "000003"]
    assert (root / "test.txt").read_text().split() == ["000004"]
    saved = json.loads((root / "generator.json").read_text())
    assert saved["seed"] == 7 and saved["scenes"] == 4 and saved["resolution"] == 16
    assert json.loads((root / "scenes/000001/cameras.json").read_text())["convention"] == "opencv"

    rng = np.random.default_rng(7)
    expected = [generator.scene(rng) for _ in range(4)]
    train, test = Synth3DSource(root, "train"), Synth3DSource(root, "test")
    assert len(train) == 3 and len(test) == 1
    for item, meta, scene in [(train.load(i), train.meta(i), expected[i]) for i in range(3)] + [(test.load(0), test.meta(0), expected[3])]:
        assert item.images.shape == (3, 3, 16, 16) and train.num_views(0) == 3
        torch.testing.assert_close(item.images, scene.images, rtol=0, atol=1 / 255 + 1e-6)
        assert torch.equal(item.depths, scene.depth) and torch.equal(item.masks, scene.mask)
        torch.testing.assert_close(item.c2w, scene.c2w)
        torch.testing.assert_close(item.K, scene.K)
        assert meta == json.loads(json.dumps(scene.meta))
        assert torch.equal(render(meta, item.c2w, item.K, 16, 16).mask, scene.mask)
    assert [train.scene_id(i) for i in range(3)] == ["000001", "000002", "000003"] and test.scene_id(0) == "000004"
    two = train.load(1, [2, 0])  # only the views asked for, in that order
    assert torch.equal(two.images, train.load(1).images[[2, 0]]) and torch.equal(two.c2w, train.load(1).c2w[[2, 0]])
    with pytest.raises(DatasetError, match="has views 0-2; asked for"):
        train.load(1, [3])


def test_dataset_errors_name_the_file(written):
    root, _ = written
    scene = root / "scenes" / "000002"
    with pytest.raises(DatasetError, match="does not exist"):
        Synth3DSource(root / "nowhere")
    with pytest.raises(ValueError, match="split"):
        Synth3DSource(root, "val")

    cameras = json.loads((scene / "cameras.json").read_text())
    cases = []

    def case(path, content, message):
        cases.append((path, content, message))

    bad = json.loads(json.dumps(cameras))
    bad["views"][1]["c2w"][0][0] = 2.0
    case(scene / "cameras.json", json.dumps(bad), "cameras.json: camera 1: the rotation is not rigid")
    bad = dict(cameras, convention="opengl")
    case(scene / "cameras.json", json.dumps(bad), "malformed cameras file .*cameras.json.*opencv")
    case(scene / "cameras.json", "{not json", "cannot read cameras file .*cameras.json")
    case(scene / "cameras.json", json.dumps({"convention": "opencv"}), "malformed cameras file .*cameras.json")
    case(scene / "cameras.json", None, "cameras file .*cameras.json does not exist")
    case(scene / "images" / "001.png", None, "frame .*images/001.png does not exist")
    case(scene / "images" / "002.png", b"not a png", "cannot read frame .*images/002.png")
    case(scene / "masks" / "000.png", None, "mask .*masks/000.png does not exist")
    small = io.BytesIO()
    iio.imwrite(small, np.zeros((8, 8), np.uint8), extension=".png")
    case(scene / "masks" / "001.png", small.getvalue(), "masks/001.png is 8x8 but .*cameras.json says 16x16")
    case(scene / "depth.npy", None, "depth file .*depth.npy does not exist")
    case(scene / "depth.npy", np.zeros((3, 8, 8), np.float32), r"depth file .*depth.npy holds float32 \(3, 8, 8\)")
    for path, content, message in cases:
        original = path.read_bytes()
        if content is None:
            path.unlink()
        elif isinstance(content, np.ndarray):
            np.save(path, content)
        else:
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        with pytest.raises(DatasetError, match=message):
            Synth3DSource(root, "train").load(1)
        path.write_bytes(original)
    Synth3DSource(root, "train").load(1)  # restored

    (root / "train.txt").write_text("000001\n000009\n")
    with pytest.raises(DatasetError, match="1 scene directories listed in .*train.txt do not exist: .*000009"):
        Synth3DSource(root, "train")
    (root / "test.txt").unlink()
    with pytest.raises(DatasetError, match="list file .*test.txt does not exist"):
        Synth3DSource(root, "test")
