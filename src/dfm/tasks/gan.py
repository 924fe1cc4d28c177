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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from dfm.config import check_values
from dfm.diffusion import NoiseSchedule
from dfm.generators import ARCHITECTURES, GeneratorForward, load_generator, resize
from dfm.mcmc import MCMCResult, hmc
from dfm.model import DFM
from dfm.networks.dit import DiT
from dfm.tasks.base import DiTConfig, ObjectiveConfig, SampleConfig, Task
from dfm.training import TrainConfig
from dfm.visualize import save_image, to_chw, to_uint8


@dataclass
class GeneratorConfig:
    path: str | None = None  # weight file (see dfm.generators.load_generator); None: gan-face-generate's DCGAN
    architecture: str = "dcgan64"  # dcgan64 | stylegan2
    latent_dim: int = 100  # dcgan64's latent size
    space: str = "z"  # the signal: z (dcgan64, stylegan2), w or w+ (stylegan2; the paper samples w)
    psi: float = 0.5  # truncation of the prior latents, the ground truth (as in the paper); in w for stylegan2
    options: dict[str, Any] = field(default_factory=dict)  # more architecture options, e.g. stylegan2's img_resolution
    random_init: bool = False  # a randomly initialised generator instead of weights (tests, shape checks)

    def __post_init__(self) -> None:
        check_values(self, "generator", positive=["latent_dim"], non_negative=["psi"])
        spaces = {"dcgan64": ("z",), "stylegan2": ("z", "w", "w+")}
        if self.architecture not in spaces:
            raise ValueError(f"generator.architecture must be one of {sorted(spaces)}, got {self.architecture!r}")
        if self.space not in spaces[self.architecture]:
            raise ValueError(f"generator.space of {self.architecture} must be one of {spaces[self.architecture]}, got {self.space!r}")
        if self.architecture == "stylegan2" and self.space == "z" and self.psi != 1:
            raise ValueError("generator.psi truncates in w: with stylegan2 in space z it must be 1")


def build_generator(g: GeneratorConfig) -> nn.Module:
    """The frozen generator of ``g``: loaded from its weight file, or randomly initialised (seed 0)."""
    options = {"latent_dim": g.latent_dim} if g.architecture == "dcgan64" else {"space": g.space}
    options |= g.options
    if not g.random_init:
        return load_generator(g.path, g.architecture, **options)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ARCHITECTURES[g.architecture](**options).eval().requires_grad_(False)


@dataclass
class InversionConfig:
    """The optimisation baseline (``dfm invert``): the maximum of the posterior, by Adam on the prior's noise."""

    steps: int = 500
    lr: float = 0.05
    restarts: int = 1  # independent prior starts; the one reaching the highest posterior density is kept

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
    # std of Gaussian noise on the visible patch (images in [-1, 1]): it makes p(latent | patch) a density,
    # the exact posterior (GanTask.log_posterior) that benchmarks/gan.py samples by MCMC as the reference
    patch_noise: float = 0.1
    # train with the image at the generator's own resolution as a novel view (DFM's novel term): latent
    # directions that the training resolution averages away are then constrained too
    native_view: bool = True
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
        check_values(self, "", positive=["dataset_size", "sample_inputs"], non_negative=["patch_noise"])
        if not 1 <= self.patch_min <= self.patch_max <= self.resolution:
            raise ValueError(f"need 1 <= patch_min <= patch_max <= resolution, got {self.patch_min}, {self.patch_max}, {self.resolution}")


def patch_context(images: Tensor, masks: Tensor) -> Tensor:
    """The context observation: the image where the mask is 1, zero elsewhere, and the mask itself
    (so that a black patch and no patch differ): ``(B, 4, H, W)``."""
    return torch.cat([images * masks, masks], dim=1)


