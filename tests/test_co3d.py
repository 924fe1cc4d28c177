"""The Co3D v2 loader against procedural scenes written in the Co3D layout, whose geometry is known
exactly: cameras in both intrinsics formats (checked by projecting with PyTorch3D's own documented
formulas), crops equal to the native images, depths that reproject between views, the per-sequence
normalisation, the quality filters, and one clear error naming the file for each kind of bad input."""

from __future__ import annotations

import gzip
import io
import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from dfm.cameras import matrix_from_quaternion, orbit, pixel_grid, project, rays
from dfm.data.co3d import (
    CAMERA_DISTANCE, FIXTURE_SUBSET, Co3DSource, apply_normalisation, normalisation, opencv_to_viewpoint,
    viewpoint_to_opencv, write_co3d,
)
from dfm.data.synth3d import Synth3D, intersect, read_cameras, write_dataset
from dfm.data.vimeo import DatasetError, load_frame

RES = 16
GENERATOR = Synth3D(resolution=RES, views=4)
SEED = 7


def native_scenes(generator: Synth3D, n: int, seed: int = SEED) -> list:
    rng = np.random.default_rng(seed)
    return [generator.scene(rng) for _ in range(n)]


def write(tmp_path, intrinsics_format: str = "ndc_isotropic", generator: Synth3D = GENERATOR, scenes: int = 3):
    """3 scenes: 000001 and 000002 in the train split, 000003 in the test split."""
    return write_co3d(tmp_path / "co3d", generator, scenes, seed=SEED, test_fraction=1 / 3,
                      intrinsics_format=intrinsics_format, progress=False)


def edit_jgz(path, change) -> None:
    data = json.loads(gzip.decompress(path.read_bytes()))
    change(data)
    path.write_bytes(gzip.compress(json.dumps(data).encode()))


def look_at_point(c2w: torch.Tensor) -> torch.Tensor:
    """The point closest in least squares to the optical axes of ``c2w`` ``(N, 4, 4)``, solved independently."""
    centres, axes = c2w[:, :3, 3].double(), c2w[:, :3, 2].double()
    projectors = [torch.eye(3, dtype=torch.float64) - torch.outer(a, a) for a in axes]  # each removes one axis
    rhs = torch.cat([p @ c for p, c in zip(projectors, centres)])
    return torch.linalg.lstsq(torch.cat(projectors), rhs[:, None]).solution[:, 0]


# --- cameras ------------------------------------------------------------------------------------


@pytest.mark.parametrize("intrinsics_format", ["ndc_isotropic", "ndc_norm_image_bounds"])
@pytest.mark.parametrize("width, height", [(30, 20), (20, 30)])
def test_viewpoints_project_as_pytorch3d_documents(intrinsics_format, width, height):
    """Project with PyTorch3D's documented formulas: ``X_view = X_world @ R + T`` (x left, y up, z forward),
    NDC = focal * X_view.xy / z + principal, then pixels with +x left, +y up, the NDC range spanning
    the outer pixel edges of the shorter side [-1, 1] (isotropic) or of each side (image bounds)."""
    g = torch.Generator().manual_seed(0)
    R = matrix_from_quaternion(torch.randn(4, generator=g, dtype=torch.float64))
    viewpoint = {
        "R": R.tolist(), "T": [0.1, -0.2, 4.0], "focal_length": [1.7, 1.9], "principal_point": [0.05, -0.1],
        "intrinsics_format": intrinsics_format,
    }
    points = torch.randn(50, 3, generator=g, dtype=torch.float64)
    view = points @ R + torch.tensor(viewpoint["T"], dtype=torch.float64)
    focal, principal = (torch.tensor(viewpoint[k], dtype=torch.float64) for k in ("focal_length", "principal_point"))
    ndc = focal * view[:, :2] / view[:, 2:] + principal
    half = torch.tensor([width, height], dtype=torch.float64) / 2
    expected = half - ndc * (half.min() if intrinsics_format == "ndc_isotropic" else half)

    c2w, K = viewpoint_to_opencv(viewpoint, width, height)
    uv, depth = project(points, c2w, K)
    torch.testing.assert_close(uv * torch.tensor([width, height], dtype=torch.float64), expected)
    torch.testing.assert_close(depth, view[:, 2])
    back = opencv_to_viewpoint(c2w, K, width, height, intrinsics_format)
    for key in ("R", "T", "focal_length", "principal_point"):
        torch.testing.assert_close(*(torch.tensor(v[key], dtype=torch.float64) for v in (back, viewpoint)))
    with pytest.raises(ValueError, match="unknown intrinsics_format 'screen'"):
        viewpoint_to_opencv(dict(viewpoint, intrinsics_format="screen"), width, height)


