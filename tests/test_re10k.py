"""The RealEstate10k loader: both on-disk layouts give back the procedural scenes written in them (the
cameras exactly, the frames pixel for pixel after the crop), the cameras agree with the scenes' analytic
geometry, and every kind of broken input is one DatasetError that names the file."""

from __future__ import annotations

import io
import json
import pickle
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dfm.cameras import pixel_grid, project, rays, z_depth
from dfm.data import re10k
from dfm.data.re10k import (
    RealEstate10kSource, camera_rows, frame_width, opencv_cameras, write_re10k_torch, write_re10k_txt,
)
from dfm.data.synth3d import SPLITS, Synth3D, Synth3DSource, intersect, render, write_dataset
from dfm.data.vimeo import DatasetError

RES = 18  # 16:9 frames of 18 x 32 pixels
GENERATOR = Synth3D(resolution=RES, views=3)
WRITERS = {"txt": write_re10k_txt, "torch": write_re10k_torch}
JPEG_MEAN, JPEG_MAX = 0.03, 0.3  # quality-95 JPEG error on tiny frames with sharp silhouettes, in [-1, 1] units


def write(layout: str, root, scenes: int = 3, test_fraction: float = 1 / 3):
    return WRITERS[layout](root, GENERATOR, scenes, seed=5, test_fraction=test_fraction, progress=False)


def quantised(images: torch.Tensor) -> torch.Tensor:
    """Images as an 8-bit file holds them."""
    return ((images + 1) * 127.5).round() / 127.5 - 1