class GeneratedPatches(Dataset):
    """Generator samples (truncated prior latents) with one random square patch visible (plus noise of std
    ``patch_noise``), made on the fly.

    Example ``i`` depends only on ``(seed, i)``, so the data is the same however it is batched,
    shuffled or resumed. Training batches hold only images: DFM never sees a latent.
    """

    def __init__(self, forward: GeneratorForward, cfg: GanConfig, seed: int, size: int):
        self.forward, self.cfg, self.seed, self.size = forward, cfg, seed, size

    collate_fn = staticmethod(lambda batch: batch)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        first = lambda v: {k: first(x) for k, x in v.items()} if isinstance(v, dict) else v[0]  # noqa: E731
        return first(self.__getitems__([i]))

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        examples = self.examples(indices)
        batch = {"ctxt_obs": examples["ctxt_obs"], "trgt_obs": examples["trgt_obs"]}
        if self.cfg.native_view:
            batch |= {"novel_obs": examples["native"], "novel_params": {"resolution": torch.zeros(len(indices), dtype=torch.long)}}
        return batch

    def examples(self, indices: list[int]) -> dict[str, Tensor]:
        """Examples with their true ``latent`` and the ``native`` image (the generator's resolution) too."""
        noises, masks, errors = [], [], []
        r, g, generator = self.cfg.resolution, torch.Generator(), self.forward.generator
        for i in indices:
            g.manual_seed(self.seed * 1_000_000_007 + int(i))
            noises.append(torch.randn(generator.noise_dim, generator=g))
            s = int(torch.randint(self.cfg.patch_min, self.cfg.patch_max + 1, (), generator=g))
            y, x = (int(v) for v in torch.randint(0, r - s + 1, (2,), generator=g))
            mask = torch.zeros(1, r, r)
            mask[:, y : y + s, x : x + s] = 1
            masks.append(mask)
            errors.append(self.cfg.patch_noise * torch.randn(3, r, r, generator=g))
        masks = torch.stack(masks)
        with torch.no_grad():
            latents = generator.latents_from_noise(torch.stack(noises), self.cfg.generator.psi)
            native = generator(latents)
            images = resize(native, r)
        return {
            "ctxt_obs": patch_context(images + torch.stack(errors), masks), "trgt_obs": images, "latent": latents, "native": native,
        }


class LatentDenoiser(nn.Module):
    """``(patch context, -, noisy image, t, -) -> latent``: a DiT over context and noisy target whose
    per-pixel outputs are averaged into one latent (every token attends to the whole image, so the
    average is a learned global read-out), plus a learned offset.

    Self-conditioned (``self_conditioned``), it also reads the image of its own previous latent
    (``previous``, zeros when there is none): inverting a generator in one pass is hard, correcting an
    estimate by comparing its image with the target is easier (an encoder refined iteratively).

    The DiT's output starts at zero, so the offset is the first prediction. It starts at a random
    typical latent (std ``init_std``) rather than at the mean latent 0, because 0 can be a dead point
    of a generator: for the DCGAN every first-layer ReLU is off there, so no gradient would flow.
    """

    def __init__(self, dit: DiT, latent_dim: int, init_std: float = 0.5, self_conditioned: bool = False):
        super().__init__()
        self.dit, self.self_conditioned = dit, self_conditioned
        self.offset = nn.Parameter(init_std * torch.randn(latent_dim))

    @staticmethod
    def in_channels(self_conditioned: bool) -> int:
        """Context (image and mask), noisy image, and the previous estimate's image if self-conditioned."""
        return 4 + 3 + 3 * self_conditioned

    def forward(self, ctxt_obs: Tensor, ctxt_params, noisy_obs: Tensor, t: Tensor, trgt_params, previous: Tensor | None = None) -> Tensor:
        inputs = [ctxt_obs, noisy_obs]
        if self.self_conditioned:
            inputs.append(torch.zeros_like(noisy_obs) if previous is None else previous)
        return self.dit(torch.cat(inputs, dim=1), t).mean(dim=(-2, -1)) + self.offset


