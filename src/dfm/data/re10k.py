"""RealEstate10k (Zhou et al., "Stereo magnification", SIGGRAPH 2018) as a :class:`SceneSource`.

A scene is a *sequence* (a clip of a real-estate video) and its views are the sequence's frames in
timestamp order, so view distance is frame distance. The two layouts that users have are read, told
apart by what the split folder holds (``split`` is ``train`` or ``test``, as the dataset is distributed):

**Camera files** (the dataset as Google distributes it, beside frames that the user extracted)::

    ROOT/train/<sequence>.txt               line 1: the video URL; then one line per frame, 19 numbers:
                                            timestamp (int, microseconds since the video start),
                                            fx fy cx cy, 0 0, a row-major 3x4 world-to-camera matrix
    ROOT/train/<sequence>/<timestamp>.png   the frame at that timestamp (or .jpg), any size (16:9 as a rule)
    ROOT/test/...

A sequence is a frame folder, and its camera file must exist; camera files without a folder (videos
that could not be downloaded) are ignored. Download scripts that write frames to a tree of their own
(``dataset/train/<sequence>/<timestamp>.png``) leave the camera files elsewhere: copy them beside the
folders. Camera files are parsed when a sequence is used, not at construction.

**Chunks** (the preprocessing of pixelSplat, Charatan et al. 2024, which later work reuses)::

    ROOT/train/000000.torch   a list of dicts: key (the sequence), url, timestamps (N,) int,
                              cameras (N, 18) float (fx fy cx cy, 0 0, row-major 3x4 world-to-camera)
                              and images, N uint8 tensors each holding one frame's JPEG bytes
    ROOT/train/index.json     optional {key: chunk file name}; when present it must agree with the chunks
    ROOT/test/...

Chunks are read with ``torch.load(weights_only=True)`` only, so a chunk that pickles anything but
tensors, lists, dicts and strings is refused without running any of it. They are memory-mapped: construction
loads each chunk once to list its sequences without reading any JPEG bytes, and the last chunk loaded
stays cached for the next ``load``.

Conventions (google.github.io/realestate10k/download.html): intrinsics are normalised by the image size
with the top-left image corner at (0, 0) and the bottom-right one at (1, 1), which is exactly the
convention of :mod:`dfm.cameras`, so they hold for a frame at whatever size it was extracted; the loader
takes that size from the decoded image when it crops. ``K [R | t]`` maps world points to the image with
positive focal lengths and the image's y axis pointing down, so the camera frame is OpenCV's (x right,
y down, z forward) and ``c2w`` is the rigid inverse of ``[R | t]``. The poses come from SLAM and bundle
adjustment, so each clip's scale is arbitrary; the dataset's authors rescale every clip so that scene
depths are comparable across clips, which is why one near/far pair serves every sequence (the defaults
are the values DFM uses for RealEstate10k) and no further normalisation happens here.

:func:`write_re10k_txt` and :func:`write_re10k_torch` write the procedural scenes of
:mod:`dfm.data.synth3d` in these layouts, as 16:9 frames whose centred square crop is the native view.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from dfm.data.multiview import MultiViewScene, checked_cameras, square_crop_resize
from dfm.data.synth3d import SPLITS, Synth3D, Synth3DScene, render_wide
from dfm.data.vimeo import DatasetError, load_frame, split_sizes, to_pixels

CAMERA_COLUMNS = 18  # fx fy cx cy, two zeros, a row-major 3x4 world-to-camera matrix
FRAME_INTERVAL_US = 33_333  # between the frames that the writers make up, as at 30 frames per second


# --- cameras ----------------------------------------------------------------------------------


def opencv_cameras(rows: Tensor) -> tuple[Tensor, Tensor]:
    """``c2w`` ``(N, 4, 4)`` and normalised ``K`` ``(N, 3, 3)`` from RealEstate10k camera rows ``(N, 18)``,
    in their dtype: ``c2w`` is the rigid inverse of the world-to-camera matrix, so a matrix that is not
    a rotation stays one for :func:`checked_cameras` to report instead of being silently inverted."""
    n = rows.shape[0]
    K = torch.zeros(n, 3, 3, dtype=rows.dtype)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], 1
    w2c = rows[:, 6:].reshape(n, 3, 4)
    rotation = w2c[:, :, :3].transpose(1, 2)  # camera axes in world coordinates
    c2w = torch.eye(4, dtype=rows.dtype).repeat(n, 1, 1)
    c2w[:, :3, :3] = rotation
    c2w[:, :3, 3] = -(rotation @ w2c[:, :, 3:])[..., 0]  # the camera centre
    return c2w, K


def camera_rows(c2w: Tensor, K: Tensor) -> Tensor:
    """The inverse of :func:`opencv_cameras`: RealEstate10k rows ``(N, 18)`` float64."""
    c2w, K = c2w.double(), K.double()
    rotation = c2w[:, :3, :3].transpose(1, 2)
    w2c = torch.cat([rotation, -(rotation @ c2w[:, :3, 3:])], -1)
    intrinsics = torch.stack([K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]], -1)
    return torch.cat([intrinsics, torch.zeros(len(K), 2, dtype=K.dtype), w2c.flatten(1)], -1)


# --- the two layouts --------------------------------------------------------------------------


@dataclass
class _Sequence:
    """One sequence in timestamp order, whichever layout it came from."""

    source: str  # the file to name in errors, with the sequence where the file holds several
    cameras: Tensor  # (N, 18) float64 camera rows
    frame: Callable[[int], Tensor]  # view index -> (3, H, W) float32 in [-1, 1], decoded on demand


def _read_camera_file(path: Path) -> tuple[Tensor, Tensor]:
    """``(timestamps (N,) int64, camera rows (N, 18) float64)`` of a ``<sequence>.txt``, sorted by timestamp."""
    if not path.is_file():
        raise DatasetError(f"camera file {path} does not exist")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read camera file {path}: {error}") from error
    timestamps, rows = [], []
    for number, line in enumerate(lines[1:], start=2):  # line 1 is the video URL
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 1 + CAMERA_COLUMNS:
            raise DatasetError(
                f"camera file {path}, line {number}: expected {1 + CAMERA_COLUMNS} numbers (timestamp, fx fy cx cy, "
                f"0 0, a 3x4 world-to-camera matrix), got {len(fields)}"
            )
        try:
            timestamps.append(int(fields[0]))
            rows.append([float(x) for x in fields[1:]])
        except ValueError as error:
            raise DatasetError(f"camera file {path}, line {number}: {error}") from error
    if not rows:
        raise DatasetError(f"camera file {path} lists no frames")
    timestamps, rows = torch.tensor(timestamps), torch.tensor(rows, dtype=torch.float64)
    timestamps, order = timestamps.sort(stable=True)
    repeated = timestamps[1:][timestamps[1:] == timestamps[:-1]]
    if len(repeated):  # frames are files named by their timestamp
        raise DatasetError(f"camera file {path} lists timestamp {int(repeated[0])} more than once")
    return timestamps, rows[order]


class _CameraFiles:
    """``<sequence>.txt`` camera files beside ``<sequence>/<timestamp>.png`` frame folders."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.keys = sorted(d.name for d in directory.iterdir() if d.is_dir())
        if not self.keys:
            raise DatasetError(f"split folder {directory} holds no .torch chunks and no sequence folders")
        missing = [self._camera_file(key) for key in self.keys if not self._camera_file(key).is_file()]
        if missing:
            listed = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise DatasetError(f"{len(missing)} sequence folders in {directory} have no camera file: {listed}")
        self._cached: tuple[str, tuple[Tensor, Tensor]] | None = None

    def _camera_file(self, key: str) -> Path:
        return self.directory / f"{key}.txt"

    def _cameras(self, key: str) -> tuple[Tensor, Tensor]:
        if self._cached is None or self._cached[0] != key:  # num_views then load read the same file
            self._cached = key, _read_camera_file(self._camera_file(key))
        return self._cached[1]

    def num_views(self, index: int) -> int:
        return len(self._cameras(self.keys[index])[0])

    def sequence(self, index: int) -> _Sequence:
        key = self.keys[index]
        timestamps, rows = self._cameras(key)
        camera_file = self._camera_file(key)

        def frame(view: int) -> Tensor:
            stem = self.directory / key / str(int(timestamps[view]))
            for path in (stem.with_suffix(".png"), stem.with_suffix(".jpg")):
                if path.is_file():
                    return load_frame(path)
            raise DatasetError(f"frame {stem}.png (or .jpg) listed in {camera_file} does not exist")

        return _Sequence(f"camera file {camera_file}", rows, frame)