def assert_images(loaded: torch.Tensor, expected: torch.Tensor, layout: str) -> None:
    if layout == "txt":  # PNG: lossless
        assert torch.equal(loaded, quantised(expected))
    else:
        error = (loaded - expected).abs()
        assert error.mean() < JPEG_MEAN and error.max() < JPEG_MAX, (error.mean(), error.max())


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Both layouts of the same 3 scenes (2 train, 1 test), and the scenes as generated. Read only."""
    root = tmp_path_factory.mktemp("re10k")
    rng = np.random.default_rng(5)
    return {layout: write(layout, root / layout) for layout in WRITERS}, [GENERATOR.scene(rng) for _ in range(3)]


def test_written_files_follow_the_formats(written):
    roots, _ = written
    lines = (roots["txt"] / "train" / "000001.txt").read_text().splitlines()
    assert lines[0].startswith("https://") and len(lines) == 1 + 3
    fields = lines[1].split()
    assert len(fields) == 19 and fields[5:7] == ["0.0", "0.0"]
    timestamps = [int(line.split()[0]) for line in lines[1:]]
    assert timestamps == sorted(set(timestamps))
    assert iio.imread(roots["txt"] / "train" / "000001" / f"{timestamps[0]}.png").shape == (RES, 32, 3)
    assert frame_width(RES) == 32 and frame_width(27) == 49  # 16:9, and an even margin on each side
    assert sorted(p.name for p in (roots["txt"] / "test").iterdir()) == ["000003", "000003.txt"]

    chunk = torch.load(roots["torch"] / "train" / "000000.torch", weights_only=True)
    assert [example["key"] for example in chunk] == ["000001", "000002"]
    example = chunk[0]
    assert example["url"] == lines[0] and example["timestamps"].tolist() == timestamps
    assert example["cameras"].shape == (3, 18) and example["cameras"].dtype == torch.float32
    with Image.open(io.BytesIO(example["images"][0].numpy().tobytes())) as image:
        assert image.format == "JPEG" and image.size == (32, RES)
    index = json.loads((roots["torch"] / "train" / "index.json").read_text())
    assert index == {"000001": "000000.torch", "000002": "000000.torch"}
    assert json.loads((roots["torch"] / "test" / "index.json").read_text()) == {"000003": "000000.torch"}


def test_cameras_follow_the_official_definition():
    """RealEstate10k's ``K [R | t]`` maps a world point to normalised image coordinates (top-left corner
    (0, 0)); the converted cameras put it at the same place, in front of the camera, with dfm.cameras."""
    scene = GENERATOR.scene(np.random.default_rng(0))
    rows = camera_rows(scene.c2w, scene.K)
    points = 0.5 * torch.randn(3, 50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    K = torch.zeros(3, 3, 3, dtype=torch.float64)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], 1
    image = torch.einsum("vij,vjk,vnk->vni", K, rows[:, 6:].reshape(3, 3, 4), F.pad(points, (0, 1), value=1.0))
    c2w, K_ours = opencv_cameras(rows)
    uv, depth = project(points, c2w, K_ours)
    torch.testing.assert_close(uv, image[..., :2] / image[..., 2:])
    assert (depth > 0).all()
    torch.testing.assert_close(c2w, scene.c2w.double(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("layout", WRITERS)
def test_loader_gives_back_the_native_scenes(written, layout):
    roots, scenes = written
    for split, numbers in (("train", [0, 1]), ("test", [2])):
        source = RealEstate10kSource(roots[layout], split, resolution=RES, near=1.0, far=5.0)
        assert source.layout == {"txt": "camera files", "torch": "chunks"}[layout]
        assert len(source) == len(numbers)
        for i, number in enumerate(numbers):
            loaded, scene = source.load(i), scenes[number]
            assert loaded.scene_id == source.scene_id(i) == f"{number + 1:06d}"
            assert source.num_views(i) == 3 and (loaded.near, loaded.far) == (1.0, 5.0)
            assert loaded.images.shape == (3, 3, RES, RES) and loaded.images.dtype == torch.float32
            assert loaded.masks is None and loaded.depths is None
            torch.testing.assert_close(loaded.K, scene.K, rtol=0, atol=1e-5)
            torch.testing.assert_close(loaded.c2w, scene.c2w, rtol=0, atol=1e-5)
            assert_images(loaded.images, scene.images, layout)


@pytest.mark.parametrize("layout", WRITERS)
def test_selected_views_and_another_resolution(written, layout):
    roots, _ = written
    full = RealEstate10kSource(roots[layout], "train", resolution=RES).load(1)
    part = RealEstate10kSource(roots[layout], "train", resolution=RES).load(1, [2, 0])
    for got, want in ((part.images, full.images), (part.c2w, full.c2w), (part.K, full.K)):
        assert torch.equal(got, want[[2, 0]])
    small = RealEstate10kSource(roots[layout], "train", resolution=9).load(1)
    assert small.images.shape == (3, 3, 9, 9)
    torch.testing.assert_close(small.K, full.K)  # normalised: a centred square has the same K at any size
    torch.testing.assert_close(small.images, F.interpolate(full.images, size=(9, 9), mode="area"))


def test_only_the_requested_frames_are_decoded(written, monkeypatch):
    roots, _ = written
    decoded = []
    for name in ("load_frame", "_decode_jpeg"):
        original = getattr(re10k, name)
        monkeypatch.setattr(re10k, name, lambda *args, original=original: decoded.append(args) or original(*args))
    for layout in WRITERS:
        decoded.clear()
        source = RealEstate10kSource(roots[layout], "train", resolution=RES)
        assert [source.num_views(i) for i in range(len(source))] == [3, 3]
        assert decoded == []
        source.load(1, [2, 0])
        assert len(decoded) == 2


def test_views_are_in_timestamp_order_whatever_the_file_order(written, tmp_path):
    roots, _ = written
    for layout in WRITERS:
        shutil.copytree(roots[layout], tmp_path / layout)
    camera_file = tmp_path / "txt" / "train" / "000002.txt"
    url, *frames = camera_file.read_text().splitlines()
    camera_file.write_text("\n".join([url, *reversed(frames)]))
    chunk_path = tmp_path / "torch" / "train" / "000000.torch"
    chunk = torch.load(chunk_path, weights_only=True)
    example = chunk[1]
    example.update(
        timestamps=example["timestamps"].flip(0), cameras=example["cameras"].flip(0), images=example["images"][::-1]
    )
    torch.save(chunk, chunk_path)
    for layout in WRITERS:
        reordered = RealEstate10kSource(tmp_path / layout, "train", resolution=RES).load(1)
        original = RealEstate10kSource(roots[layout], "train", resolution=RES).load(1)
        assert torch.equal(reordered.images, original.images) and torch.equal(reordered.c2w, original.c2w)


@pytest.mark.parametrize("layout", WRITERS)
def test_cameras_reproject_depth_consistently(written, layout):
    """Lift each view's native depth to 3-D with the loader's cameras and project it into the other views:
    each point lands where the native camera sees that surface point (to 1e-3 pixels), and the analytic
    ray of the other view through it meets the surface at it where it is visible and in front of it
    where it is hidden, never behind it (which would put it off the surface)."""
    roots, scenes = written
    source = RealEstate10kSource(roots[layout], "train", resolution=RES)
    uv = pixel_grid(RES, RES, dtype=torch.float64)
    for index, scene in enumerate(scenes[:2]):
        loaded = source.load(index)
        depth = render(scene.meta, scene.c2w, scene.K, RES, RES).depth.flatten(1).double()  # (V, H * W) z-depth
        ours = loaded.c2w.double(), loaded.K.double()
        native = scene.c2w.double(), scene.K.double()

        def lift(c2w, K, a):  # (P, 3): the object's pixels of view a at their depth
            origins, directions = rays(c2w[a], K[a], uv[depth[a] > 0])
            return origins + (depth[a][depth[a] > 0] / (directions @ c2w[a, :3, 2]))[:, None] * directions

        for a in range(3):
            points, true_points = lift(*ours, a), lift(*native, a)
            for b in set(range(3)) - {a}:
                uv_b, z_b = project(points, ours[0][b], ours[1][b])
                uv_true, _ = project(true_points, native[0][b], native[1][b])
                assert ((uv_b - uv_true) * RES).abs().max() < 1e-3
                origins, directions = rays(native[0][b], native[1][b], uv_b)
                t, _ = intersect(scene.meta["shape"], scene.meta["params"], origins, directions)
                z_hit = z_depth(t, directions, native[0][b])
                assert (z_hit <= z_b + 1e-4).float().mean() >= 0.99  # only rays grazing the silhouette may miss
                assert ((z_hit - z_b).abs() < 1e-4).float().mean() > 0.05  # the views overlap (by 12-14% here)


def test_same_seed_gives_the_same_scenes_as_write_dataset(written, tmp_path):
    roots, _ = written
    native_root = write_dataset(tmp_path / "native", GENERATOR, 3, seed=5, test_fraction=1 / 3, progress=False)
    for split in SPLITS:
        native = Synth3DSource(native_root, split)
        for layout in WRITERS:
            source = RealEstate10kSource(roots[layout], split, resolution=RES)
            assert list(map(source.scene_id, range(len(source)))) == list(map(native.scene_id, range(len(native))))
            for i in range(len(native)):
                expected, loaded = native.load(i), source.load(i)
                torch.testing.assert_close(loaded.c2w, expected.c2w, rtol=0, atol=1e-5)
                torch.testing.assert_close(loaded.K, expected.K, rtol=0, atol=1e-5)
                assert_images(loaded.images, expected.images, layout)
    other = write_re10k_txt(tmp_path / "other", GENERATOR, 3, seed=6, test_fraction=1 / 3, progress=False)
    assert not torch.equal(RealEstate10kSource(other).load(0).c2w, RealEstate10kSource(roots["txt"]).load(0).c2w)


# --- broken input -----------------------------------------------------------------------------


def replace(path, content) -> None:
    """Delete ``path`` (None), or write bytes, text, or any other object with torch.save."""
    if content is None:
        path.unlink()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        torch.save(content, path)


def expect_errors(root, cases) -> None:
    """Each case ``(path, content, message, load)``: with ``path`` replaced by ``content``, reading the train
    split raises a DatasetError matching ``message``, at construction if ``load`` is None, else when
    loading ``load = (index, views)`` (construction succeeds: frames and camera files are read lazily)."""
    for path, content, message, load in cases:
        original = path.read_bytes() if path.exists() else None
        replace(path, content)
        if load is None:
            with pytest.raises(DatasetError, match=message):
                RealEstate10kSource(root, "train", resolution=RES)
        else:
            source = RealEstate10kSource(root, "train", resolution=RES)
            with pytest.raises(DatasetError, match=message):
                source.load(*load)
        replace(path, original)
    RealEstate10kSource(root, "train", resolution=RES).load(1)  # restored


def test_missing_root_and_split(tmp_path):
    root = write("txt", tmp_path / "re10k")
    with pytest.raises(DatasetError, match=r"root .*nowhere does not exist"):
        RealEstate10kSource(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split"):
        RealEstate10kSource(root, "val")
    shutil.rmtree(root / "test")
    with pytest.raises(DatasetError, match=r"split folder .*re10k/test does not exist"):
        RealEstate10kSource(root, "test")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"split folder .*empty/train holds no \.torch chunks and no sequence folders"):
        RealEstate10kSource(tmp_path / "empty")


def test_camera_file_layout_errors_name_the_file(tmp_path):
    root = write("txt", tmp_path / "re10k")
    camera = root / "train" / "000002.txt"
    lines = [line.split() for line in camera.read_text().splitlines()]

    def edited(view: int, column: int, value: str) -> str:
        fields = [list(line) for line in lines]
        fields[1 + view][column] = value
        return "\n".join(" ".join(line) for line in fields)

    name = r".*train/000002\.txt"
    expect_errors(root, [
        (camera, None, rf"1 sequence folders in .*train have no camera file: {name}", None),
        (camera, " ".join(lines[0]), rf"camera file {name} lists no frames", (1, None)),
        (camera, edited(1, 18, ""), rf"camera file {name}, line 3: expected 19 numbers", (1, None)),
        (camera, edited(0, 3, "abc"), rf"camera file {name}, line 2: could not convert string to float: 'abc'", (1, None)),
        (camera, b"\xff\xfe\x00\x81", rf"cannot read camera file {name}", (1, None)),
        (camera, edited(2, 0, "1000000"), rf"camera file {name} lists timestamp 1000000 more than once", (1, None)),
        (camera, edited(1, 7, "2.0"), rf"camera file {name}: camera 1: the rotation is not rigid", (1, None)),
        (camera, edited(2, 10, "nan"), rf"camera file {name}: camera 2: c2w has NaN", (1, None)),
        (root / "train" / "000002" / "1033333.png", None,
         rf"frame .*000002/1033333\.png \(or \.jpg\) listed in {name} does not exist", (1, [0, 1])),
        (root / "train" / "000002" / "1066666.png", b"not a png", r"cannot read frame .*000002/1066666\.png", (1, [2])),
    ])
    source = RealEstate10kSource(root, "train", resolution=RES)
    for views in ([0, 3], [-1]):
        with pytest.raises(DatasetError, match=rf"camera file {name} has 3 frames, so views \[-?\d\] do not exist"):
            source.load(1, views)
    shutil.rmtree(root / "train" / "000002")  # a video that could not be downloaded: its camera file is ignored
    remaining = RealEstate10kSource(root)
    assert len(remaining) == 1 and remaining.scene_id(0) == "000001"


def test_chunk_layout_errors_name_the_file(tmp_path):
    root = write("torch", tmp_path / "re10k", scenes=5, test_fraction=0.2)  # train: 000000.torch and 000001.torch
    chunk, index = root / "train" / "000001.torch", root / "train" / "index.json"
    examples = torch.load(chunk, weights_only=True)  # sequences 000003 and 000004: source indices 2 and 3

    def edited(position: int, **changes) -> list[dict]:
        return [dict(example, **changes) if i == position else example for i, example in enumerate(examples)]

    def image_replaced(view: int, data: torch.Tensor) -> list[dict]:
        return edited(0, images=[data if i == view else x for i, x in enumerate(examples[0]["images"])])

    cameras = examples[0]["cameras"]
    not_rigid, with_nan = cameras.clone(), cameras.clone()
    not_rigid[1, 6] = 2.0
    with_nan[0, 9] = float("nan")
    jpeg = examples[0]["images"][2]
    name = r"chunk .*train/000001\.torch"
    expect_errors(root, [
        (chunk, chunk.read_bytes()[: chunk.stat().st_size // 2], rf"cannot read {name}", None),
        (chunk, {"not": "a list"}, rf"malformed {name}: expected a list of examples, got dict", None),
        (chunk, [{"key": "000003"}], rf"malformed {name}: example 0: expected a dict with key, timestamps", None),
        (chunk, edited(1, cameras=cameras[:, :17]),
         rf"malformed {name}: example 1: '000004': cameras must be \(N, 18\)", None),
        (chunk, edited(0, timestamps=examples[0]["timestamps"][:2]),
         rf"malformed {name}: example 0: '000003': timestamps must be \(3,\)", None),
        (chunk, edited(0, images=examples[0]["images"][:2]),
         rf"malformed {name}: example 0: '000003': images must be a list of 3", None),
        (chunk, edited(1, key="000001"),
         r"sequence '000001' is in both .*train/000000\.torch and .*train/000001\.torch", None),
        (chunk, None, rf"{name} listed in .*train/index\.json for sequence '000003' does not exist", None),
        (index, "{not json", r"cannot read index .*train/index\.json", None),
        (index, json.dumps({"000003": "000000.torch"}),
         r"index\.json puts sequence '000003' in .*000000\.torch, but it is in .*000001\.torch", None),
        (chunk, image_replaced(1, torch.tensor(list(b"not a jpeg"), dtype=torch.uint8)),
         rf"cannot decode frame 1 of {name}, sequence '000003'", (2, [0, 1])),
        (chunk, image_replaced(2, jpeg[: len(jpeg) // 2].clone()),
         rf"cannot decode frame 2 of {name}, sequence '000003'", (2, [2])),
        (chunk, edited(0, cameras=not_rigid), rf"{name}, sequence '000003': camera 1: the rotation is not rigid", (2, [0])),
        (chunk, edited(0, cameras=with_nan), rf"{name}, sequence '000003': camera 0: c2w has NaN", (2, [2])),
    ])
    with pytest.raises(DatasetError, match=rf"{name}, sequence '000003' has 3 frames, so views \[3\] do not exist"):
        RealEstate10kSource(root, "train", resolution=RES).load(2, [0, 3])
    index.unlink()  # optional
    assert len(RealEstate10kSource(root, "train", resolution=RES)) == 4


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_a_chunk_that_would_run_code_is_refused_unrun(tmp_path):
    root = write("torch", tmp_path / "re10k")
    chunk, marker = root / "train" / "000000.torch", tmp_path / "ran"
    for content in ([Payload(marker)], pickle.dumps([Payload(marker)], protocol=2)):  # torch.save's zip file; a bare pickle
        replace(chunk, content)
        with pytest.raises(DatasetError, match=r"chunk .*train/000000\.torch pickles objects other than tensors"):
            RealEstate10kSource(root, "train")
        assert not marker.exists()
    pickle.loads(chunk.read_bytes())  # the payload is real: unpickling it unchecked runs it
    assert marker.exists()