# --- the fixture round trip -----------------------------------------------------------------------


@pytest.mark.parametrize("intrinsics_format", ["ndc_isotropic", "ndc_norm_image_bounds"])
def test_round_trip_gives_the_native_scenes(tmp_path, intrinsics_format):
    root = write(tmp_path, intrinsics_format)
    folder = root / "synth3d"
    frames = json.loads(gzip.decompress((folder / "frame_annotations.jgz").read_bytes()))
    height, width = frames[0]["image"]["size"]
    assert (height, width) == (RES, 24) and (width - height) % 2 == 0
    viewpoint = frames[0]["viewpoint"]
    assert viewpoint["intrinsics_format"] == intrinsics_format
    fx, fy = viewpoint["focal_length"]  # square pixels: equal only in the isotropic format
    assert (fx == pytest.approx(fy)) == (intrinsics_format == "ndc_isotropic")
    assert iio.imread(root / frames[0]["image"]["path"]).shape == (RES, 24, 3)  # paths are relative to the root

    train, test = Co3DSource(root, "synth3d", resolution=RES), Co3DSource(root, "synth3d", split="test", resolution=RES)
    assert [train.scene_id(i) for i in range(len(train))] == ["000001", "000002"] and test.sequences == ["000003"]
    with pytest.raises(DatasetError, match="lists no frames in its 'val' list"):
        Co3DSource(root, "synth3d", split="val")
    small = Co3DSource(root, "synth3d", resolution=8)
    for index, native in [(0, 0), (1, 1)]:
        scene, expected = train.load(index), native_scenes(GENERATOR, 3)[native]
        assert train.num_views(index) == 4 and scene.images.shape == (4, 3, RES, RES)
        assert scene.near == train.near and scene.far == train.far
        torch.testing.assert_close(scene.K, expected.K, rtol=0, atol=1e-5)  # the crop's K is the native K
        torch.testing.assert_close(scene.images, expected.images, rtol=0, atol=1 / 255 + 1e-6)  # 8-bit PNG
        assert torch.equal(scene.masks, expected.mask)
        # normalised depths: the native camera radius becomes CAMERA_DISTANCE; float16 PNGs hold ~3 digits
        radius = expected.meta["camera_radius"]
        torch.testing.assert_close(scene.depths * radius / CAMERA_DISTANCE, expected.depth, rtol=2e-3, atol=0)
        resized = small.load(index)
        torch.testing.assert_close(resized.K, expected.K, rtol=0, atol=1e-5)  # normalised K survives the resize
        assert resized.images.shape == (4, 3, 8, 8) and resized.masks.shape == resized.depths.shape == (4, 1, 8, 8)
    bare = Co3DSource(root, "synth3d", resolution=RES, masks=False, depths=False).load(0)
    assert bare.masks is None and bare.depths is None


def test_same_scenes_and_cameras_as_the_native_files(tmp_path):
    """The same seed gives the same scenes as ``write_dataset``; the loader's cameras are the native ones
    up to the normalisation: equal relative poses, translations scaled by CAMERA_DISTANCE / radius."""
    native_root = write_dataset(tmp_path / "native", GENERATOR, 3, seed=SEED, test_fraction=1 / 3, progress=False)
    source = Co3DSource(write(tmp_path), "synth3d", resolution=RES)
    for index in range(2):
        scene_id = source.scene_id(index)
        directory = native_root / "scenes" / scene_id
        c2w, K, _, _ = read_cameras(directory / "cameras.json")
        radius = json.loads((directory / "meta.json").read_text())["camera_radius"]
        scene = source.load(index)
        torch.testing.assert_close(scene.K, K, rtol=0, atol=1e-5)
        relative, native_relative = torch.linalg.inv(scene.c2w[:1]) @ scene.c2w, torch.linalg.inv(c2w[:1]) @ c2w
        torch.testing.assert_close(relative[:, :3, :3], native_relative[:, :3, :3], rtol=0, atol=1e-5)
        torch.testing.assert_close(relative[:, :3, 3] * radius / CAMERA_DISTANCE, native_relative[:, :3, 3], rtol=0, atol=1e-4)
        native_images = torch.stack([load_frame(directory / "images" / f"{v:03d}.png") for v in range(4)])
        torch.testing.assert_close(scene.images, native_images, rtol=0, atol=1 / 255 + 1e-6)