def _load_chunk(path: Path) -> list[dict]:
    """A chunk's examples, memory-mapped (zip files, as ``torch.save`` writes) so no JPEG bytes are read yet."""
    try:
        chunk = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        raise DatasetError(  # not torch's message, which suggests weights_only=False
            f"chunk {path} pickles objects other than tensors, lists, dicts and strings, so it was refused "
            f"without running any of it (unpickling it in full could run arbitrary code)"
        ) from error
    except Exception as error:  # truncated or foreign files raise a variety of errors
        raise DatasetError(f"cannot read chunk {path}: {str(error).splitlines()[0]}") from error
    if not isinstance(chunk, list):
        raise DatasetError(f"malformed chunk {path}: expected a list of examples, got {type(chunk).__name__}")
    for position, example in enumerate(chunk):
        problem = _example_problem(example)
        if problem:
            raise DatasetError(f"malformed chunk {path}: example {position}: {problem}")
    return chunk


def _example_problem(example: object) -> str | None:
    """What is wrong with one chunk example, from tensor metadata only (nothing is decoded)."""
    if not isinstance(example, dict) or not {"key", "timestamps", "cameras", "images"} <= example.keys():
        return "expected a dict with key, timestamps, cameras and images"
    key, timestamps, cameras, images = (example[k] for k in ("key", "timestamps", "cameras", "images"))
    if not isinstance(key, str):
        return f"key must be a string, got {type(key).__name__}"
    if not isinstance(cameras, Tensor) or cameras.ndim != 2 or cameras.shape[1] != CAMERA_COLUMNS or len(cameras) == 0:
        shape = tuple(cameras.shape) if isinstance(cameras, Tensor) else type(cameras).__name__
        return f"{key!r}: cameras must be (N, {CAMERA_COLUMNS}) with N >= 1, got {shape}"
    n = len(cameras)
    if not isinstance(timestamps, Tensor) or tuple(timestamps.shape) != (n,):
        shape = tuple(timestamps.shape) if isinstance(timestamps, Tensor) else type(timestamps).__name__
        return f"{key!r}: timestamps must be ({n},) like the cameras, got {shape}"
    if not isinstance(images, (list, tuple)) or len(images) != n:
        got = f"{len(images)} of them" if isinstance(images, (list, tuple)) else type(images).__name__
        return f"{key!r}: images must be a list of {n} tensors of JPEG bytes, like the cameras, got {got}"
    if not all(isinstance(x, Tensor) and x.dtype == torch.uint8 and x.ndim == 1 for x in images):
        return f"{key!r}: every image must be a 1-D uint8 tensor of JPEG bytes"
    return None


