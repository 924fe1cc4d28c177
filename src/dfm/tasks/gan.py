"""GAN inversion: sample generator latents whose images agree with a small visible patch.

The signal is a latent code; the forward model is a fixed pretrained generator (rendered at the
training resolution). The context is a generated image with all but one square patch masked out
(plus the mask itself), the target is the whole image. A DiT reads the context and the noisy target
and predicts the latent, so samples agree with the patch and differ elsewhere. The optimisation
baseline (``invert``) fits one latent per image to the patch with Adam.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from dfm.config import check_values
from dfm.diffusion import NoiseSchedule
from dfm.generators import GeneratorForward, invert_patch, load_generator, truncated_latents
from dfm.model import DFM
from dfm.networks.dit import DiT
from dfm.tasks.base import DiTConfig, ObjectiveConfig, SampleConfig, Task
from dfm.training import TrainConfig
from dfm.visualize import save_image, to_chw, to_uint8


@dataclass
class GeneratorConfig:
    path: str | None = None  # a torch.save'd state dict; None: the DCGAN face generator of gan-face-generate
    architecture: str = "dcgan64"
    latent_dim: int = 100
    psi: float = 0.5  # truncation of the ground-truth latents (as in the paper)

    def __post_init__(self) -> None:
        check_values(self, "generator", positive=["latent_dim"], non_negative=["psi"])


@dataclass
class InversionConfig:
    """The optimisation baseline (``dfm invert``)."""

    steps: int = 500
    lr: float = 0.05
    restarts: int = 1

    def __post_init__(self) -> None:
        check_values(self, "inversion", positive=["lr", "restarts"], non_negative=["steps"])


@dataclass
class GanConfig:
    task: str = "gan"
    out_dir: str = "runs/gan"
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    resolution: int = 32  # observations (training, patches) at this size; outputs also at the generator's own
    patch_min: int = 4  # side of the visible square patch, in pixels at `resolution`
    patch_max: int = 16
    dataset_size: int = 1_000_000  # images are generated on the fly from (data_seed, index)
    data_seed: int = 0
    held_out_seed: int = 1_000_003  # images for samples, previews and benchmarks (not the training stream)
    model: DiTConfig = field(default_factory=lambda: DiTConfig(patch_size=4))  # a global read-out needs no fine tokens
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(num_samples=8))
    sample_inputs: int = 4
    inversion: InversionConfig = field(default_factory=InversionConfig)

    def __post_init__(self) -> None:
        check_values(self, "", positive=["dataset_size", "sample_inputs"])
        if not 1 <= self.patch_min <= self.patch_max <= self.resolution:
            raise ValueError(f"need 1 <= patch_min <= patch_max <= resolution, got {self.patch_min}, {self.patch_max}, {self.resolution}")


def patch_context(images: Tensor, masks: Tensor) -> Tensor:
    """The context observation: the image where the mask is 1, zero elsewhere, and the mask itself
    (so that a black patch and no patch differ): ``(B, 4, H, W)``."""
    return torch.cat([images * masks, masks], dim=1)


class GeneratedPatches(Dataset):
    """Generator samples (truncated latents) with one random square patch visible, made on the fly.

    Example ``i`` depends only on ``(seed, i)``, so the data is the same however it is batched,
    shuffled or resumed. Training batches hold only images: DFM never sees a latent.
    """

    def __init__(self, forward: GeneratorForward, cfg: GanConfig, seed: int, size: int):
        self.forward, self.cfg, self.seed, self.size = forward, cfg, seed, size

    collate_fn = staticmethod(lambda batch: batch)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        examples = self.examples(indices)
        return {"ctxt_obs": examples["ctxt_obs"], "trgt_obs": examples["trgt_obs"]}

    def examples(self, indices: list[int]) -> dict[str, Tensor]:
        """Examples with their true ``latent`` too, for evaluation."""
        latents, masks = [], []
        r, g = self.cfg.resolution, torch.Generator()
        for i in indices:
            g.manual_seed(self.seed * 1_000_000_007 + int(i))
            latents.append(truncated_latents(1, self.cfg.generator.latent_dim, self.cfg.generator.psi, g)[0])
            s = int(torch.randint(self.cfg.patch_min, self.cfg.patch_max + 1, (), generator=g))
            y, x = (int(v) for v in torch.randint(0, r - s + 1, (2,), generator=g))
            mask = torch.zeros(1, r, r)
            mask[:, y : y + s, x : x + s] = 1
            masks.append(mask)
        latents, masks = torch.stack(latents), torch.stack(masks)
        with torch.no_grad():
            images = self.forward(latents)
        return {"ctxt_obs": patch_context(images, masks), "trgt_obs": images, "latent": latents}


class LatentDenoiser(nn.Module):
    """``(patch context, -, noisy image, t, -) -> latent``: a DiT over context and noisy target whose
    per-pixel outputs are averaged into one latent (every token attends to the whole image, so the
    average is a learned global read-out), plus a learned offset.

    The DiT's output starts at zero, so the offset is the first prediction. It starts at a random
    typical latent (std ``init_std``) rather than at the mean latent 0, because 0 can be a dead point
    of a generator: for the DCGAN every first-layer ReLU is off there, so no gradient would flow.
    """

    def __init__(self, dit: DiT, latent_dim: int, init_std: float = 0.5):
        super().__init__()
        self.dit = dit
        self.offset = nn.Parameter(init_std * torch.randn(latent_dim))

    def forward(self, ctxt_obs: Tensor, ctxt_params, noisy_obs: Tensor, t: Tensor, trgt_params) -> Tensor:
        return self.dit(torch.cat([ctxt_obs, noisy_obs], dim=1), t).mean(dim=(-2, -1)) + self.offset


class GanTask(Task):
    Config = GanConfig

    def __init__(self, cfg: GanConfig):
        super().__init__(cfg)
        g = cfg.generator
        self.generator = load_generator(g.path, g.architecture, latent_dim=g.latent_dim)

    def observe(self, resolution: int | None) -> GeneratorForward:
        """A forward model with its own copy of the generator, so that moving the model to a GPU
        leaves the copies of the data pipeline and of the evaluation code on the CPU."""
        return GeneratorForward(copy.deepcopy(self.generator), resolution)

    def build_model(self, training: bool = True) -> DFM:
        m, g = self.cfg.model, self.cfg.generator
        dit = m.build(7, g.latent_dim)
        schedule = NoiseSchedule(self.cfg.objective.diffusion_steps)
        return self.make_dfm(LatentDenoiser(dit, g.latent_dim, g.psi), self.observe(self.cfg.resolution), schedule, training=training)

    def train_dataset(self) -> Dataset:
        return GeneratedPatches(self.observe(self.cfg.resolution), self.cfg, self.cfg.data_seed, self.cfg.dataset_size)

    def held_out(self, count: int) -> dict[str, Tensor]:
        """``count`` held-out examples: ``ctxt_obs``, ``trgt_obs`` and the true ``latent``."""
        data = GeneratedPatches(self.observe(self.cfg.resolution), self.cfg, self.cfg.held_out_seed, count)
        return data.examples(list(range(count)))

    def sample_latents(self, model: DFM, ctxt_obs: Tensor, num_samples: int, seed: int = 0, **sampler_kwargs) -> Tensor:
        """``(B, N, latent_dim)`` latents sampled for every context of ``ctxt_obs``."""
        b, r = ctxt_obs.shape[0], self.cfg.resolution
        device = next(model.parameters()).device
        ctxt = ctxt_obs.to(device).repeat_interleave(num_samples, 0)
        generator = torch.Generator(device).manual_seed(seed)
        out = model.sample(ctxt, None, None, (ctxt.shape[0], 3, r, r), generator=generator, **sampler_kwargs)
        return out.signal.view(b, num_samples, -1).cpu()

    def invert_latents(self, ctxt_obs: Tensor, seed: int = 0) -> Tensor:
        """The optimisation baseline: one latent per context, ``(B, 1, latent_dim)``."""
        inv = self.cfg.inversion
        images, masks = ctxt_obs[:, :3], ctxt_obs[:, 3:]
        z = invert_patch(
            self.observe(self.cfg.resolution), images, masks, steps=inv.steps, lr=inv.lr, restarts=inv.restarts,
            generator=torch.Generator().manual_seed(seed), latent_dim=self.cfg.generator.latent_dim, progress=True,
        )
        return z[:, None]

    def grid(self, ctxt_obs: Tensor, latents: Tensor, true_latents: Tensor, resolution: int | None) -> np.ndarray:
        """One row per input: the patch (grey elsewhere), the ground truth, then one image per latent."""
        render = self.observe(resolution)
        with torch.no_grad():
            truth = render(true_latents)
            samples = render(latents.flatten(0, 1)).view(*latents.shape[:2], *truth.shape[1:])
        size = truth.shape[-1]
        patch = nn.functional.interpolate(ctxt_obs, size=(size, size), mode="nearest")
        shown = patch[:, :3] * patch[:, 3:] + 0.6 * (1 - patch[:, 3:])  # light grey outside the patch
        rows = [torch.cat([shown[i], truth[i], *samples[i]], dim=2) for i in range(len(truth))]
        image = to_uint8(torch.cat(rows, dim=1))
        factor = max(1, 64 // size)
        return image.repeat(factor, 0).repeat(factor, 1)

    def preview(self, model: DFM, step: int) -> dict[str, Tensor]:
        data = self.held_out(2)
        latents = self.sample_latents(model, data["ctxt_obs"], 4, steps=20)
        return {"samples": to_chw(self.grid(data["ctxt_obs"], latents, data["latent"], self.cfg.resolution))}

    def write_grids(self, latents: Tensor, data: dict[str, Tensor], out_dir: Path, name: str) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [
            save_image(self.grid(data["ctxt_obs"], latents, data["latent"], self.cfg.resolution), out_dir / f"{name}.png"),
            save_image(self.grid(data["ctxt_obs"], latents, data["latent"], None), out_dir / f"{name}_native.png"),
        ]
        torch.save({"latents": latents, "true_latents": data["latent"], "ctxt_obs": data["ctxt_obs"]}, out_dir / f"{name}.pt")
        return [*written, out_dir / f"{name}.pt"]

    def write_samples(self, model: DFM, out_dir: Path) -> list[Path]:
        """For ``sample_inputs`` held-out patches: a grid (patch, ground truth, samples) at the training
        resolution and at the generator's native one, and the latents."""
        s = self.cfg.sample
        data = self.held_out(self.cfg.sample_inputs)
        latents = self.sample_latents(model, data["ctxt_obs"], s.num_samples, seed=s.seed, **s.sampler_kwargs())
        return self.write_grids(latents, data, out_dir, "samples")

    def invert(self, out_dir: Path) -> list[Path]:
        """The optimisation baseline on the same held-out patches, written like the samples."""
        data = self.held_out(self.cfg.sample_inputs)
        start = time.perf_counter()
        latents = self.invert_latents(data["ctxt_obs"], seed=self.cfg.sample.seed)
        print(f"inverted {len(latents)} patches in {time.perf_counter() - start:.1f} s")
        return self.write_grids(latents, data, out_dir, "inversions")