def test_depths_reproject_between_views_to_sub_pixel_accuracy(tmp_path):
    """Unproject every object pixel of view i with the loader's depth and cameras and project it into
    view j: the pixel lands where the exact (ray-cast) surface point projects, and where view j sees
    that point its own depth map agrees with the projected z."""
    res, generator = 24, Synth3D(resolution=24, views=6)
    source = Co3DSource(write(tmp_path, generator=generator), "synth3d", resolution=res)
    for index, native in enumerate(native_scenes(generator, 2)):
        scene, meta = source.load(index), native.meta
        c2w, K = scene.c2w.double(), scene.K.double()
        size = torch.tensor([res, res], dtype=torch.float64)
        for i, j in [(0, 1), (1, 0), (2, 3), (5, 0), (3, 4)]:  # neighbours, 60 degrees apart
            mask = scene.masks[i].flatten()
            uv = pixel_grid(res, res, dtype=torch.float64)[mask]
            z = scene.depths[i].flatten()[mask].double()
            camera = torch.stack([(uv[:, 0] - K[i, 0, 2]) / K[i, 0, 0] * z, (uv[:, 1] - K[i, 1, 2]) / K[i, 1, 1] * z, z], -1)
            points = camera @ c2w[i, :3, :3].T + c2w[i, :3, 3]
            uv_j, z_j = project(points, c2w[j], K[j])

            origins, directions = rays(native.c2w[i].double(), native.K[i].double(), uv)
            t, _ = intersect(meta["shape"], meta["params"], origins, directions)
            exact = origins + t[:, None] * directions  # the surface points, native world
            uv_true, z_true = project(exact, native.c2w[j].double(), native.K[j].double())
            assert ((uv_j - uv_true) * size).abs().max() < 0.05  # pixels; the depths are float16
            torch.testing.assert_close(z_j, z_true * CAMERA_DISTANCE / meta["camera_radius"], rtol=2e-3, atol=0)

            # seen from j: nothing in the way, inside the image, and an object pixel with object neighbours
            to_point = exact - native.c2w[j, :3, 3].double()
            distance = to_point.norm(dim=-1)
            centre_j = native.c2w[j, :3, 3].double().expand_as(exact)
            t_j, _ = intersect(meta["shape"], meta["params"], centre_j, to_point / distance[:, None])
            pixel = (uv_j * size - 0.5).round().long()
            inside = ((pixel >= 1) & (pixel <= res - 2)).all(-1)
            pixel = pixel.clamp(1, res - 2)
            mask_j = scene.masks[j, 0]
            interior = torch.stack([mask_j[pixel[:, 1] + dy, pixel[:, 0] + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]).all(0)
            seen = ((t_j - distance).abs() < 1e-7 * distance) & inside & interior
            assert seen.sum() >= 10
            depth_j = scene.depths[j, 0][pixel[seen, 1], pixel[seen, 0]].double()
            # the nearest pixel centre is within half a pixel of the point: only the surface's slope separates them
            assert ((depth_j - z_j[seen]).abs() / z_j[seen]).median() < 0.01
            assert ((depth_j - z_j[seen]).abs() / z_j[seen]).max() < 0.06


# --- normalisation ------------------------------------------------------------------------------


def test_normalisation_puts_the_look_at_point_at_the_origin():
    """Cameras looking at (1, 2, -3) from 2.5 units, the world rotated so that their up is tilted:
    the look-at point goes to the origin, the mean up to +z and the mean distance to CAMERA_DISTANCE."""
    tilt = matrix_from_quaternion(torch.tensor([0.9, 0.3, -0.2, 0.1], dtype=torch.float64))
    target = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)
    native = orbit(7, 2.5, 25.0, dtype=torch.float64)
    c2w = native.clone()
    c2w[:, :3, :3], c2w[:, :3, 3] = tilt @ native[:, :3, :3], native[:, :3, 3] @ tilt.T + target
    G, scale = normalisation(c2w)
    assert scale == pytest.approx(CAMERA_DISTANCE / 2.5)
    moved = apply_normalisation(c2w, G, scale)
    torch.testing.assert_close(look_at_point(moved), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(moved[:, :3, 3].norm(dim=-1).mean(), torch.tensor(CAMERA_DISTANCE, dtype=torch.float64))
    up = -moved[:, :3, 1].mean(0)
    torch.testing.assert_close(up / up.norm(), torch.tensor([0.0, 0, 1], dtype=torch.float64))
    rotations = moved[:, :3, :3]
    torch.testing.assert_close(rotations @ rotations.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(7, 3, 3))
    # the orbit's own frame is already normalised up to the scale and a turn about z
    yaw = moved[0, :3, 3]
    turn = math.atan2(float(yaw[1]), float(yaw[0])) - math.atan2(float(native[0, 1, 3]), float(native[0, 0, 3]))
    rz = torch.tensor([[math.cos(turn), -math.sin(turn), 0], [math.sin(turn), math.cos(turn), 0], [0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(moved[:, :3, :3], rz @ native[:, :3, :3])
    torch.testing.assert_close(moved[:, :3, 3], native[:, :3, 3] @ rz.T / 2.5)

    parallel = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    parallel[:, 0, 3] = torch.tensor([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="parallel"):
        normalisation(parallel)


def test_loader_normalises_each_sequence_from_all_its_frames(tmp_path):
    root = write(tmp_path)
    source = Co3DSource(root, "synth3d", resolution=RES)
    raw = Co3DSource(root, "synth3d", resolution=RES, normalise=False)
    for index, native in enumerate(native_scenes(GENERATOR, 2)):
        scene = source.load(index)
        torch.testing.assert_close(look_at_point(scene.c2w), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-5)
        torch.testing.assert_close(scene.c2w[:, :3, 3].norm(dim=-1), torch.full((4,), CAMERA_DISTANCE))
        up = -scene.c2w[:, :3, 1].mean(0)
        torch.testing.assert_close(up / up.norm(), torch.tensor([0.0, 0, 1]), rtol=0, atol=1e-5)
        # the views asked for do not move the frame
        picked = source.load(index, [3, 1])
        torch.testing.assert_close(picked.c2w, scene.c2w[[3, 1]])
        torch.testing.assert_close(picked.depths, scene.depths[[3, 1]])
        # the raw SfM world is arbitrary (the fixture's random similarity): its depths scale with it
        sfm = raw.load(index)
        distance = float(sfm.c2w[:, :3, 3].sub(look_at_point(sfm.c2w).float()).norm(dim=-1).mean())
        assert look_at_point(sfm.c2w).norm() > 1e-3 and abs(distance - native.meta["camera_radius"]) > 1e-2
        torch.testing.assert_close(sfm.depths * CAMERA_DISTANCE / distance, scene.depths, rtol=1e-4, atol=0)


def test_quality_filters(tmp_path):
    root = write(tmp_path)
    path = root / "synth3d" / "sequence_annotations.jgz"

    def scores(data):
        data[0]["viewpoint_quality_score"] = 0.2
        data[1]["viewpoint_quality_score"] = None  # absent: passes
        data[1]["point_cloud"] = {"path": "synth3d/000002/pointcloud.ply", "quality_score": float("nan"), "n_points": 10}

    edit_jgz(path, scores)
    assert Co3DSource(root, "synth3d").sequences == ["000001", "000002"]
    assert Co3DSource(root, "synth3d", min_quality=0.5).sequences == ["000002"]
    assert Co3DSource(root, "synth3d", min_point_cloud_quality=0.5).sequences == ["000001"]  # NaN fails
    with pytest.raises(DatasetError, match="no sequence of the 'train' list .* passes min_quality=0.5, min_point_cloud_quality=0.5"):
        Co3DSource(root, "synth3d", min_quality=0.5, min_point_cloud_quality=0.5)


def test_reads_jpeg_images_0_1_depth_masks_and_depth_maps_of_another_size(tmp_path):
    """Real Co3D images are JPEG; any non-zero depth-mask value is valid depth; a depth map smaller than
    its image is upsampled by nearest neighbour."""
    root = write(tmp_path)
    folder = root / "synth3d"
    expected = Co3DSource(root, "synth3d", resolution=RES).load(0)
    png = folder / "000001" / "images" / "frame000002.png"
    iio.imwrite(png.with_suffix(".jpg"), iio.imread(png), quality=95)
    png.unlink()
    depth = folder / "000001" / "depths" / "frame000001.png"
    iio.imwrite(depth, iio.imread(depth)[::2, ::2])
    depth_mask = folder / "000001" / "depth_masks" / "frame000001.png"
    iio.imwrite(depth_mask, iio.imread(depth_mask)[::2, ::2])

    def to_jpeg(frames):
        frames[1]["image"]["path"] = frames[1]["image"]["path"].replace(".png", ".jpg")

    edit_jgz(folder / "frame_annotations.jgz", to_jpeg)
    ones = folder / "000001" / "depth_masks" / "frame000003.png"
    valid = iio.imread(ones) > 0
    valid[:, :12] = False  # the left half of the image, so columns 0-7 of the crop
    iio.imwrite(ones, valid.astype(np.uint8))
    scene = Co3DSource(root, "synth3d", resolution=RES).load(0)
    assert torch.equal(scene.depths[2, 0, :, 8:], expected.depths[2, 0, :, 8:]) and (scene.depths[2, 0, :, :8] == 0).all()
    assert expected.depths[2, 0, :, :8].any()
    assert (scene.images[1] - expected.images[1]).abs().mean() < 0.05
    # the half-size map, upsampled and cropped (the crop starts at an even column): pixel (i, j) holds
    # the depth of pixel (i, j) rounded down to even coordinates
    block = expected.depths[0, 0, ::2, ::2].repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(scene.depths[0, 0], block)


# --- bad input ------------------------------------------------------------------------------------


def test_construction_errors_name_the_file(tmp_path):
    root = write(tmp_path)
    folder = root / "synth3d"
    with pytest.raises(DatasetError, match=r"unknown category 'chairs': .* holds the categories \['synth3d'\]"):
        Co3DSource(root, "chairs")
    with pytest.raises(DatasetError, match=r"unknown subset 'manyview_dev_0': .*set_lists_manyview_dev_0.json does not exist; "
                                           r".*set_lists holds \['set_lists_fewview_train.json'\]"):
        Co3DSource(root, "synth3d", subset="manyview_dev_0")
    with pytest.raises(DatasetError, match="Co3D root .*nowhere does not exist"):
        Co3DSource(tmp_path / "nowhere", "synth3d")
    with pytest.raises(ValueError, match="split"):
        Co3DSource(root, "synth3d", split="dev")

    set_list = folder / "set_lists" / f"set_lists_{FIXTURE_SUBSET}.json"
    frames, sequences = folder / "frame_annotations.jgz", folder / "sequence_annotations.jgz"

    def drop_frame_number(data):
        del data[3]["frame_number"]

    def unknown_format(data):
        data[5]["viewpoint"]["intrinsics_format"] = "screen"

    def no_viewpoint(data):
        data[0]["viewpoint"] = None

    def unlisted_frame(data):
        data["train"].append(["000001", 9, "synth3d/000001/images/frame000010.png"])

    def drop_sequence(data):
        del data[1]

    truncated = gzip.compress(b"[" + b"{}, " * 100)[:-20]
    cases = [
        (frames, None, "frame annotations file .*frame_annotations.jgz does not exist"),
        (frames, b"not gzip", "cannot read frame annotations file .*frame_annotations.jgz"),
        (frames, truncated, "cannot read frame annotations file .*frame_annotations.jgz"),
        (frames, gzip.compress(b"{not json"), "cannot read frame annotations file .*frame_annotations.jgz"),
        (frames, gzip.compress(b'{"a": 1}'), "malformed frame annotations file .*frame_annotations.jgz: expected a JSON list"),
        (frames, drop_frame_number, "malformed frame annotations file .*frame_annotations.jgz: KeyError"),
        (frames, unknown_format, "frame_annotations.jgz: frame 1 of sequence '000002' has intrinsics_format 'screen'"),
        (frames, no_viewpoint, "frame_annotations.jgz: frame 0 of sequence '000001' has no viewpoint"),
        (sequences, None, "sequence annotations file .*sequence_annotations.jgz does not exist"),
        (sequences, b"\x1f\x8b garbage", "cannot read sequence annotations file .*sequence_annotations.jgz"),
        (sequences, drop_sequence, r"sequence annotations file .*sequence_annotations.jgz lacks the sequences \['000002'\]"),
        (set_list, b"{not json", "cannot read set list .*set_lists_fewview_train.json"),
        (set_list, b'{"test": []}', "malformed set list .*set_lists_fewview_train.json: no 'train' list"),
        (set_list, b'{"train": [["000001"]]}', "malformed set list .*set_lists_fewview_train.json"),
        (set_list, unlisted_frame, r"set list .*set_lists_fewview_train.json lists frames \[9\] of sequence '000001' "
                                   r"that .*frame_annotations.jgz does not annotate"),
    ]
    for path, content, message in cases:
        original = path.read_bytes()
        if content is None:
            path.unlink()
        elif callable(content) and path.suffix == ".jgz":
            edit_jgz(path, content)
        elif callable(content):
            data = json.loads(original)
            content(data)
            path.write_text(json.dumps(data))
        else:
            path.write_bytes(content)
        with pytest.raises(DatasetError, match=message):
            Co3DSource(root, "synth3d")
        path.write_bytes(original)
    Co3DSource(root, "synth3d").load(1)  # restored


def test_load_errors_name_the_file(tmp_path):
    root = write(tmp_path)
    folder = root / "synth3d"
    frames = folder / "frame_annotations.jgz"
    source = Co3DSource(root, "synth3d", resolution=8)
    with pytest.raises(DatasetError, match=r"sequence '000001' has 4 frames in the 'train' list of .*set_lists_fewview_train.json; "
                                           r"views \[4, -1\] do not exist"):
        source.load(0, [0, 4, -1])

    small = io.BytesIO()
    iio.imwrite(small, np.zeros((8, 8, 3), np.uint8), extension=".png")
    eight_bit = io.BytesIO()
    iio.imwrite(eight_bit, np.zeros((RES, 24), np.uint8), extension=".png")
    sequence = folder / "000001"
    file_cases = [
        (sequence / "images" / "frame000002.png", None, "frame .*000001/images/frame000002.png does not exist"),
        (sequence / "images" / "frame000003.png", b"not a png", "cannot read frame .*000001/images/frame000003.png"),
        (sequence / "images" / "frame000003.png", small.getvalue(),
         "image .*frame000003.png is 8x8 but frame 2 of sequence '000001' in .*frame_annotations.jgz says 24x16"),
        (sequence / "masks" / "frame000001.png", None, "mask .*000001/masks/frame000001.png does not exist"),
        (sequence / "masks" / "frame000004.png", small.getvalue(), "mask .*masks/frame000004.png is 8x8 but its image is 24x16"),
        (sequence / "depths" / "frame000001.png", None, "depth map .*000001/depths/frame000001.png does not exist"),
        (sequence / "depths" / "frame000002.png", b"\x89PNG broken", "cannot read depth map .*depths/frame000002.png"),
        (sequence / "depths" / "frame000002.png", eight_bit.getvalue(),
         "depth map .*depths/frame000002.png is uint8 .*not a single-channel 16-bit PNG"),
        (sequence / "depth_masks" / "frame000003.png", None, "depth mask .*depth_masks/frame000003.png does not exist"),
    ]
    for path, content, message in file_cases:
        original = path.read_bytes()
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content)
        with pytest.raises(DatasetError, match=message):
            source.load(0)
        path.write_bytes(original)
    source.load(0)  # restored

    def skewed(data):
        data[2]["viewpoint"]["R"][0][0] = 2.0

    def nan_camera(data):
        data[1]["viewpoint"]["T"][2] = float("nan")

    def no_mask(data):
        data[0]["mask"] = None

    def same_camera(data):
        for entry in data[:4]:
            entry["viewpoint"]["R"], entry["viewpoint"]["T"] = data[0]["viewpoint"]["R"], data[0]["viewpoint"]["T"]

    annotation_cases = [
        (skewed, r"frame_annotations.jgz, sequence '000001' \(cameras in frame-number order\): camera 2: "
                 r"the rotation is not rigid"),
        (nan_camera, r"frame_annotations.jgz, sequence '000001' .*camera 1: c2w has NaN"),
        (no_mask, r"frame 0 of sequence '000001' in .*frame_annotations.jgz has no mask annotation \(pass masks=False\)"),
        (same_camera, "frame_annotations.jgz: cannot normalise sequence '000001': the optical axes .* are \\(nearly\\) parallel"),
    ]
    original = frames.read_bytes()
    for change, message in annotation_cases:
        edit_jgz(frames, change)
        with pytest.raises(DatasetError, match=message):
            Co3DSource(root, "synth3d", resolution=8).load(0)
        frames.write_bytes(original)
    Co3DSource(root, "synth3d", resolution=8, masks=False).load(1)
