"""Procedural multi-view scenes whose unseen side has a known posterior.

A scene is one convex primitive (sphere, box or cylinder; :data:`PRIMITIVES` takes more) centred at
the world origin, seen by an orbit of cameras about the world z axis (z is up) that all look at the
origin; view 0 is the canonical *context* camera. The part of the surface that faces the context
camera's centre (``n . (c - p) > 0``, exactly the part it can see, since the object is convex) has a
colour drawn uniformly from an RGB box; the rest, which faces away from it, has a colour drawn
uniformly and independently from a palette of K distinct colours. The context image is therefore
the same whichever palette colour is hidden, and the posterior over the hidden colour given it is
uniform over the palette.

Everything is rendered analytically at pixel centres: ray-primitive intersection, Lambertian shading
(a fixed directional light plus ambient), exact z-depth (0 on the background) and masks, a plain
background. Cameras follow :mod:`dfm.cameras` (OpenCV, normalised intrinsics).

On disk (``write_dataset``)::

    OUT/generator.json                 the Synth3D parameters, seed and number of scenes
    OUT/train.txt, OUT/test.txt        scene ids, one a line ("000001")
    OUT/scenes/000001/images/000.png   view 0 (the context view), 8-bit RGB
    OUT/scenes/000001/masks/000.png    8-bit grey, 255 on the object
    OUT/scenes/000001/depth.npy        float32 (V, H, W) z-depth, 0 on the background
    OUT/scenes/000001/cameras.json     {"convention": "opencv", "width", "height",
                                        "views": [{"c2w": 4x4, "K": 3x3 normalised}, ...]}
    OUT/scenes/000001/meta.json        everything :func:`render` needs (shape, parameters, colours,
                                        palette, hidden colour index, light, context camera centre)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from dfm.cameras import CameraError, image_rays, intrinsics_from_fov, orbit, validate_cameras, z_depth
from dfm.data.multiview import MultiViewScene, square_crop_resize
from dfm.data.vimeo import DatasetError, load_frame, split_sizes, to_pixels

# Well separated, saturated colours (RGB in [0, 1]): red, green, blue, yellow.
PALETTE = ((0.9, 0.15, 0.15), (0.15, 0.75, 0.2), (0.15, 0.3, 0.9), (0.95, 0.85, 0.15))
SPLITS = ("train", "test")


# --- primitives: each is a convex solid, the intersection of "slabs" (t_in, t_out, normal at t_in) ---


def _plane_slab(o: Tensor, d: Tensor, half: float, axis: int) -> tuple[Tensor, Tensor, Tensor]:
    """The slab ``|p[axis]| <= half``; a ray parallel to it gets (-inf, inf) or an empty interval from IEEE division."""
    t1, t2 = (-half - o[..., axis]) / d[..., axis], (half - o[..., axis]) / d[..., axis]
    normal = torch.zeros_like(o)
    normal[..., axis] = -torch.sign(d[..., axis])
    return torch.minimum(t1, t2), torch.maximum(t1, t2), normal


def _quadric_slab(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The interval where ``a t^2 + 2 b t + c <= 0`` (``a >= 0``); a = 0 is a ray parallel to the surface."""
    disc = b * b - a * c
    root = disc.clamp(min=0).sqrt()
    inside = torch.where(c <= 0, -math.inf, math.inf)  # parallel: all t if inside, none otherwise
    t_in = torch.where(a > 0, torch.where(disc >= 0, (-b - root) / a, math.inf), inside)
    t_out = torch.where(a > 0, torch.where(disc >= 0, (-b + root) / a, -math.inf), -inside)
    return t_in, t_out


def _at(o: Tensor, d: Tensor, t: Tensor) -> Tensor:
    return o + torch.where(t.isfinite(), t, 0)[..., None] * d


def _sphere(o: Tensor, d: Tensor, params: dict) -> list:
    t_in, t_out = _quadric_slab((d * d).sum(-1), (o * d).sum(-1), (o * o).sum(-1) - params["radius"] ** 2)
    return [(t_in, t_out, _at(o, d, t_in) / params["radius"])]


def _box(o: Tensor, d: Tensor, params: dict) -> list:
    return [_plane_slab(o, d, h, axis) for axis, h in enumerate(params["half_extents"])]


