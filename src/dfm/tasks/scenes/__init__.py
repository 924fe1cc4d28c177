"""Inverse graphics: sample 3-D scenes (radiance fields) that agree with one image.

Wiring only: the denoiser and the volume renderer are in :mod:`.model`, the training examples in
:mod:`.data`; the loss terms beyond the engine's target and novel-view terms are here:

- ``coarse``: the coarse pass's own photometric term (target and novel view), so that the network
  that places the importance samples is trained too (only with a fine pass);
- ``cond``: ``L_cond``, the context-only estimate ``O_det`` against the target view;
- ``smoothness``: edge-aware smoothness of the rendered, mean-normalised disparity;
- ``distortion``: Mip-NeRF 360's distortion loss on the rendered rays (distances divided by ``far``);
- ``lpips``: LPIPS between the rendered and true target (and novel) patches, with weights from files the
  user gives (``lpips.backbone_path``, ``lpips.linear_path``); without them the term is off, with a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from dfm.cameras import image_rays, orbit
from dfm.config import check_values
from dfm.data.multiview import SOURCES, MultiViewScene, SceneSource, open_source
from dfm.data.synth3d import read_cameras
from dfm.data.vimeo import DatasetError, load_frame
from dfm.diffusion import NoiseSchedule
from dfm.model import DFM, Regularizer, Sample
from dfm.networks.cnn import ConvEncoder
from dfm.networks.field import PixelAlignedField
from dfm.networks.lpips import load_lpips
from dfm.regularizers import edge_aware_smoothness
from dfm.rendering import distortion_loss
from dfm.tasks.base import DiTConfig, ObjectiveConfig, SampleConfig, Task
from dfm.tasks.scenes.data import SceneViews, cameras
from dfm.tasks.scenes.views import PatchGeometry, ViewSelection
from dfm.tasks.scenes.model import POSE_DIM, ContextEstimate, Scene, SceneDenoiser, VolumeRenderer
from dfm.training import TrainConfig
from dfm.visualize import depth_to_color, save_image, save_video, to_chw, to_uint8, upscaled, write_ply


@dataclass
class EncoderConfig(DiTConfig):
    """The image encoder: ``cnn`` (:class:`dfm.networks.cnn.ConvEncoder`, ``width``/``depth`` default 64/4)
    or ``dit`` (:class:`dfm.networks.dit.DiT` of ``size``, e.g. XL with patch size 2 as in the paper)."""

    section = "model.encoder"
    kind: str = "cnn"
    pose_conditioning: bool = False  # also condition on each view's absolute pose (its c2w's top 3 rows)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in ("cnn", "dit"):
            raise ValueError(f"model.encoder.kind must be 'cnn' or 'dit', got {self.kind!r}")

    def build(self, in_channels: int, out_channels: int):
        cond_dim = POSE_DIM if self.pose_conditioning else None
        if self.kind == "dit":
            return super().build(in_channels, out_channels, cond_dim)
        return ConvEncoder(in_channels, out_channels, width=self.width or 64, depth=self.depth or 4, cond_dim=cond_dim)


@dataclass
class FieldConfig:
    width: int = 128
    blocks: int = 5
    mean_after: int = 3  # blocks per view before the mean over views
    num_frequencies: int = 6
    features: int = 16  # feature channels the field outputs (rendered into O_det for the target encoder)
    coarse_network: bool = False  # a second field for the coarse pass (NeRF); False: one field for both passes

    def __post_init__(self) -> None:
        check_values(self, "model.field", positive=["width", "blocks"], non_negative=["mean_after", "num_frequencies", "features"])
        if self.mean_after > self.blocks:
            raise ValueError(f"model.field.mean_after must be <= model.field.blocks ({self.blocks}), got {self.mean_after}")


@dataclass
class RenderConfig:
    coarse_samples: int = 32
    fine_samples: int = 0
    spacing: str = "linear"  # linear | disparity
    context_resolution: int | None = 16  # O_det's resolution (None: the image's)
    context_samples: int = 16  # O_det's samples per ray; 0 leaves O_det (and L_cond) out
    context_checkpoint: bool = True  # recompute O_det in the backward pass instead of storing it
    chunk: int = 64  # rays per chunk (per scene) when rendering without gradients; small is fastest on a CPU
    checkpoint: bool = False  # training too renders in chunks, recomputing each chunk's field queries in the backward pass
    background: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # RGB in [0, 1] where rays hit nothing

    def __post_init__(self) -> None:
        check_values(
            self, "model.render", positive=["coarse_samples", "context_resolution", "chunk"],
            non_negative=["fine_samples", "context_samples"],
        )
        if len(self.background) != 3 or not all(0 <= c <= 1 for c in self.background):
            raise ValueError(f"model.render.background must be 3 values in [0, 1] (RGB), got {list(self.background)}")


@dataclass
class ScenesModelConfig:
    features: int = 64  # pixel-aligned feature channels per view
    latent_dim: int = 32  # global latent from the target encoder, given to every field query; 0: none
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    field: FieldConfig = field(default_factory=FieldConfig)  # last: from here on `field` names this attribute

    def __post_init__(self) -> None:
        check_values(self, "model", positive=["features"], non_negative=["latent_dim"])


@dataclass
class ScenesDataConfig:
    """Where the scenes come from (one owner for resolution, bounds and patches: the renderer reads them here)."""

    source: str = "synth3d"  # synth3d | co3d | re10k (see dfm.data.multiview)
    root: str = "data/synth3d"  # synth3d: `dfm data synth3d --out ...`; co3d: the folder of the category folders
    resolution: int = 32  # images are centre-cropped to a square and resized to this (K follows)
    near: float = 1.5  # every scene's bounds along a ray, in its (normalised) world units
    far: float = 5.0
    patch_size: int | None = 16  # side of the rendered training patch; None: whole images
    repeats: int = 8  # draws of (views, patches) per scene and epoch
    views: ViewSelection = field(default_factory=ViewSelection)
    category: str | None = None  # co3d: the category folder, e.g. hydrant
    subset: str = "fewview_train"  # co3d: the set list (set_lists/set_lists_<subset>.json)
    min_quality: float | None = None  # co3d: drop sequences whose viewpoint_quality_score is below this
    min_point_cloud_quality: float | None = None  # co3d: ... or whose point_cloud.quality_score is
    seed: int = 0

    def __post_init__(self) -> None:
        check_values(self, "data", positive=["resolution", "near", "patch_size", "repeats"])
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {self.source!r}")
        if self.far <= self.near:
            raise ValueError(f"data.far must be > data.near ({self.near}), got {self.far}")
        if self.source == "co3d" and not self.category:
            raise ValueError("data.category is needed for data.source=co3d (e.g. data.category=hydrant)")


@dataclass
class LpipsConfig:
    backbone_path: str | None = None  # torchvision's vgg16/alexnet state dict
    linear_path: str | None = None  # the LPIPS v0.1 linear layers (vgg.pth / alex.pth)
    backbone: str = "vgg"


@dataclass
class ScenesConfig:
    task: str = "scenes"
    out_dir: str = "runs/scenes"
    data: ScenesDataConfig = field(default_factory=ScenesDataConfig)
    model: ScenesModelConfig = field(default_factory=ScenesModelConfig)
    smoothness_edge_weight: float = 10.0  # gamma in exp(-gamma |grad I|), I in [-1, 1]
    lpips: LpipsConfig = field(default_factory=LpipsConfig)
    objective: ObjectiveConfig = field(default_factory=lambda: ObjectiveConfig(loss_weights={
        "coarse": 1.0, "cond": 1.0, "smoothness": 0.002, "distortion": 0.005, "lpips": 0.2,
    }))
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(num_samples=4))
    sample_inputs: int = 4  # test scenes that `dfm sample` / `dfm demo` show
    sample_view: int | None = None  # the view sampled (default: opposite the context, or max_gap frames on)
    autoregressive_views: int = 1  # > 1: that many views, spread over the scene's, sampled in turn (each joins the context)
    video_frames: int = 36
    video_resolution: int = 64

    def __post_init__(self) -> None:
        check_values(
            self, "", positive=["sample_inputs", "video_frames", "video_resolution", "autoregressive_views"],
            non_negative=["smoothness_edge_weight", "sample_view"],
        )


# --- loss terms ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """A loss term and what it reads: fields of the renderer's :class:`~.model.Rendering` or the
    denoiser's by-products. A model that does not produce them (no fine pass, no ``O_det``) has no
    such term, whatever its configured weight. ``make`` builds it, or returns None when it cannot
    (LPIPS without its weight files)."""

    make: Callable[[], Regularizer | None]
    needs: frozenset[str] = frozenset()


def _patches(batch, predictions, key: str):
    """(prediction, truth) pairs of the rendered views: the target's (patch) and the novel one's."""
    pairs = [(getattr(predictions["target"], key), batch.get("trgt_pixels", batch["trgt_obs"]))]
    if "novel" in predictions:
        pairs.append((getattr(predictions["novel"], key), batch["novel_obs"]))
    return pairs


def coarse_term(signal: Scene, batch, predictions) -> Tensor:
    return sum(F.mse_loss(pred, truth) for pred, truth in _patches(batch, predictions, "coarse"))


def context_term(signal: Scene, batch, predictions) -> Tensor:
    rgb = predictions["denoiser"]["context"]["rgb"]
    return F.mse_loss(rgb, F.interpolate(batch["trgt_obs"], size=rgb.shape[-2:], mode="area"))


def disparity_smoothness(gamma: float) -> Regularizer:
    def term(signal: Scene, batch, predictions) -> Tensor:
        out = predictions["target"]
        disparity = out.opacity / out.depth  # 0 where the ray hits nothing
        disparity = disparity / (disparity.mean((1, 2, 3), keepdim=True) + 1e-7)
        return edge_aware_smoothness(disparity, batch.get("trgt_pixels", batch["trgt_obs"]), gamma)

    return term


def distortion_term(signal: Scene, batch, predictions) -> Tensor:
    rendered = [predictions[k] for k in ("target", "novel") if k in predictions]
    far = signal.far.view(-1, *[1] * (rendered[0].edges.ndim - 1))  # distances in units of each scene's far
    return sum(distortion_loss(out.weights, out.edges / far).mean() for out in rendered)


def perceptual_term(network) -> Regularizer:
    def term(signal: Scene, batch, predictions) -> Tensor:
        net = network.to(batch["trgt_obs"].device)
        return sum(net(pred, truth).mean() for pred, truth in _patches(batch, predictions, "observation"))

    return term


# --- the task -----------------------------------------------------------------------------------


class ScenesTask(Task):
    Config = ScenesConfig

    def build_model(self, training: bool = True) -> DFM:
        """The DFM; with ``training`` also its loss terms: those whose inputs the model produces and whose
        weight is not 0 (LPIPS loads its weight files only then). Sampling builds none of them."""
        m, r = self.cfg.model, self.cfg.model.render
        fc = m.field
        if fc.coarse_network and not r.fine_samples:
            raise ValueError("model.field.coarse_network places the fine samples: it needs model.render.fine_samples > 0")
        renderer = VolumeRenderer(
            self.patches(), r.coarse_samples, r.fine_samples, r.spacing, r.chunk, r.checkpoint, tuple(r.background),
        )
        context = ContextEstimate(renderer, r.context_samples, r.context_resolution, r.context_checkpoint) if r.context_samples else None
        encoder = m.encoder.build(3 + (context.channels(fc.features) if context else 0), m.features + m.latent_dim)

        def make_field() -> PixelAlignedField:
            return PixelAlignedField(
                m.features, width=fc.width, blocks=fc.blocks, mean_after=fc.mean_after, num_frequencies=fc.num_frequencies,
                out_features=fc.features, global_dim=m.latent_dim or None,
            )

        denoiser = SceneDenoiser(
            encoder, make_field(), make_field() if fc.coarse_network else None, context,
            features=m.features, latent_dim=m.latent_dim, pose_conditioning=m.encoder.pose_conditioning,
        )
        schedule = NoiseSchedule(self.cfg.objective.diffusion_steps)
        weights = {k: v for k, v in self.cfg.objective.loss_weights.items() if k in ("target", "novel")}
        regularizers = {}
        if training:
            produced = renderer.provides() | denoiser.provides()
            terms = self.terms()
            for name, weight in self.cfg.objective.loss_weights.items():
                if name in terms and weight and terms[name].needs <= produced and (loss := terms[name].make()) is not None:
                    regularizers[name], weights[name] = loss, weight
        return self.make_dfm(denoiser, renderer, schedule, regularizers, loss_weights=weights, training=training)

    def terms(self) -> dict[str, Term]:
        """Every loss term of the task beyond the target and novel views (see the module docstring)."""
        lp = self.cfg.lpips

        def lpips() -> Regularizer | None:
            network = load_lpips(lp.backbone_path, lp.linear_path, lp.backbone)  # warns without its files
            return None if network is None else perceptual_term(network)

        smoothness = disparity_smoothness(self.cfg.smoothness_edge_weight)
        return {
            "coarse": Term(lambda: coarse_term, frozenset({"coarse"})),
            "cond": Term(lambda: context_term, frozenset({"context"})),
            "smoothness": Term(lambda: smoothness, frozenset({"depth", "opacity"})),
            "distortion": Term(lambda: distortion_term, frozenset({"weights", "edges"})),
            "lpips": Term(lpips),
        }

    def train_dataset(self) -> Dataset:
        d = self.cfg.data
        return SceneViews(self.source("train"), d.views, self.patches(), d.repeats, d.seed)

    def patches(self) -> PatchGeometry:
        return PatchGeometry(self.cfg.data.resolution, self.cfg.data.patch_size)

    def source(self, split: str) -> SceneSource:
        """The scenes of ``split`` from ``data.source``, at the model's resolution, with the config's bounds."""
        d = self.cfg.data
        if not Path(d.root).exists():
            hint = f": write the procedural dataset with `dfm data synth3d --out {d.root}`" if d.source == "synth3d" else ""
            raise DatasetError(f"data.root {d.root} does not exist{hint}")
        return open_source(
            d.source, d.root, split, d.resolution, d.near, d.far, category=d.category, subset=d.subset, min_quality=d.min_quality,
            min_point_cloud_quality=d.min_point_cloud_quality,
        )

    def test_scenes(self, count: int) -> list[MultiViewScene]:
        """``count`` test scenes (every view), evenly spaced over the test split."""
        scenes = self.source("test")
        step = max(1, len(scenes) // count)
        return [scenes.load(i) for i in range(0, step * count, step)[: len(scenes)]]

    def context_of(self, scene: MultiViewScene) -> tuple[Tensor, dict[str, Tensor]]:
        """A scene's first ``context_views`` views (view 0 first) and their cameras, as the denoiser takes them (no batch)."""
        views = list(range(self.cfg.data.views.context_views))
        return scene.images[views], cameras(scene, views)

    def preview(self, model: DFM, step: int) -> dict[str, Tensor]:
        scene = self.test_scenes(1)[0]
        sample = sample_scene(model, *self.context_of(scene), self.target_camera(scene), 3, steps=10)
        views = render_views(model, sample, scene.c2w, scene.K, self.cfg.data.resolution)
        return {"scenes": to_chw(scene_grid(scene.images, views["rgb"]))}

    def one_shot_view(self, scene: MultiViewScene) -> int:
        """The view sampled in one-shot sampling: ``sample_view``, or by default the one opposite the context
        (canonical views) or ``max_gap`` frames on (video frames), as far as the scene goes."""
        if self.cfg.sample_view is not None:
            return self.cfg.sample_view
        v = self.cfg.data.views
        return len(scene.c2w) // 2 if v.mode == "canonical" else min(v.max_gap, len(scene.c2w) - 1)

    def target_camera(self, scene: MultiViewScene) -> dict[str, Tensor]:
        return cameras(scene, self.one_shot_view(scene))

    def sampled_views(self, scene: MultiViewScene) -> list[int]:
        """The views :meth:`write_samples` diffuses: the :meth:`one_shot_view`, or with
        ``autoregressive_views`` n > 1, n views spread evenly from the first after the context to the last."""
        n, first, last = self.cfg.autoregressive_views, self.cfg.data.views.context_views, len(scene.c2w) - 1
        if n == 1:
            return [self.one_shot_view(scene)]
        return sorted({round(first + k * (last - first) / (n - 1)) for k in range(n)})

    def write_samples(self, model: DFM, out_dir: Path) -> list[Path]:
        """For ``sample_inputs`` test scenes: ``sample.num_samples`` scenes sampled from the context
        views, diffusing the :meth:`sampled_views` in turn, written by :meth:`write_scenes`."""
        s = self.cfg.sample
        written = []
        for i, scene in enumerate(self.test_scenes(self.cfg.sample_inputs)):
            targets = cameras(scene, self.sampled_views(scene))
            sample = sample_autoregressive(
                model, *self.context_of(scene), targets, s.num_samples, seed=s.seed + i, progress=True, **s.sampler_kwargs(),
            )
            sample = Sample(sample.observation[:, -1], sample.signal)  # the scene after the last view
            written += self.write_scenes(model, sample, scene.images, scene.c2w, scene.K, out_dir, f"input{i}")
        return written

    def sample_image(self, model: DFM, image: Path, camera_file: Path, out_dir: Path) -> list[Path]:
        """Sample scenes from one image with its camera (view 0 of a ``cameras.json``, see
        :mod:`dfm.data.synth3d`); the scene is assumed centred at the world origin with +z up, and
        the view sampled first is the camera turned 180 degrees about the z axis."""
        c2w, K, width, height = read_cameras(camera_file)
        picture = load_frame(image)
        r = self.cfg.data.resolution
        if picture.shape[1:] != (r, r) or (width, height) != (r, r):
            raise DatasetError(
                f"{image} is {picture.shape[2]}x{picture.shape[1]} and {camera_file} says {width}x{height}; this model takes {r}x{r} images"
            )
        turn = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0]))  # 180 degrees about the world z axis
        s, d = self.cfg.sample, self.cfg.data
        given = MultiViewScene(image.stem, picture[None], torch.cat([c2w[:1], turn @ c2w[:1]]), K[[0, 0]], d.near, d.far)
        sample = sample_scene(
            model, given.images, cameras(given, [0]), cameras(given, 1), s.num_samples, seed=s.seed, progress=True,
            **s.sampler_kwargs(),
        )
        cams = orbit_like(c2w[0], 8)
        return self.write_scenes(model, sample, picture[None], cams, K[:1].expand(len(cams), 3, 3), out_dir, image.stem)

    def write_scenes(
        self, model: DFM, sample: Sample, truth: Tensor, c2w: Tensor, K: Tensor, out_dir: Path, name: str
    ) -> list[Path]:
        """``NAME.png``: the true views (those given) above each sample rendered at cameras ``c2w``, ``K``
        (the first the context); per sample an orbit of RGB beside depth as GIF and MP4, and a coloured
        point cloud (``.ply``) from those views; ``NAME.pt`` holds the sampled target views."""
        r = self.cfg.data.resolution
        views = render_views(model, sample, c2w, K, r, progress=f"{name}: rendering the views")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [save_image(scene_grid(truth, views["rgb"]), out_dir / f"{name}.png")]
        torch.save({"samples": sample.observation.cpu(), "views": views["rgb"]}, out_dir / f"{name}.pt")
        written.append(out_dir / f"{name}.pt")
        path = orbit_like(c2w[0], self.cfg.video_frames)
        orbits = render_views(model, sample, path, K[:1].expand(len(path), 3, 3), self.cfg.video_resolution, progress=f"{name}: rendering the orbit")
        near, far = self.cfg.data.near, self.cfg.data.far
        for j in range(len(sample.observation)):
            frames = [
                np.concatenate([to_uint8(rgb), to_uint8(depth_to_color(depth, opacity, near, far))], 1)
                for rgb, depth, opacity in zip(orbits["rgb"][j], orbits["depth"][j], orbits["opacity"][j])
            ]
            for ext in ("gif", "mp4"):
                written.append(save_video([upscaled(f) for f in frames], out_dir / f"{name}_sample{j}.{ext}"))
            points, colours = point_cloud(views, c2w, K, j)
            written.append(write_ply(out_dir / f"{name}_sample{j}.ply", points, colours))
        return written


