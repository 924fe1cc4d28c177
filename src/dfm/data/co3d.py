"""Co3D v2 (Reizenstein et al., "Common Objects in 3D", ICCV 2021) as a multi-view scene source.

One category folder as distributed; every path inside the annotations is relative to ROOT, the
folder that holds the category folders::

    ROOT/<category>/frame_annotations.jgz     gzipped JSON list, one entry a frame: sequence_name,
                                              frame_number, frame_timestamp, image {path, size [H, W]},
                                              depth {path, scale_adjustment, mask_path}, mask {path, mass},
                                              viewpoint {R, T, focal_length, principal_point, intrinsics_format}
    ROOT/<category>/sequence_annotations.jgz  one entry a sequence: sequence_name, category, video,
                                              point_cloud {path, quality_score, n_points}, viewpoint_quality_score
    ROOT/<category>/set_lists/set_lists_<subset>.json
                                              {"train" | "val" | "test": [[sequence_name, frame_number, image_path], ...]}
    ROOT/<category>/<sequence>/images/*.jpg, masks/*.png, depths/*.png, depth_masks/*.png

The encodings (those of co3d's ``co3d/dataset/data_types.py`` and PyTorch3D's implicitron loader):
cameras are PyTorch3D ``PerspectiveCameras``, world-to-view ``X_view = X_world @ R + T`` for row
vectors with view axes +x left, +y up, +z forward, converted exactly to OpenCV camera-to-world.
``focal_length`` and ``principal_point`` are in NDC, in one of two formats: ``ndc_isotropic``
(PyTorch3D >= 0.5: the shorter image side spans [-1, 1], the longer [-s, s], one scale for both
axes) or ``ndc_norm_image_bounds`` (legacy, and the dataclass default: each side spans [-1, 1] on
its own, so x and y scales differ; multiplying by ``(W, H) / min(W, H)`` makes it isotropic); NDC
runs between the outer pixel edges. Depth PNGs are 16-bit and hold the bits of float16 values:
z-depth is ``value * scale_adjustment``, in the cameras' units, 0 where unknown, and the binary
depth mask marks the valid pixels. Masks are 8-bit ``P(foreground) * 255``. Images are JPEG (any
format Pillow reads is accepted).

A scene is a sequence with frames in one split of one subset; its views are those frames in
frame-number order, so view distance is frame distance. Images, masks (the object, for evaluation)
and depths are read only for the views asked for and brought to a square ``resolution`` by
:func:`dfm.data.multiview.square_crop_resize` (a centred crop, then a resize, as the paper does
following Chan et al. 2023).

**Normalisation.** Each Co3D sequence is its own SfM reconstruction, whose world frame (origin,
orientation and above all scale) is arbitrary and differs from sequence to sequence, so no single
near/far could bound every scene. By default each sequence is therefore moved, from its cameras
alone, into a common frame: the origin is the point closest in least squares to all optical axes
(the object the capture circles), the cameras' mean up vector (-y of OpenCV cameras; phones are held
roughly upright) is turned onto world +z by the smallest rotation, and the scale makes the mean
camera distance to the origin :data:`CAMERA_DISTANCE`. Depths scale with the world. The frame comes
from all of the sequence's annotated frames, whatever the subset, split or views asked for, so a
sequence's frame never changes; it costs a 3x3 least-squares solve per sequence, kept in memory (no files).
RealEstate10k needs none of this: its published trajectories were already scale-normalised by the
dataset's authors, each clip's SLAM reconstruction scaled by a percentile of its point-cloud depths
(Zhou et al., "Stereo Magnification", SIGGRAPH 2018), so scene depths are on a comparable (not
metric) scale in every clip and one near/far fits them all; nor are its scenes centred on an object.

**Quality.** ``min_quality`` keeps the sequences whose ``viewpoint_quality_score`` (how well the
cameras were tracked; bigger is better) is at least it, and ``min_point_cloud_quality`` those whose
``point_cloud.quality_score`` is; a score that is absent passes, a NaN score fails.

:func:`write_co3d` writes the procedural :mod:`dfm.data.synth3d` scenes in this layout, to test the
loader against scenes whose geometry is known exactly.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from dfm.cameras import (
    intrinsics_from_pytorch3d_ndc, intrinsics_to_pytorch3d_ndc, matrix_from_quaternion, opencv_to_pytorch3d,
    pytorch3d_to_opencv,
)
from dfm.data.multiview import MultiViewScene, checked_cameras, square_crop_resize
from dfm.data.synth3d import Synth3D, render_wide
from dfm.data.vimeo import DatasetError, load_frame, split_sizes, to_pixels

SPLITS = ("train", "val", "test")
INTRINSICS_FORMATS = ("ndc_isotropic", "ndc_norm_image_bounds")
CAMERA_DISTANCE = 1.0  # the mean camera distance to the look-at point after normalisation
FIXTURE_SUBSET = "fewview_train"  # the subset write_co3d writes: its train/test lists are the train/test scenes


# --- cameras ------------------------------------------------------------------------------------


def _isotropic_scale(intrinsics_format: str, width: int, height: int) -> Tensor:
    """What multiplies ``focal_length`` and ``principal_point`` ``(2,)`` to make them ``ndc_isotropic``."""
    if intrinsics_format == "ndc_isotropic":
        return torch.ones(2, dtype=torch.float64)
    if intrinsics_format == "ndc_norm_image_bounds":
        return torch.tensor([width, height], dtype=torch.float64) / min(width, height)
    raise ValueError(f"unknown intrinsics_format {intrinsics_format!r}; expected one of {INTRINSICS_FORMATS}")


def viewpoint_to_opencv(viewpoint: dict, width: int, height: int) -> tuple[Tensor, Tensor]:
    """OpenCV ``c2w`` ``(4, 4)`` and normalised ``K`` ``(3, 3)``, float64, of a Co3D ``viewpoint``
    annotation of a ``width x height`` image (ValueError for an unknown intrinsics format)."""
    scale = _isotropic_scale(viewpoint.get("intrinsics_format", "ndc_norm_image_bounds"), width, height)
    focal, principal = (torch.tensor(viewpoint[k], dtype=torch.float64) * scale for k in ("focal_length", "principal_point"))
    R, T = torch.tensor(viewpoint["R"], dtype=torch.float64), torch.tensor(viewpoint["T"], dtype=torch.float64)
    if R.shape != (3, 3) or T.shape != (3,) or focal.shape != (2,) or principal.shape != (2,):
        raise ValueError(f"R, T, focal_length, principal_point must be 3x3, 3, 2, 2 numbers, got {viewpoint}")
    return pytorch3d_to_opencv(R, T), intrinsics_from_pytorch3d_ndc(focal, principal, width, height)


def opencv_to_viewpoint(c2w: Tensor, K: Tensor, width: int, height: int, intrinsics_format: str = "ndc_isotropic") -> dict:
    """The inverse of :func:`viewpoint_to_opencv`: a JSON-ready Co3D ``viewpoint`` of one camera."""
    scale = _isotropic_scale(intrinsics_format, width, height)
    R, T = opencv_to_pytorch3d(c2w.double())
    focal, principal = intrinsics_to_pytorch3d_ndc(K.double(), width, height)
    return {
        "R": R.tolist(), "T": T.tolist(), "focal_length": (focal / scale).tolist(),
        "principal_point": (principal / scale).tolist(), "intrinsics_format": intrinsics_format,
    }


def _rotation_onto_z(u: Tensor) -> Tensor:
    """The smallest rotation ``(3, 3)`` taking the unit vector ``u`` ``(3,)`` to +z (Rodrigues)."""
    c = float(u[2])
    if 1 + c < 1e-9:  # u = -z: any half turn about a horizontal axis
        return torch.diag(u.new_tensor([1.0, -1.0, -1.0]))
    v = torch.linalg.cross(u, u.new_tensor([0.0, 0.0, 1.0]))
    vx = u.new_tensor([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return torch.eye(3, dtype=u.dtype, device=u.device) + vx + vx @ vx / (1 + c)


def normalisation(c2w: Tensor, distance: float = CAMERA_DISTANCE) -> tuple[Tensor, float]:
    """The similarity that moves the cameras ``c2w`` ``(N, 4, 4)`` of one scene into the common frame of
    the module docstring: a rigid world transform ``G`` ``(4, 4)`` and a scale ``s``, the new world
    being ``s * G @ world`` (see :func:`apply_normalisation`). ValueError when the optical axes are
    (nearly) parallel, so no point lies near all of them, or the up vectors cancel."""
    c2w = c2w.double()
    centres, axes = c2w[:, :3, 3], c2w[:, :3, 2]  # (N, 3) each; the axes are unit vectors
    # sum_i |(I - a_i a_i^T)(p - c_i)|^2 is least at A p = b, A = sum_i (I - a_i a_i^T), b = sum_i (I - a_i a_i^T) c_i
    off_axis = torch.eye(3, dtype=c2w.dtype, device=c2w.device) - axes[:, :, None] * axes[:, None, :]  # (N, 3, 3)
    A, b = off_axis.sum(0), (off_axis @ centres[..., None]).sum(0)[:, 0]
    if torch.linalg.eigvalsh(A)[0] < 1e-6 * len(c2w):
        raise ValueError(f"the optical axes of its {len(c2w)} cameras are (nearly) parallel, so no point is looked at")
    point = torch.linalg.solve(A, b)
    up = -c2w[:, :3, 1].mean(0)
    if up.norm() < 1e-6:
        raise ValueError("its cameras' up vectors cancel, so the world has no mean up")
    mean_distance = float((centres - point).norm(dim=-1).mean())
    if not mean_distance > 0:
        raise ValueError("its cameras all sit at the point they look at")
    rotation = _rotation_onto_z(up / up.norm())
    G = torch.eye(4, dtype=c2w.dtype, device=c2w.device)
    G[:3, :3], G[:3, 3] = rotation, -rotation @ point
    return G, distance / mean_distance


def apply_normalisation(c2w: Tensor, G: Tensor, scale: float) -> Tensor:
    """Cameras ``c2w`` ``(..., 4, 4)`` in the world ``scale * G @ world`` (from :func:`normalisation`)."""
    c2w = G.to(c2w) @ c2w
    c2w[..., :3, 3] *= scale
    return c2w


# --- files ------------------------------------------------------------------------------------


def _read_jgz(path: Path, what: str) -> list:
    if not path.is_file():
        raise DatasetError(f"{what} file {path} does not exist")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, EOFError, ValueError) as error:  # not gzip, truncated, not UTF-8 or not JSON
        raise DatasetError(f"cannot read {what} file {path}: {error}") from error
    if not isinstance(data, list):
        raise DatasetError(f"malformed {what} file {path}: expected a JSON list, got {type(data).__name__}")
    return data


def _write_jgz(path: Path, data: list) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(data, f)


def _read_mask(path: Path, size: tuple[int, int], what: str, threshold: float) -> Tensor:
    """An 8-bit mask as ``(1, H, W)`` bool, ``grey / 255 > threshold``, checked to be ``size`` (H, W)."""
    if not path.is_file():
        raise DatasetError(f"{what} {path} does not exist")
    try:
        mask = iio.imread(path, plugin="pillow", mode="L")
    except Exception as error:  # corrupt files raise a variety of decoder errors
        raise DatasetError(f"cannot read {what} {path}: {error}") from error
    if mask.shape != size:
        raise DatasetError(f"{what} {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {size[1]}x{size[0]} (WxH)")
    return torch.from_numpy(mask.astype(np.float32) / 255 > threshold)[None]


def _read_depth(path: Path, scale_adjustment: float) -> Tensor:
    """A Co3D depth PNG (16-bit, the bits of float16 values) as z-depth ``(1, H, W)``, 0 where not finite."""
    if not path.is_file():
        raise DatasetError(f"depth map {path} does not exist")
    try:
        bits = iio.imread(path, plugin="pillow")
    except Exception as error:  # corrupt files raise a variety of decoder errors
        raise DatasetError(f"cannot read depth map {path}: {error}") from error
    if bits.ndim != 2 or bits.dtype not in (np.uint16, np.int32):  # Pillow gives I;16 as uint16, older ones as int32
        raise DatasetError(f"depth map {path} is {bits.dtype} {bits.shape}, not a single-channel 16-bit PNG")
    depth = torch.from_numpy(bits.astype(np.uint16).view(np.float16).astype(np.float32)) * scale_adjustment
    return torch.where(depth.isfinite() & (depth > 0), depth, 0)[None]


class Co3DSource:
    """The sequences of one category, subset and split of Co3D v2 as a scene source
    (:class:`dfm.data.multiview.SceneSource`); see the module docstring for the layout, the views,
    the normalisation (``normalise``) and the quality filters. ``near``/``far`` bound every scene in
    the normalised frame (the defaults fit :data:`CAMERA_DISTANCE` = 1: the object within about half
    a unit of the origin, background a few units out); with ``normalise=False`` they must fit the raw
    SfM units. ``masks``/``depths`` choose whether :meth:`load` reads them.

    Construction reads the annotations and the set list and checks what is cheap (the category,
    subset, split and the intrinsics formats); a frame's files and a sequence's cameras are checked
    when it is loaded. Every problem raises one :class:`DatasetError` naming the file at fault."""

    def __init__(
        self, root: str | Path, category: str, subset: str = FIXTURE_SUBSET, split: str = "train",
        resolution: int = 64, near: float = 0.2, far: float = 4.0, min_quality: float | None = None,
        min_point_cloud_quality: float | None = None, masks: bool = True, depths: bool = True, normalise: bool = True,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if resolution < 1 or not 0 <= near < far:
            raise ValueError(f"need resolution >= 1 and 0 <= near < far, got {resolution}, {near}, {far}")
        self.root, self.split, self.resolution, self.near, self.far = Path(root), split, resolution, near, far
        self.masks, self.depths, self.normalise = masks, depths, normalise
        if not self.root.is_dir():
            raise DatasetError(f"Co3D root {self.root} does not exist or is not a directory")
        folder = self.root / category
        if not folder.is_dir():
            present = sorted(p.name for p in self.root.iterdir() if (p / "frame_annotations.jgz").is_file())
            raise DatasetError(f"unknown category {category!r}: {self.root} holds the categories {present}")
        lists = folder / "set_lists"
        self.set_list = lists / f"set_lists_{subset}.json"
        if not self.set_list.is_file():
            present = sorted(p.name for p in lists.glob("set_lists_*.json")) if lists.is_dir() else []
            raise DatasetError(f"unknown subset {subset!r}: {self.set_list} does not exist; {lists} holds {present}")
        self.frame_file = folder / "frame_annotations.jgz"
        listed = self._read_set_list()
        self._frames, self._views = self._index_frames(listed)
        self.sequences = self._filter(folder / "sequence_annotations.jgz", sorted(listed), min_quality, min_point_cloud_quality)
        self._camera_cache: dict[str, tuple[Tensor, Tensor, float]] = {}

    def _read_set_list(self) -> dict[str, set[int]]:
        """The frame numbers of each sequence in this split of the set list."""
        try:
            entries = json.loads(self.set_list.read_text())[self.split]
            listed: dict[str, set[int]] = {}
            for entry in entries:
                listed.setdefault(str(entry[0]), set()).add(int(entry[1]))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DatasetError(f"cannot read set list {self.set_list}: {error}") from error
        except (KeyError, IndexError, TypeError, ValueError) as error:  # no such split, or malformed entries
            raise DatasetError(
                f"malformed set list {self.set_list}: no {self.split!r} list of [sequence, frame, path] ({error!r})"
            ) from error
        if not listed:
            raise DatasetError(f"set list {self.set_list} lists no frames in its {self.split!r} list")
        return listed

    def _index_frames(self, listed: dict[str, set[int]]) -> tuple[dict[str, list[dict]], dict[str, list[int]]]:
        """Every annotated frame of the listed sequences, in frame-number order, and the positions of the
        listed ones among them (the views); checks that the listed frames and their intrinsics formats exist."""
        frames: dict[str, list[dict]] = {name: [] for name in listed}
        try:
            for entry in _read_jgz(self.frame_file, "frame annotations"):
                if entry["sequence_name"] in frames:
                    frames[entry["sequence_name"]].append(entry)
            for entries in frames.values():
                entries.sort(key=lambda entry: int(entry["frame_number"]))
            views = {
                name: [i for i, entry in enumerate(frames[name]) if int(entry["frame_number"]) in numbers]
                for name, numbers in listed.items()
            }
        except (KeyError, TypeError, ValueError) as error:
            raise DatasetError(f"malformed frame annotations file {self.frame_file}: {error!r}") from error
        for name, numbers in listed.items():
            if len(views[name]) != len(numbers):
                missing = sorted(numbers - {int(frames[name][i]["frame_number"]) for i in views[name]})
                raise DatasetError(
                    f"set list {self.set_list} lists frames {missing[:5]} of sequence {name!r} "
                    f"that {self.frame_file} does not annotate"
                )
            for entry in frames[name]:
                viewpoint = entry.get("viewpoint")
                fmt = viewpoint.get("intrinsics_format", "ndc_norm_image_bounds") if isinstance(viewpoint, dict) else None
                if fmt not in INTRINSICS_FORMATS:
                    raise DatasetError(
                        f"{self.frame_file}: frame {entry['frame_number']} of sequence {name!r} has "
                        + (f"intrinsics_format {fmt!r}; expected one of {INTRINSICS_FORMATS}" if viewpoint else "no viewpoint")
                    )
        return frames, views

    def _filter(
        self, path: Path, names: list[str], min_quality: float | None, min_point_cloud_quality: float | None
    ) -> list[str]:
        """The sequences among ``names`` that pass the quality filters of the module docstring."""
        annotations = {}
        try:
            for entry in _read_jgz(path, "sequence annotations"):
                annotations[entry["sequence_name"]] = entry
        except (KeyError, TypeError) as error:
            raise DatasetError(f"malformed sequence annotations file {path}: {error!r}") from error
        missing = [name for name in names if name not in annotations]
        if missing:
            raise DatasetError(f"sequence annotations file {path} lacks the sequences {missing[:5]} that {self.set_list} lists")

        def passes(score, threshold: float | None) -> bool:
            return threshold is None or score is None or float(score) >= threshold  # NaN fails

        kept = [
            name for name in names
            if passes(annotations[name].get("viewpoint_quality_score"), min_quality)
            and passes((annotations[name].get("point_cloud") or {}).get("quality_score"), min_point_cloud_quality)
        ]
        if not kept:
            raise DatasetError(
                f"no sequence of the {self.split!r} list of {self.set_list} passes min_quality={min_quality}, "
                f"min_point_cloud_quality={min_point_cloud_quality} (scores in {path})"
            )
        return kept

    def __repr__(self) -> str:
        return f"Co3D {self.set_list} ({self.split})"

    def __len__(self) -> int:
        return len(self.sequences)

    def scene_id(self, index: int) -> str:
        return self.sequences[index]

    def num_views(self, index: int) -> int:
        return len(self._views[self.sequences[index]])

    def _cameras(self, name: str) -> tuple[Tensor, Tensor, float]:
        """``c2w`` ``(N, 4, 4)`` (in the normalised world with ``normalise``) and normalised ``K`` ``(N, 3, 3)``,
        float64, of every annotated frame of a sequence, checked, and the world's scale. Kept per sequence:
        every training example of a sequence would otherwise convert and normalise all its frames again."""
        if name not in self._camera_cache:
            self._camera_cache[name] = self._read_cameras(name)
        return self._camera_cache[name]

    def _read_cameras(self, name: str) -> tuple[Tensor, Tensor, float]:
        try:
            cameras = [
                viewpoint_to_opencv(entry["viewpoint"], int(entry["image"]["size"][1]), int(entry["image"]["size"][0]))
                for entry in self._frames[name]
            ]
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise DatasetError(f"malformed camera of sequence {name!r} in {self.frame_file}: {error!r}") from error
        c2w, K = (torch.stack(x) for x in zip(*cameras))
        checked_cameras(c2w, K, f"{self.frame_file}, sequence {name!r} (cameras in frame-number order)")
        if not self.normalise:
            return c2w, K, 1.0
        try:
            G, scale = normalisation(c2w)
        except ValueError as error:
            raise DatasetError(f"{self.frame_file}: cannot normalise sequence {name!r}: {error}") from error
        return apply_normalisation(c2w, G, scale), K, scale

    def load(self, index: int, views: Sequence[int] | None = None) -> MultiViewScene:
        """Views ``views`` (positions in the sequence's frame-number order; default all) of sequence ``index``."""
        name = self.sequences[index]
        positions = self._views[name]
        views = range(len(positions)) if views is None else list(views)
        outside = [v for v in views if not 0 <= v < len(positions)]
        if outside:
            raise DatasetError(
                f"sequence {name!r} has {len(positions)} frames in the {self.split!r} list of {self.set_list}; "
                f"views {outside} do not exist"
            )
        c2w_all, K_all, scale = self._cameras(name)
        pick = [positions[v] for v in views]
        # per frame, since frames may differ in size; then (V, ...) each
        images, K, masks, depths = zip(*(self._read_frame(self._frames[name][i], name, K_all[i], scale) for i in pick))
        return MultiViewScene(
            name, torch.cat(images), c2w_all[pick].float(), torch.cat(K).float(), self.near, self.far,
            masks=torch.cat(masks) if self.masks else None, depths=torch.cat(depths) if self.depths else None,
        )

    def _read_frame(self, entry: dict, name: str, K: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """One frame's image ``(1, 3, R, R)``, ``K`` ``(1, 3, 3)``, mask ``(1, 1, R, R)`` and depth ``(1, 1, R, R)``
        (the last two None unless asked for), cropped and resized; depths times the world ``scale``."""
        where = f"frame {entry['frame_number']} of sequence {name!r} in {self.frame_file}"
        path = self.root / entry["image"]["path"]
        image = load_frame(path)
        size = tuple(int(s) for s in entry["image"]["size"])
        if image.shape[1:] != size:
            raise DatasetError(f"image {path} is {image.shape[2]}x{image.shape[1]} but {where} says {size[1]}x{size[0]} (WxH)")
        mask = depth = None
        if self.masks:
            if not entry.get("mask"):
                raise DatasetError(f"{where} has no mask annotation (pass masks=False)")
            mask = _read_mask(self.root / entry["mask"]["path"], size, "mask", 0.5)[None]  # P(foreground) > 1/2
        if self.depths:
            if not entry.get("depth"):
                raise DatasetError(f"{where} has no depth annotation (pass depths=False)")
            depth = _read_depth(self.root / entry["depth"]["path"], float(entry["depth"]["scale_adjustment"])) * scale
            if entry["depth"].get("mask_path"):
                depth = depth * _read_mask(self.root / entry["depth"]["mask_path"], tuple(depth.shape[1:]), "depth mask", 0.0)
            if depth.shape[1:] != size:  # a depth map at another resolution covers the same field of view
                depth = F.interpolate(depth[None], size=size, mode="nearest-exact")[0]
            depth = depth[None]
        image, K, mask, depth = square_crop_resize(image[None], K[None], self.resolution, mask, depth)
        return image, K, mask, depth


# --- the procedural scenes in the Co3D layout -----------------------------------------------------


def _random_similarity(rng: np.random.Generator) -> tuple[Tensor, float, Tensor]:
    """A rotation ``(3, 3)``, scale and translation ``(3,)``, as arbitrary as an SfM world frame."""
    rotation = matrix_from_quaternion(torch.from_numpy(rng.normal(size=4)))
    return rotation, math.exp(rng.uniform(math.log(0.2), math.log(5.0))), torch.from_numpy(rng.normal(0.0, 2.0, size=3))


def write_co3d(
    out: str | Path, generator: Synth3D, scenes: int, seed: int = 0, test_fraction: float = 0.1,
    category: str = "synth3d", intrinsics_format: str = "ndc_isotropic", progress: bool = True,
) -> Path:
    """Write ``scenes`` procedural scenes under ``out`` (the Co3D root) in the Co3D v2 layout of the
    module docstring, as category ``category``, and return ``out``.

    The scenes are those :func:`dfm.data.synth3d.write_dataset` draws for the same ``seed`` (same
    ``generator.scene`` calls on ``np.random.default_rng(seed)``), named by its scene ids ("000001", ...)
    as sequences, with frames 0, 1, ... its views. Images are ``resolution x W`` with ``W`` about 3/2
    the resolution and ``W - resolution`` even, rendered from the same cameras with the same pixel
    focal length and a centred principal point, so their centred square crop is the native image pixel
    for pixel; they are PNG (real Co3D's are JPEG) so that the crop compares exactly. Each scene's world
    gets a random similarity (rotation, scale, translation, drawn from a separate generator) before
    its cameras and depths are written, as real SfM frames are arbitrary. The set list
    ``set_lists_<FIXTURE_SUBSET>.json`` has every frame of the train scenes in "train", of the test
    scenes in "test" (the last ``test_fraction``, as ``write_dataset`` splits) and none in "val"."""
    if intrinsics_format not in INTRINSICS_FORMATS:
        raise ValueError(f"intrinsics_format must be one of {INTRINSICS_FORMATS}, got {intrinsics_format!r}")
    out, n_train = Path(out), split_sizes(scenes, test_fraction, "scenes")[0]
    folder = out / category
    (folder / "set_lists").mkdir(parents=True, exist_ok=True)
    height = generator.resolution
    width = height * 3 // 2 + (height * 3 // 2 - height) % 2
    rng, world_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    ids = [f"{i + 1:06d}" for i in range(scenes)]
    frames, sequences, set_lists = [], [], {"train": [], "val": [], "test": []}
    for number, name in enumerate(tqdm(ids, desc="scenes", disable=not progress)):
        scene = generator.scene(rng)
        K, views = render_wide(scene, width)
        rotation, scale, translation = _random_similarity(world_rng)
        c2w = scene.c2w.double().clone()  # (V, 4, 4), moved to the SfM world: x -> scale * rotation x + translation
        c2w[:, :3, :3] = rotation @ c2w[:, :3, :3]
        c2w[:, :3, 3] = scale * c2w[:, :3, 3] @ rotation.T + translation
        scale_adjustment = float(world_rng.uniform(0.5, 2.0))
        pixels = to_pixels(views.images)
        depth_bits = (views.depth[:, 0] * scale / scale_adjustment).numpy().astype(np.float16).view(np.uint16)
        for directory in ("images", "masks", "depths", "depth_masks"):
            (folder / name / directory).mkdir(parents=True, exist_ok=True)
        for view in range(len(c2w)):
            paths = {d: f"{category}/{name}/{d}/frame{view + 1:06d}.png" for d in ("images", "masks", "depths", "depth_masks")}
            mask = views.mask[view, 0].numpy()
            iio.imwrite(out / paths["images"], pixels[view])
            iio.imwrite(out / paths["masks"], mask.astype(np.uint8) * 255)
            iio.imwrite(out / paths["depths"], depth_bits[view])
            iio.imwrite(out / paths["depth_masks"], (views.depth[view, 0] > 0).numpy().astype(np.uint8) * 255)
            frames.append({
                "sequence_name": name, "frame_number": view, "frame_timestamp": view / 30.0,  # as if 30 fps
                "image": {"path": paths["images"], "size": [height, width]},
                "depth": {"path": paths["depths"], "scale_adjustment": scale_adjustment, "mask_path": paths["depth_masks"]},
                "mask": {"path": paths["masks"], "mass": float(mask.sum())},
                "viewpoint": opencv_to_viewpoint(c2w[view], K[view], width, height, intrinsics_format),
                "meta": None,
            })
            set_lists["train" if number < n_train else "test"].append([name, view, paths["images"]])
        sequences.append({
            "sequence_name": name, "category": category, "video": None, "point_cloud": None, "viewpoint_quality_score": 1.0,
        })
    _write_jgz(folder / "frame_annotations.jgz", frames)
    _write_jgz(folder / "sequence_annotations.jgz", sequences)
    (folder / "set_lists" / f"set_lists_{FIXTURE_SUBSET}.json").write_text(json.dumps(set_lists))
    return out