def _cylinder(o: Tensor, d: Tensor, params: dict) -> list:
    """Axis along world z."""
    r = params["radius"]
    oxy, dxy = o[..., :2], d[..., :2]
    t_in, t_out = _quadric_slab((dxy * dxy).sum(-1), (oxy * dxy).sum(-1), (oxy * oxy).sum(-1) - r * r)
    normal = torch.nn.functional.pad(_at(oxy, dxy, t_in) / r, (0, 1))
    return [(t_in, t_out, normal), _plane_slab(o, d, params["half_height"], 2)]


def _box_params(size: float, rng: np.random.Generator) -> dict:
    u = rng.uniform(0.5, 1.0, size=3)
    return {"half_extents": (size * u / np.linalg.norm(u)).tolist()}


def _cylinder_params(size: float, rng: np.random.Generator) -> dict:
    angle = rng.uniform(math.radians(25), math.radians(65))
    return {"radius": size * math.cos(angle), "half_height": size * math.sin(angle)}


@dataclass(frozen=True)
class Primitive:
    """A convex solid at the origin: ``sample(size, rng)`` draws its JSON parameters for a bounding
    radius ``size``; ``slabs(origins, unit_directions, params)`` gives the intervals it is the
    intersection of, each ``(t_in, t_out, outward normal at t_in)``."""

    sample: Callable[[float, np.random.Generator], dict]
    slabs: Callable[[Tensor, Tensor, dict], list]


PRIMITIVES = {
    "sphere": Primitive(lambda size, rng: {"radius": size}, _sphere),
    "box": Primitive(_box_params, _box),
    "cylinder": Primitive(_cylinder_params, _cylinder),
}