class GanTask(Task):
    Config = GanConfig

    def __init__(self, cfg: GanConfig):
        super().__init__(cfg)
        self.generator = build_generator(cfg.generator)

    def observe(self, resolution: int | None) -> GeneratorForward:
        """A forward model with its own copy of the generator, so that moving the model to a GPU
        leaves the copies of the data pipeline and of the evaluation code on the CPU."""
        return GeneratorForward(copy.deepcopy(self.generator), resolution)

    def build_model(self, training: bool = True) -> DFM:
        m, g, latent_dim = self.cfg.model, self.cfg.generator, self.generator.latent_dim
        self_conditioned = self.cfg.objective.self_condition > 0
        denoiser = LatentDenoiser(m.build(LatentDenoiser.in_channels(self_conditioned), latent_dim), latent_dim, g.psi, self_conditioned)
        schedule = NoiseSchedule(self.cfg.objective.diffusion_steps)
        weights = self.cfg.objective.loss_weights | ({} if self.cfg.native_view else {"novel": 0.0})  # no novel view without it
        return self.make_dfm(denoiser, self.observe(self.cfg.resolution), schedule, loss_weights=weights, training=training)

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

    def log_posterior(self, ctxt_obs: Tensor) -> Callable[[Tensor], Tensor]:
        """The exact posterior of the P contexts ``ctxt_obs`` (P, 4, r, r) over the prior's noise, up to a constant:
        ``u`` (P, C, noise_dim) -> (P, C) with

            log p(u | patch) = -|u|^2 / 2 - |mask * (G(latent(u)) - patch)|^2 / (2 patch_noise^2),

        ``latent(u)`` the generator's truncated prior map (``latents_from_noise``). Every prior here is the
        image of N(0, I), so this is the posterior of the latents too, and it is what the model learns to
        sample (the training patches carry the same noise). MCMC samples it; the optimisation baseline
        maximises it."""
        sigma, psi = self.cfg.patch_noise, self.cfg.generator.psi
        if sigma <= 0:
            raise ValueError("the exact posterior needs patch_noise > 0 (with noise-free patches it is not a density)")
        render = self.observe(self.cfg.resolution).to(ctxt_obs.device)
        generator = render.generator
        patch, mask = ctxt_obs[:, None, :3], ctxt_obs[:, None, 3:]

        def log_prob(u: Tensor) -> Tensor:
            images = render(generator.latents_from_noise(u.flatten(0, 1), psi)).view(*u.shape[:2], *patch.shape[2:])
            misfit = ((images - patch) * mask).square().sum((2, 3, 4))
            return -0.5 * u.square().sum(-1) - misfit / (2 * sigma**2)

        return log_prob

    def latents(self, u: Tensor) -> Tensor:
        """The latents of prior noise ``u`` (..., noise_dim)."""
        flat = self.generator.latents_from_noise(u.reshape(-1, u.shape[-1]), self.cfg.generator.psi)
        return flat.view(*u.shape[:-1], -1)

    def posterior_noise(
        self, ctxt_obs: Tensor, chains: int, steps: int, warmup: int, leapfrog: int = 10, seed: int = 0, progress: bool = False,
    ) -> MCMCResult:
        """Exact posterior samples of the prior noise for every context, by HMC from ``chains`` prior draws each
        (:func:`dfm.mcmc.hmc`, with its convergence diagnostics)."""
        g = torch.Generator().manual_seed(seed)
        init = torch.randn(len(ctxt_obs), chains, self.generator.noise_dim, generator=g)
        return hmc(self.log_posterior(ctxt_obs), init, steps=steps, warmup=warmup, leapfrog=leapfrog, generator=g, progress=progress)

    def invert_noise(self, ctxt_obs: Tensor, restarts: int | None = None, seed: int = 0, progress: bool = False) -> tuple[Tensor, Tensor]:
        """The optimisation baseline: Adam on the prior noise from ``restarts`` prior draws per context, towards
        the posterior's maximum. Returns every restart's noise (P, R, noise_dim) and log density (P, R)."""
        inv = self.cfg.inversion
        restarts = inv.restarts if restarts is None else restarts
        log_prob = self.log_posterior(ctxt_obs)
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(len(ctxt_obs), restarts, self.generator.noise_dim, generator=g).requires_grad_(True)
        optimizer = torch.optim.Adam([u], lr=inv.lr)
        with torch.enable_grad():
            for _ in tqdm(range(inv.steps), desc="inverting", disable=not progress):
                loss = -log_prob(u).sum()  # a sum keeps every restart's gradient independent of the others
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            return u.detach(), log_prob(u)

    def invert_latents(self, ctxt_obs: Tensor, seed: int = 0) -> Tensor:
        """The optimisation baseline: one latent per context, the best restart's, ``(B, 1, latent_dim)``."""
        u, log_prob = self.invert_noise(ctxt_obs, seed=seed, progress=True)
        best = u[torch.arange(len(u)), log_prob.argmax(1)]
        return self.latents(best)[:, None]

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
        latents = self.sample_latents(model, data["ctxt_obs"], s.num_samples, seed=s.seed, progress=True, **s.sampler_kwargs())
        return self.write_grids(latents, data, out_dir, "samples")

    def invert(self, out_dir: Path) -> list[Path]:
        """The optimisation baseline on the same held-out patches, written like the samples."""
        data = self.held_out(self.cfg.sample_inputs)
        start = time.perf_counter()
        latents = self.invert_latents(data["ctxt_obs"], seed=self.cfg.sample.seed)
        print(f"inverted {len(latents)} patches in {time.perf_counter() - start:.1f} s")
        return self.write_grids(latents, data, out_dir, "inversions")