# --- sampling and rendering ---------------------------------------------------------------------


def sample_scene(
    model: DFM, ctxt_obs: Tensor, ctxt_params: dict[str, Tensor], target: dict[str, Tensor], num_samples: int,
    seed: int = 0, **sampler_kwargs,
) -> Sample:
    """``num_samples`` scenes given context views ``(V, 3, H, W)`` with cameras (``c2w`` ``(V, 4, 4)``, ``K``),
    sampled by diffusing the view at ``target`` (``c2w`` ``(4, 4)``, ``K``): the sampled views
    ``(N, 3, H, W)`` and the scenes (a :class:`Scene` over a batch of N)."""
    targets = {k: v[None] for k, v in target.items()}
    sample = sample_autoregressive(model, ctxt_obs, ctxt_params, targets, num_samples, seed, **sampler_kwargs)
    return Sample(sample.observation[:, 0], sample.signal)


def sample_autoregressive(
    model: DFM, ctxt_obs: Tensor, ctxt_params: dict[str, Tensor], targets: dict[str, Tensor], num_samples: int,
    seed: int = 0, **sampler_kwargs,
) -> Sample:
    """Scenes sampled by diffusing the views at several target cameras in turn (``c2w`` ``(T, 4, 4)``, ``K``
    ``(T, 3, 3)``), each sampled view joining the context of the next (arguments as :func:`sample_scene`;
    the scene's bounds are the context's ``near``/``far``). Returns the last step's sample, whose scene is
    conditioned on the context and every sampled view (``observation`` ``(N, T, 3, H, W)``, all of them)."""
    device = next(model.parameters()).device
    n = num_samples
    ctxt = ctxt_obs.to(device).expand(n, *ctxt_obs.shape)
    views_of = {k: ctxt_params[k].to(device).expand(n, *ctxt_params[k].shape) for k in ("c2w", "K")}
    bounds = {k: ctxt_params[k].to(device).expand(n) for k in ("near", "far")}
    generator = torch.Generator(device).manual_seed(seed)
    views = []
    for c2w, K in zip(targets["c2w"], targets["K"]):
        target = {"c2w": c2w.to(device).expand(n, 4, 4), "K": K.to(device).expand(n, 3, 3), **bounds}
        sample = model.sample(ctxt, views_of | bounds, target, (n, *ctxt_obs.shape[1:]), generator=generator, **sampler_kwargs)
        views.append(sample.observation)
        ctxt = torch.cat([ctxt, sample.observation[:, None]], 1)
        views_of = {k: torch.cat([views_of[k], target[k][:, None]], 1) for k in views_of}
    return Sample(torch.stack(views, 1), sample.signal)


