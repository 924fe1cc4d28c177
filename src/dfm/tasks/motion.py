"""Single-image motion prediction: sample motions of a frame, seen only through the next frame.

The signal is a motion field (flow + softmax-splatting importance Z) of the context frame; the
forward model forward-warps the context frame by it (softmax splatting), so the target observation
is the next frame. A DiT reads the context frame and the noisy next frame (concatenated along
channels) and outputs the flow; Z follows from brightness constancy against the noisy next frame.
Two regularisers: an edge-aware smoothness term keeps the flow piecewise smooth along image edges,
and the warp's error at coarser scales pulls regions towards motions longer than a pixel. Where
a frame does not say which way something moves, samples must differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from dfm.config import check_values
from dfm.data.vimeo import DatasetError, Vimeo90K
from dfm.diffusion import NoiseSchedule
from dfm.model import DFM
from dfm.networks.dit import DiT
from dfm.regularizers import edge_aware_smoothness
from dfm.splatting import MODES, backward_warp, fill_holes, softsplat
from dfm.tasks.base import DiTConfig, ObjectiveConfig, SampleConfig, Task
from dfm.training import TrainConfig
from dfm.visualize import flow_to_color, save_image, save_video, to_chw, to_uint8, upscaled


class MotionField(NamedTuple):
    flow: Tensor  # (B, 2, H, W) displacement to the next frame in pixels, (dx, dy)
    metric: Tensor  # (B, 1, H, W) importance Z: where pixels collide, the larger Z wins


class SplatWarp(nn.Module):
    """The forward model: ``(MotionField, frame) -> frame forward-warped by the motion``.

    Target pixels no source pixel reaches (disocclusions) are filled from the covered pixels around
    them (:func:`dfm.splatting.fill_holes`, which says why), or stay 0 (mid-grey) with ``fill=False``:
    a forward warp cannot know what was hidden."""

    def __init__(self, mode: str = "softmax", fill: bool = True):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"splatting mode must be one of {MODES}, got {mode!r}")
        self.mode, self.fill = mode, fill

    def forward(self, signal: MotionField, frame: Tensor) -> Tensor:
        warped, covered = softsplat(frame, signal.flow, signal.metric, self.mode)
        return fill_holes(warped, covered) if self.fill else warped


def coarse_warp_error(
    motion: MotionField, frame: Tensor, target: Tensor, forward_model: SplatWarp | None = None, factors: tuple[int, ...] = (2, 4),
) -> Tensor:
    """Mean over ``factors`` k of the squared error of the warp at 1/k resolution: the frame, the
    flow (divided by k) and Z average-pooled by k, against the pooled target.

    A bilinear splat feels a displacement only within one pixel, so at full resolution the warp's
    error does not say how far a region still has to go; pooled by 4, a 3 px motion is under a
    pixel, and the pooled flow is the mean over a region, which is what has to reach the true
    motion (per-pixel flows optimised from 0 on the sprite data: 1.9 px over a sprite without this
    term, 2.2 px with it, for 3 px true motion). It is 0 where the warp is exact at every scale."""
    forward_model = forward_model or SplatWarp()
    total = frame.new_zeros(())
    for k in factors:
        pooled = MotionField(F.avg_pool2d(motion.flow, k) / k, F.avg_pool2d(motion.metric, k))
        total = total + (forward_model(pooled, F.avg_pool2d(frame, k)) - F.avg_pool2d(target, k)).square().mean()
    return total / len(factors)


class MotionDenoiser(nn.Module):
    """``(context frame, -, noisy next frame, t, -) -> MotionField`` with a DiT over both frames.

    The DiT outputs the flow (``flow_scale`` pixels per unit). Z is not the network's: it is the
    log-likelihood that the noisy next frame ``x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps`` shows
    context pixel ``p`` where the flow sends it (brightness constancy, as softmax splatting sets Z
    from the frames), with ``min_sigma`` the model error allowed on clean images::

        Z(p) = -|x_t(p + flow(p)) - sqrt(abar) I_0(p)|^2 / (2 ((1 - abar) + abar min_sigma^2))

    So where pixels collide, the one that matches the next frame wins, and a pixel sent the wrong
    way loses to whatever is really there. At high noise every Z is alike and collisions average.
    A learnt Z settled the wrong way round on the sprite data (the still background above the
    moving sprites, which makes a moved sprite look like no motion at all), so the flows stayed
    short. Z is squashed into ``(-metric_range, 0]``. The range bounds how much a matching pixel
    outweighs a mismatched one (e^4 = 55 at the default 4), and with it how much a mismatched pixel's
    gradient is scaled down: at 20 the flows of a small model barely moved from 0 in training.
    """

    def __init__(self, dit: DiT, schedule: NoiseSchedule, flow_scale: float = 4.0, min_sigma: float = 0.05, metric_range: float = 4.0):
        super().__init__()
        self.dit, self.schedule = dit, schedule
        self.flow_scale, self.min_sigma, self.metric_range = flow_scale, min_sigma, metric_range

    def forward(self, ctxt_obs: Tensor, ctxt_params, noisy_obs: Tensor, t: Tensor, trgt_params) -> MotionField:
        flow = self.dit(torch.cat([ctxt_obs, noisy_obs], dim=1), t) * self.flow_scale
        abar = self.schedule.alpha_bar(t).to(flow.dtype).view(-1, 1, 1, 1)
        residual = backward_warp(noisy_obs, flow) - abar.sqrt() * ctxt_obs
        variance = (1 - abar) + abar * self.min_sigma**2
        log_likelihood = -residual.square().sum(1, keepdim=True) / (2 * variance)
        return MotionField(flow, self.metric_range * torch.tanh(log_likelihood / self.metric_range))


class FramePairs(Dataset):
    """Vimeo90K-layout frame pairs as DFM batches: the context frame is also the forward model's
    parameter (the image it warps); there are no context parameters."""

    def __init__(self, root: str | Path, split: str, resolution: int | None):
        self.pairs = Vimeo90K(root, split=split, resolution=resolution)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = self.pairs[i]
        return {"ctxt_obs": item["ctxt_obs"], "trgt_obs": item["trgt_obs"], "trgt_params": item["ctxt_obs"]}


@dataclass
class MotionModelConfig(DiTConfig):
    flow_scale: float = 4.0  # pixels per unit of network output
    splatting: str = "softmax"  # summation | average | linear | softmax
    fill_holes: bool = True  # fill disocclusions from the pixels around them (False: leave them at 0)
    min_sigma: float = 0.05  # model error on clean frames in Z's brightness-constancy likelihood (see MotionDenoiser)
    metric_range: float = 4.0  # Z in (-metric_range, 0]: how far one colliding pixel can outweigh another

    def __post_init__(self) -> None:
        super().__post_init__()
        check_values(self, self.section, positive=["flow_scale", "metric_range"], non_negative=["min_sigma"])


@dataclass
class MotionDataConfig:
    root: str = "data/motion_sprites"  # a Vimeo90K triplet/septuplet directory (`dfm data motion` writes one)
    resolution: int | None = None  # resize + centre-crop to this square size; None: as stored

    def __post_init__(self) -> None:
        check_values(self, "data", positive=["resolution"])


@dataclass
class MotionConfig:
    task: str = "motion"
    out_dir: str = "runs/motion"
    data: MotionDataConfig = field(default_factory=MotionDataConfig)
    model: MotionModelConfig = field(default_factory=MotionModelConfig)
    smoothness_edge_weight: float = 3.0  # gamma in exp(-gamma |grad I|), I in [-1, 1]
    objective: ObjectiveConfig = field(default_factory=lambda: ObjectiveConfig(loss_weights={"novel": 0.0, "smoothness": 0.03, "multiscale": 1.0}))
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(num_samples=8))
    sample_inputs: int = 4  # test-split frames that `dfm sample` / `dfm demo` show

    def __post_init__(self) -> None:
        check_values(self, "", positive=["sample_inputs"], non_negative=["smoothness_edge_weight"])


def sample_motions(model: DFM, frames: Tensor, num_samples: int, seed: int = 0, **sampler_kwargs) -> tuple[Tensor, MotionField]:
    """``num_samples`` next frames and motion fields for every frame of ``frames`` ``(B, 3, H, W)``:
    returns ``(B, N, 3, H, W)`` frames and a MotionField with ``(B, N, ...)`` tensors."""
    b, n = frames.shape[0], num_samples
    device = next(model.parameters()).device
    ctxt = frames.to(device).repeat_interleave(n, 0)
    generator = torch.Generator(device).manual_seed(seed)
    out = model.sample(ctxt, None, ctxt, tuple(ctxt.shape), generator=generator, **sampler_kwargs)

    def per_frame(x: Tensor) -> Tensor:
        return x.view(b, n, *x.shape[1:]).cpu()

    return per_frame(out.observation), MotionField(per_frame(out.signal.flow), per_frame(out.signal.metric))


def motion_video(frame: Tensor, motion: MotionField, steps: int = 12, forward_model: SplatWarp | None = None) -> list[Tensor]:
    """The frame moving along its motion: forward warps by ``s * flow`` for s from 0 to 1 and back."""
    forward_model = forward_model or SplatWarp()
    ramp = [s / (steps - 1) for s in range(steps)]
    warped = [forward_model(MotionField(s * motion.flow[None], motion.metric[None]), frame[None])[0] for s in ramp]
    return warped + warped[::-1]


class MotionTask(Task):
    Config = MotionConfig

    def build_model(self, training: bool = True) -> DFM:
        m = self.cfg.model
        dit = m.build(6, 2)
        gamma = self.cfg.smoothness_edge_weight
        forward_model = SplatWarp(m.splatting, m.fill_holes)
        regularizers = {
            "smoothness": lambda signal, batch, predictions: edge_aware_smoothness(signal.flow, batch["trgt_params"], gamma),
            "multiscale": lambda signal, batch, predictions: coarse_warp_error(signal, batch["trgt_params"], batch["trgt_obs"], forward_model),
        }
        schedule = NoiseSchedule(self.cfg.objective.diffusion_steps)
        denoiser = MotionDenoiser(dit, schedule, m.flow_scale, m.min_sigma, m.metric_range)
        return self.make_dfm(denoiser, forward_model, schedule, regularizers, training=training)

    def train_dataset(self) -> Dataset:
        root = Path(self.cfg.data.root)
        if not root.exists():
            raise DatasetError(
                f"data.root {root} does not exist: write the procedural dataset with `dfm data motion --out {root}`, "
                "or point data.root at a Vimeo90K triplet/septuplet directory"
            )
        return FramePairs(root, "train", self.cfg.data.resolution)

    def test_frames(self, count: int) -> tuple[Tensor, Tensor]:
        """``count`` test pairs (context frames, true next frames), evenly spaced over the test split."""
        pairs = Vimeo90K(self.cfg.data.root, "test", self.cfg.data.resolution)
        step = max(1, len(pairs) // count)
        items = [pairs[i] for i in range(0, step * count, step)[: len(pairs)]]
        return torch.stack([it["ctxt_obs"] for it in items]), torch.stack([it["trgt_obs"] for it in items])

    def preview(self, model: DFM, step: int) -> dict[str, Tensor]:
        frames, truth = self.test_frames(2)
        nexts, motion = sample_motions(model, frames, 4, steps=20)
        return {"motion": to_chw(motion_panel(frames, truth, nexts, motion.flow))}

    def write_samples(self, model: DFM, out_dir: Path) -> list[Path]:
        """For ``sample_inputs`` test frames: a PNG panel (context, true next frame, sampled next
        frames and their flows as colour-wheel images), the samples as tensors, and per sample a
        GIF and an MP4 of the frame moving along the sampled motion."""
        s = self.cfg.sample
        frames, truth = self.test_frames(self.cfg.sample_inputs)
        nexts, motion = sample_motions(model, frames, s.num_samples, seed=s.seed, progress=True, **s.sampler_kwargs())
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [save_image(motion_panel(frames, truth, nexts, motion.flow), out_dir / "motions.png")]
        torch.save({"frames": frames, "truth": truth, "samples": nexts, "flow": motion.flow, "metric": motion.metric}, out_dir / "samples.pt")
        written.append(out_dir / "samples.pt")
        for i in range(frames.shape[0]):
            for j in range(s.num_samples):
                video = motion_video(frames[i], MotionField(motion.flow[i, j], motion.metric[i, j]), forward_model=model.forward_model)
                clip = [upscaled(to_uint8(f)) for f in video]
                for ext in ("gif", "mp4"):
                    written.append(save_video(clip, out_dir / f"input{i}_sample{j}.{ext}"))
        return written


def motion_panel(frames: Tensor, truth: Tensor, nexts: Tensor, flows: Tensor) -> np.ndarray:
    """One row per input: context, true next frame, the N sampled next frames; below each sample its
    flow as a colour wheel (one length scale for the whole panel). ``(B, 3, H, W)``, ``(B, N, ...)``."""
    max_norm = max(float(flows.norm(dim=2).max()), 1e-3)
    rows = []
    for i in range(frames.shape[0]):
        blank = torch.ones_like(frames[i])
        images = [frames[i], truth[i], *nexts[i]]
        colours = [blank, blank, *[flow_to_color(f, max_norm) for f in flows[i]]]
        rows.append(torch.cat([torch.cat(images, 2), torch.cat(colours, 2)], 1))
    return upscaled(to_uint8(torch.cat(rows, 1)), 96, cell=frames.shape[-1])