def _decode_jpeg(data: Tensor, what: str) -> Tensor:
    """JPEG bytes ``(B,)`` uint8 as float32 ``(3, H, W)`` in ``[-1, 1]``."""
    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
            pixels = np.array(image.convert("RGB"))
    except Exception as error:  # corrupt or truncated bytes raise a variety of decoder errors
        raise DatasetError(f"cannot decode {what}: {error}") from error
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1


class _Chunks:
    """pixelSplat's ``*.torch`` chunks; sequences are listed in chunk order, then in order within a chunk."""

    def __init__(self, directory: Path, chunks: list[Path]):
        self.keys: list[str] = []
        self._where: list[tuple[Path, int, int]] = []  # per sequence: (chunk, position in it, number of frames)
        found: dict[str, Path] = {}
        for path in chunks:
            self._cached = path, _load_chunk(path)
            for position, example in enumerate(self._cached[1]):
                key = example["key"]
                if key in found:
                    raise DatasetError(f"sequence {key!r} is in both {found[key]} and {path}")
                found[key] = path
                self.keys.append(key)
                self._where.append((path, position, len(example["cameras"])))
        if not self.keys:
            raise DatasetError(f"the chunks in {directory} hold no sequences")
        self._check_index(directory / "index.json", found)

    @staticmethod
    def _check_index(path: Path, found: dict[str, Path]) -> None:
        if not path.is_file():
            return
        try:
            index = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DatasetError(f"cannot read index {path}: {error}") from error
        if not isinstance(index, dict) or not all(isinstance(v, str) for v in index.values()):
            raise DatasetError(f"malformed index {path}: expected {{sequence key: chunk file name}}")
        for key, name in index.items():
            chunk = path.parent / name
            if not chunk.is_file():
                raise DatasetError(f"chunk {chunk} listed in {path} for sequence {key!r} does not exist")
            if found.get(key) != chunk:
                where = f"in {found[key]}" if key in found else "in no chunk"
                raise DatasetError(f"{path} puts sequence {key!r} in {chunk}, but it is {where}")

    def num_views(self, index: int) -> int:
        return self._where[index][2]

    def sequence(self, index: int) -> _Sequence:
        path, position, _ = self._where[index]
        if self._cached[0] != path:
            self._cached = path, _load_chunk(path)
        example = self._cached[1][position]
        order = example["timestamps"].argsort(stable=True)
        source = f"chunk {path}, sequence {example['key']!r}"

        def frame(view: int) -> Tensor:
            return _decode_jpeg(example["images"][int(order[view])], f"frame {view} of {source}")

        return _Sequence(source, example["cameras"][order].double(), frame)