@torch.no_grad()
def render_views(model: DFM, sample: Sample, c2w: Tensor, K: Tensor, resolution: int, progress: str | None = None) -> dict[str, Tensor]:
    """Every sampled scene (N) from every camera ``(V, 4, 4)``, ``(V, 3, 3)``: ``rgb`` ``(N, V, 3, r, r)``,
    ``depth`` (ray distance) and ``opacity`` ``(N, V, 1, r, r)``, on the CPU. ``progress``: a progress bar's label."""
    renderer: VolumeRenderer = model.forward_model
    device = next(model.parameters()).device
    n, scene = len(sample.observation), sample.signal
    out = {"rgb": [], "depth": [], "opacity": []}
    for cam, k in tqdm(list(zip(c2w.to(device), K.to(device))), desc=progress, disable=progress is None, leave=False):
        cameras = {"c2w": cam.expand(n, 4, 4), "K": k.expand(n, 3, 3)}
        rendered = renderer.render(scene.field, scene.coarse_field, cameras, scene.near, scene.far, resolution)
        for key, name in (("rgb", "observation"), ("depth", "depth"), ("opacity", "opacity")):
            out[key].append(getattr(rendered, name).cpu())
    return {k: torch.stack(v, 1) for k, v in out.items()}


def orbit_like(c2w: Tensor, n: int) -> Tensor:
    """``n`` cameras on the circle about the world z axis through camera ``c2w``, starting at it."""
    x, y, z = c2w[:3, 3].tolist()
    radius = math.sqrt(x * x + y * y + z * z)
    return orbit(n, radius, math.degrees(math.asin(z / radius)), start_azimuth_deg=math.degrees(math.atan2(y, x)))