def intersect(shape: str, params: dict, origins: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
    """First hit of rays ``(..., 3)`` from outside the solid: distance ``(...)`` (inf on a miss) and normal ``(..., 3)``."""
    t_in, t_out, normals = zip(*PRIMITIVES[shape].slabs(origins, directions, params))
    enter, which = torch.stack(t_in, -1).max(-1)
    hit = (enter <= torch.stack(t_out, -1).min(-1).values) & (enter > 0)
    normal = torch.stack(normals, -2).gather(-2, which[..., None, None].expand(which.shape + (1, 3)))[..., 0, :]
    return torch.where(hit, enter, math.inf), torch.where(hit[..., None], normal, 0)


# --- rendering --------------------------------------------------------------------------------


@dataclass
class Synth3DViews:
    images: Tensor  # (V, 3, H, W) float32 in [-1, 1]
    depth: Tensor  # (V, 1, H, W) float32 z-depth, 0 on the background
    mask: Tensor  # (V, 1, H, W) bool: the object
    hidden_mask: Tensor  # (V, 1, H, W) bool: the object's hidden (palette-coloured) side


@dataclass
class Synth3DScene(Synth3DViews):
    c2w: Tensor  # (V, 4, 4) float32, OpenCV; view 0 is the context camera
    K: Tensor  # (V, 3, 3) float32, normalised
    meta: dict  # JSON-serialisable parameters, as in meta.json; render(meta, ...) reproduces the views


def render(meta: dict, c2w: Tensor, K: Tensor, height: int, width: int, hidden_colour: int | None = None) -> Synth3DViews:
    """Render the scene described by ``meta`` from cameras ``c2w`` ``(V, 4, 4)``, ``K`` ``(V, 3, 3)``, with its
    hidden side in palette colour ``hidden_colour`` (default: the scene's own), e.g. to score a sample's
    hidden side against every palette colour."""
    c2w, K = c2w.double(), K.double()

    def vector(key: str) -> Tensor:
        return torch.tensor(meta[key], dtype=torch.float64, device=c2w.device)

    origins, directions = image_rays(c2w, K, height, width)
    t, normal = intersect(meta["shape"], meta["params"], origins, directions)
    hit = t.isfinite()
    points = _at(origins, directions, t)
    hidden = hit & ((normal * (vector("context_centre") - points)).sum(-1) < -1e-9)  # grazing hits count as seen
    k = meta["hidden_colour"] if hidden_colour is None else hidden_colour
    colour = torch.where(hidden[..., None], vector("palette")[k], vector("visible_colour"))
    light = vector("light")
    shade = meta["ambient"] + (1 - meta["ambient"]) * (normal @ (light / light.norm())).clamp(min=0)
    rgb = torch.where(hit[..., None], colour * shade[..., None], vector("background"))
    depth = torch.where(hit, z_depth(torch.where(hit, t, 0), directions, c2w), 0)

    def image(x: Tensor) -> Tensor:  # (V, H * W, C) -> (V, C, H, W)
        return x.reshape(x.shape[0], height, width, -1).permute(0, 3, 1, 2)

    return Synth3DViews(
        images=image(rgb * 2 - 1).float(), depth=image(depth[..., None]).float(),
        mask=image(hit[..., None]), hidden_mask=image(hidden[..., None]),
    )


def render_wide(scene: Synth3DScene, width: int) -> tuple[Tensor, Synth3DViews]:
    """The scene's views on ``resolution x width`` images whose centred square is the native view pixel
    for pixel (``width - resolution`` even): the same cameras and focal length in pixels, the principal
    point moved by the crop offset. Returns their normalised ``K`` ``(V, 3, 3)`` float64 and the views;
    the fixtures of the real datasets' layouts are made this way (see :func:`dfm.data.multiview.square_crop_resize`)."""
    height = scene.images.shape[-2]
    if (width - height) % 2 or width < height:
        raise ValueError(f"width {width} must be at least the height {height} and differ from it by an even number")
    K = scene.K.double().clone()
    K[:, 0, 0] *= height / width
    K[:, 0, 2] = (K[:, 0, 2] * height + (width - height) / 2) / width
    return K, render(scene.meta, scene.c2w, K, height, width)


@dataclass(frozen=True)
class Synth3D:
    """The generator's parameters. Lengths are world units; ``size`` is the primitive's bounding radius,
    so every shape fits the frame alike; angles in degrees; colours RGB in [0, 1]."""

    resolution: int = 32
    views: int = 8  # an even number puts view views // 2 opposite the context view
    palette: tuple[tuple[float, float, float], ...] = PALETTE
    shapes: tuple[str, ...] = ("sphere", "box", "cylinder")
    size: tuple[float, float] = (0.6, 1.0)
    camera_radius: tuple[float, float] = (3.0, 3.5)
    elevation: tuple[float, float] = (10.0, 40.0)  # of the orbit, above the horizontal plane
    fov: float = 45.0  # vertical field of view
    visible_colour: tuple[float, float] = (0.2, 0.9)  # each channel uniform in this range
    light: tuple[float, float, float] = (0.4, 0.3, 1.0)  # direction towards the light, world space
    ambient: float = 0.4
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        unknown = set(self.shapes) - set(PRIMITIVES)
        if not self.shapes or unknown:
            raise ValueError(f"shapes must be a non-empty subset of {tuple(PRIMITIVES)}, got {self.shapes}")
        palette = np.asarray(self.palette, dtype=np.float64)
        if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) < 2 or not ((0 <= palette) & (palette <= 1)).all():
            raise ValueError(f"palette must hold at least 2 RGB colours in [0, 1], got {self.palette}")
        distance = np.linalg.norm(palette[:, None] - palette[None], axis=-1) + np.eye(len(palette))
        if distance.min() < 0.1:
            raise ValueError(f"palette colours must be distinct (RGB distance >= 0.1), got {self.palette}")
        if self.resolution < 1 or self.views < 1:
            raise ValueError(f"resolution and views must be positive, got {self.resolution}, {self.views}")
        for name in ("size", "camera_radius", "elevation", "visible_colour"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be a (low, high) range, got {getattr(self, name)}")
        if not -90 < self.elevation[0] <= self.elevation[1] < 90:
            raise ValueError(f"elevation must lie in (-90, 90) degrees, got {self.elevation}")
        if not (0 < self.size[0] and self.size[1] < self.camera_radius[0] * math.sin(math.radians(self.fov) / 2)):
            raise ValueError(
                f"the object (bounding radius up to {self.size[1]}) must fit the {self.fov} degree view from "
                f"the nearest camera (radius {self.camera_radius[0]})"
            )

    def scene(self, rng: np.random.Generator) -> Synth3DScene:
        shape = self.shapes[rng.integers(len(self.shapes))]
        size = rng.uniform(*self.size)
        meta = {
            "shape": shape,
            "params": PRIMITIVES[shape].sample(size, rng),
            "size": size,
            "camera_radius": rng.uniform(*self.camera_radius),
            "elevation": rng.uniform(*self.elevation),
            "start_azimuth": rng.uniform(0, 360),
            "fov": self.fov,
            "visible_colour": rng.uniform(*self.visible_colour, size=3).tolist(),
            "hidden_colour": int(rng.integers(len(self.palette))),
            "palette": [list(c) for c in self.palette],
            "light": list(self.light),
            "ambient": self.ambient,
            "background": list(self.background),
        }
        # float32 cameras, as returned and stored, so render(meta, c2w, K, ...) reproduces the views exactly
        c2w = orbit(self.views, meta["camera_radius"], meta["elevation"], start_azimuth_deg=meta["start_azimuth"])
        K = intrinsics_from_fov(self.fov).expand(self.views, 3, 3)
        meta["context_centre"] = c2w[0, :3, 3].tolist()
        views = render(meta, c2w, K, self.resolution, self.resolution)
        return Synth3DScene(**vars(views), c2w=c2w, K=K, meta=meta)


# --- files ------------------------------------------------------------------------------------


def write_dataset(
    out: str | Path, generator: Synth3D, scenes: int, seed: int = 0, test_fraction: float = 0.1, progress: bool = True
) -> Path:
    """Write ``scenes`` scenes under ``out`` in the layout of the module docstring; the last
    ``test_fraction`` of them (at least one; see ``split_sizes``) are the test split."""
    out = Path(out)
    n_train, _ = split_sizes(scenes, test_fraction, "scenes")
    rng = np.random.default_rng(seed)
    ids = [f"{i + 1:06d}" for i in range(scenes)]
    for scene_id in tqdm(ids, desc="scenes", disable=not progress):
        scene = generator.scene(rng)
        directory = out / "scenes" / scene_id
        (directory / "images").mkdir(parents=True, exist_ok=True)
        (directory / "masks").mkdir(exist_ok=True)
        pixels = to_pixels(scene.images)
        for view, (image, mask) in enumerate(zip(pixels, scene.mask[:, 0].numpy())):
            iio.imwrite(directory / "images" / f"{view:03d}.png", image)
            iio.imwrite(directory / "masks" / f"{view:03d}.png", mask.astype(np.uint8) * 255)
        np.save(directory / "depth.npy", scene.depth[:, 0].numpy())
        cameras = {
            "convention": "opencv",
            "width": generator.resolution,
            "height": generator.resolution,
            "views": [{"c2w": c.tolist(), "K": k.tolist()} for c, k in zip(scene.c2w.double(), scene.K.double())],
        }
        (directory / "cameras.json").write_text(json.dumps(cameras))
        (directory / "meta.json").write_text(json.dumps(scene.meta))
    for split, split_ids in zip(SPLITS, (ids[:n_train], ids[n_train:])):
        (out / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
    (out / "generator.json").write_text(json.dumps({**asdict(generator), "seed": seed, "scenes": scenes}, indent=2))
    return out


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DatasetError(f"{what} file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"cannot read {what} file {path}: {error}") from error


def read_cameras(path: str | Path) -> tuple[Tensor, Tensor, int, int]:
    """``(c2w (V, 4, 4), K (V, 3, 3), width, height)`` from a ``cameras.json``, validated."""
    path = Path(path)
    data = _read_json(path, "cameras")
    try:
        if data["convention"] != "opencv":
            raise ValueError(f"convention must be 'opencv', got {data['convention']!r}")
        if not data["views"]:
            raise ValueError("no views")
        c2w = torch.tensor([view["c2w"] for view in data["views"]], dtype=torch.float64)
        K = torch.tensor([view["K"] for view in data["views"]], dtype=torch.float64)
        width, height = int(data["width"]), int(data["height"])
        validate_cameras(c2w, K, str(path))
    except CameraError as error:
        raise DatasetError(str(error)) from error
    except (KeyError, TypeError, ValueError) as error:  # missing keys, ragged or non-numeric lists
        raise DatasetError(f"malformed cameras file {path}: {error!r}") from error
    return c2w.float(), K.float(), width, height


def _read_mask(path: Path) -> Tensor:
    if not path.is_file():
        raise DatasetError(f"mask {path} does not exist")
    try:
        return torch.from_numpy(iio.imread(path, plugin="pillow", mode="L") > 127)[None]
    except Exception as error:  # corrupt files raise a variety of decoder errors
        raise DatasetError(f"cannot read mask {path}: {error}") from error


def _read_depth(path: Path, shape: tuple[int, ...]) -> Tensor:
    if not path.is_file():
        raise DatasetError(f"depth file {path} does not exist")
    try:
        depth = np.load(path, allow_pickle=False)
    except Exception as error:  # truncated or not .npy
        raise DatasetError(f"cannot read depth file {path}: {error}") from error
    if not isinstance(depth, np.ndarray):  # np.load opens any zip file (a torch.save file too) as an .npz
        raise DatasetError(f"depth file {path} is not a .npy array but a {type(depth).__name__}")
    if depth.shape != shape or not np.issubdtype(depth.dtype, np.floating):
        raise DatasetError(f"depth file {path} holds {depth.dtype} {depth.shape}, expected floats of shape {shape} (V, H, W)")
    return torch.from_numpy(depth.astype(np.float32))[:, None]


def _sized(x: Tensor, path: Path, width: int, height: int, cameras: Path) -> Tensor:
    """``x`` ``(C, H, W)``, read from ``path``, checked against the image size that ``cameras`` gives."""
    if x.shape[1:] != (height, width):
        raise DatasetError(f"{path} is {x.shape[2]}x{x.shape[1]} but {cameras} says {width}x{height} (WxH)")
    return x


class Synth3DSource:
    """The scenes of one split written by :func:`write_dataset`, as a scene source
    (:class:`dfm.data.multiview.SceneSource`): :meth:`load` gives views with masks and depths, at
    ``resolution`` (None: as stored). Every scene shares ``near``/``far``, which the generator's
    camera radii and object sizes bound (the defaults fit :class:`Synth3D`'s). Construction checks
    the root, the list file and the scene directories; a scene's files are checked when it is loaded."""

    def __init__(self, root: str | Path, split: str = "train", resolution: int | None = None, near: float = 1.5, far: float = 5.0):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root, self.split, self.resolution, self.near, self.far = Path(root), split, resolution, near, far
        if not self.root.is_dir():
            raise DatasetError(f"Synth3D root {self.root} does not exist or is not a directory")
        list_path = self.root / f"{split}.txt"
        if not list_path.is_file():
            raise DatasetError(f"list file {list_path} does not exist")
        self.scenes = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
        if not self.scenes:
            raise DatasetError(f"list file {list_path} lists no scenes")
        missing = [d for d in map(self._directory, self.scenes) if not d.is_dir()]
        if missing:
            listed = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise DatasetError(f"{len(missing)} scene directories listed in {list_path} do not exist: {listed}")

    def _directory(self, scene_id: str) -> Path:
        return self.root / "scenes" / scene_id

    def __repr__(self) -> str:
        return f"Synth3D scenes {self.root} ({self.split})"

    def __len__(self) -> int:
        return len(self.scenes)

    def scene_id(self, index: int) -> str:
        return self.scenes[index]

    def num_views(self, index: int) -> int:
        return len(read_cameras(self._directory(self.scenes[index]) / "cameras.json")[0])

    def load(self, index: int, views: Sequence[int] | None = None) -> MultiViewScene:
        directory = self._directory(self.scenes[index])
        cameras = directory / "cameras.json"
        c2w, K, width, height = read_cameras(cameras)
        views = range(len(c2w)) if views is None else list(views)
        if any(not 0 <= v < len(c2w) for v in views):
            raise DatasetError(f"{cameras} has views 0-{len(c2w) - 1}; asked for {list(views)}")
        images, masks = [], []
        for view in views:
            image, mask = directory / "images" / f"{view:03d}.png", directory / "masks" / f"{view:03d}.png"
            images.append(_sized(load_frame(image), image, width, height, cameras))
            masks.append(_sized(_read_mask(mask), mask, width, height, cameras))
        depths = _read_depth(directory / "depth.npy", (len(c2w), height, width))[list(views)]
        images, K, masks, depths = torch.stack(images), K[list(views)], torch.stack(masks), depths
        if self.resolution is not None:
            images, K, masks, depths = square_crop_resize(images, K, self.resolution, masks, depths)
        return MultiViewScene(
            self.scenes[index], images, c2w[list(views)], K, self.near, self.far, masks=masks, depths=depths
        )

    def meta(self, index: int) -> dict:
        """Scene ``index``'s ``meta.json``: pass it to :func:`render` to re-render the scene, e.g. recoloured."""
        return _read_json(self._directory(self.scenes[index]) / "meta.json", "meta")