# --- the source -------------------------------------------------------------------------------


class RealEstate10kSource:
    """The sequences of one split in either layout of the module docstring, as square views of side
    ``resolution`` (the centred square of each frame, resized), with the intrinsics that follow.
    Construction checks the root, the split folder and the listing (for chunks, each chunk's structure);
    a sequence's cameras and frames are checked when it is loaded."""

    def __init__(
        self, root: str | Path, split: str = "train", resolution: int = 64, near: float = 0.7, far: float = 10.0
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if resolution < 1 or not 0 < near < far:
            raise ValueError(f"need resolution >= 1 and 0 < near < far, got {resolution}, {near}, {far}")
        self.root, self.resolution, self.near, self.far = Path(root), resolution, near, far
        if not self.root.is_dir():
            raise DatasetError(f"RealEstate10k root {self.root} does not exist or is not a directory")
        directory = self.root / split
        if not directory.is_dir():
            raise DatasetError(f"split folder {directory} does not exist")
        chunks = sorted(directory.glob("*.torch"))
        self.layout = "chunks" if chunks else "camera files"
        self._sequences = _Chunks(directory, chunks) if chunks else _CameraFiles(directory)
        self.directory = directory

    def __repr__(self) -> str:
        return f"RealEstate10k {self.directory} ({self.layout})"

    def __len__(self) -> int:
        return len(self._sequences.keys)

    def scene_id(self, index: int) -> str:
        return self._sequences.keys[index]

    def num_views(self, index: int) -> int:
        return self._sequences.num_views(index)

    def load(self, index: int, views: Sequence[int] | None = None) -> MultiViewScene:
        """Views ``views`` (frame indices in timestamp order; default all) of sequence ``index``; only
        those frames are decoded."""
        sequence = self._sequences.sequence(index)
        n = len(sequence.cameras)
        views = list(range(n)) if views is None else [int(v) for v in views]
        outside = [v for v in views if not 0 <= v < n]
        if outside:
            raise DatasetError(f"{sequence.source} has {n} frames, so views {outside} do not exist")
        c2w, K = opencv_cameras(sequence.cameras)
        checked_cameras(c2w, K, sequence.source)  # every frame, so "camera i" is frame i
        images, intrinsics = [], []
        for view in views:  # one at a time: K is normalised, so frames of a sequence may differ in size
            image, k, _, _ = square_crop_resize(sequence.frame(view)[None], K[view : view + 1], self.resolution)
            images.append(image[0])
            intrinsics.append(k[0])
        return MultiViewScene(
            scene_id=self.scene_id(index), images=torch.stack(images), c2w=c2w[views].float(),
            K=torch.stack(intrinsics).float(), near=self.near, far=self.far,
        )


# --- writing the procedural scenes in these layouts ------------------------------------------


def frame_width(height: int) -> int:
    """The 16:9 width of a ``height``-row frame, made to differ from ``height`` by an even number so the
    centred square crop starts at a whole pixel on both sides."""
    width = round(16 * height / 9)
    return width + (width - height) % 2


def _frames(generator: Synth3D, scene: Synth3DScene) -> tuple[Tensor, np.ndarray]:
    """The scene's views as RealEstate10k camera rows ``(V, 18)`` float64 and 16:9 frames ``(V, H, W, 3)``
    uint8, from the same cameras with the same focal length in pixels and the principal point moved by the
    crop offset, so that the centred square crop of each frame is the native view pixel for pixel."""
    K, views = render_wide(scene, frame_width(generator.resolution))
    return camera_rows(scene.c2w, K), to_pixels(views.images)


def _scenes(
    generator: Synth3D, scenes: int, seed: int, test_fraction: float, progress: bool
) -> Iterator[tuple[str, str, Tensor, np.ndarray]]:
    """``(split, scene id, camera rows, frames)`` of each scene, drawn, named and split exactly as
    :func:`dfm.data.synth3d.write_dataset` does, so the same seed gives the same scenes."""
    n_train, _ = split_sizes(scenes, test_fraction, "scenes")
    rng = np.random.default_rng(seed)
    for i in tqdm(range(scenes), desc="scenes", disable=not progress):
        rows, pixels = _frames(generator, generator.scene(rng))
        yield SPLITS[i >= n_train], f"{i + 1:06d}", rows, pixels


def _timestamps(n: int) -> list[int]:
    return [1_000_000 + FRAME_INTERVAL_US * k for k in range(n)]


def _url(scene_id: str) -> str:
    return f"https://www.youtube.com/watch?v=synth3d-{scene_id}"  # made up: the frames are rendered


def write_re10k_txt(
    out: str | Path, generator: Synth3D, scenes: int, seed: int = 0, test_fraction: float = 0.1, progress: bool = True
) -> Path:
    """Write ``scenes`` procedural scenes under ``out`` in the camera-file layout, with PNG frames."""
    out = Path(out)
    for split, scene_id, rows, pixels in _scenes(generator, scenes, seed, test_fraction, progress):
        (out / split / scene_id).mkdir(parents=True, exist_ok=True)
        timestamps = _timestamps(len(rows))
        lines = [_url(scene_id)] + [" ".join([str(t), *map(repr, row)]) for t, row in zip(timestamps, rows.tolist())]
        (out / split / f"{scene_id}.txt").write_text("\n".join(lines) + "\n")
        for timestamp, image in zip(timestamps, pixels):
            iio.imwrite(out / split / scene_id / f"{timestamp}.png", image)
    return out


def _jpeg(image: np.ndarray) -> Tensor:
    """``(H, W, 3)`` uint8 as a uint8 tensor of JPEG bytes (quality 95, no chroma subsampling)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95, subsampling=0)
    return torch.from_numpy(np.frombuffer(buffer.getvalue(), dtype=np.uint8).copy())


def write_re10k_torch(
    out: str | Path, generator: Synth3D, scenes: int, seed: int = 0, test_fraction: float = 0.1,
    scenes_per_chunk: int = 2, progress: bool = True,
) -> Path:
    """Write ``scenes`` procedural scenes under ``out`` in the chunk layout, ``scenes_per_chunk`` to a
    chunk, with JPEG frames and an ``index.json`` per split."""
    if scenes_per_chunk < 1:
        raise ValueError(f"scenes_per_chunk must be positive, got {scenes_per_chunk}")
    out = Path(out)
    examples: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for split, scene_id, rows, pixels in _scenes(generator, scenes, seed, test_fraction, progress):
        examples[split].append({
            "key": scene_id, "url": _url(scene_id), "timestamps": torch.tensor(_timestamps(len(rows))),
            "cameras": rows.float(), "images": [_jpeg(image) for image in pixels],
        })
    for split, items in examples.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        index = {}
        for number, start in enumerate(range(0, len(items), scenes_per_chunk)):
            name, chunk = f"{number:06d}.torch", items[start : start + scenes_per_chunk]
            torch.save(chunk, out / split / name)
            index.update({example["key"]: name for example in chunk})
        (out / split / "index.json").write_text(json.dumps(index, indent=2))
    return out