def point_cloud(views: dict[str, Tensor], c2w: Tensor, K: Tensor, index: int, min_opacity: float = 0.5) -> tuple[Tensor, Tensor]:
    """Points ``(P, 3)`` and colours ``(P, 3)`` in [0, 1] of sample ``index``: every pixel of every
    rendered view whose opacity exceeds ``min_opacity``, at its expected ray distance."""
    r = views["rgb"].shape[-1]
    origins, directions = image_rays(c2w, K, r, r)  # (V, r r, 3)
    depth = views["depth"][index].flatten(1)[..., None]  # (V, r r, 1)
    keep = views["opacity"][index].flatten(1) > min_opacity
    points = (origins + depth * directions)[keep]
    colours = (views["rgb"][index].flatten(2).transpose(1, 2)[keep] + 1) / 2
    return points, colours.clamp(0, 1)


def scene_grid(truth: Tensor, samples: Tensor) -> np.ndarray:
    """The true views ``(T, 3, H, W)`` in the first row (blank beyond T), then one row per sample ``(N, V, 3, H, W)``."""
    n, v = samples.shape[:2]
    first = torch.cat([truth, -torch.ones(v - len(truth), *truth.shape[1:])]) if len(truth) < v else truth[:v]
    rows = [torch.cat(list(first), 2), *[torch.cat(list(s), 2) for s in samples]]
    return upscaled(to_uint8(torch.cat(rows, 1)), 96, cell=truth.shape[-1])
