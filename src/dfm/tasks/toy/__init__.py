"""The toy task: low-dimensional signals seen through random 2-D projections, with exact posteriors.

It proves the method (Proposition 1 of the supplement): a DFM trained only on projections of
signals, never on the signals themselves, samples the true posterior ``p(S | context)``, which
here is known in closed form, so the distance to it can be measured (``benchmarks/posterior.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from dfm.config import check_values
from dfm.diffusion import NoiseSchedule
from dfm.forward_models import LinearProjection
from dfm.metrics import energy_distance
from dfm.model import DFM
from dfm.networks.linear_inverse import LinearInverseDenoiser
from dfm.tasks.base import ObjectiveConfig, SampleConfig, Task
from dfm.tasks.toy.problems import GaussianMixtureProblem, LinearToyProblem, ManifoldProblem
from dfm.training import TrainConfig
from dfm.visualize import figure_to_array, save_image, save_video, to_chw

PROBLEMS = {"gmm": GaussianMixtureProblem, "manifold": ManifoldProblem}


@dataclass
class ToyModelConfig:
    width: int = 256
    depth: int = 4
    precondition: bool = True  # Wiener-filter skip through the forward model (see LinearInverseDenoiser)
    prior_std: float = 1.0

    def __post_init__(self) -> None:
        check_values(self, "model", positive=["width", "depth", "prior_std"])


@dataclass
class ToyConfig:
    task: str = "toy"
    out_dir: str = "runs/toy"
    problem: str = "gmm"  # gmm | manifold
    problem_seed: int = 0  # defines the problem (mixture / curve)
    dataset_size: int = 1_000_000  # observation tuples drawn once; signals are never stored
    data_seed: int = 0
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        check_values(self, "", positive=["dataset_size"])


def make_problem(name: str, seed: int = 0) -> LinearToyProblem:
    if name not in PROBLEMS:
        raise ValueError(f"unknown toy problem {name!r}; available: {sorted(PROBLEMS)}")
    return PROBLEMS[name](seed=seed)


class ObservationDataset(Dataset):
    """Observation tuples of a toy problem, drawn once; the signals themselves are dropped.

    Fetches whole batches by fancy indexing (``__getitems__``), which is several times faster
    than collating hundreds of tiny per-example dicts.
    """

    collate_fn = staticmethod(lambda batch: batch)

    def __init__(self, problem: LinearToyProblem, size: int, seed: int):
        examples = problem.sample_examples(size, torch.Generator().manual_seed(seed))
        examples.pop("signal")
        self.data = examples
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.data.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        idx = torch.as_tensor(indices)
        return {k: v[idx] for k, v in self.data.items()}


class ExactDenoiser(nn.Module):
    """The Bayes-optimal denoiser ``E[S | context, x_t]`` of a toy problem, as a drop-in denoiser.

    Run through the same sampler as a network, it measures the sampler's own error."""

    def __init__(self, problem: LinearToyProblem, schedule: NoiseSchedule):
        super().__init__()
        self.problem, self.schedule = problem, schedule

    def forward(self, ctxt_obs: Tensor, ctxt_params: Tensor, noisy_obs: Tensor, t: Tensor, trgt_params: Tensor) -> Tensor:
        return self.problem.exact_denoiser(ctxt_obs, ctxt_params, noisy_obs, self.schedule.alpha_bar(t), trgt_params)


@dataclass
class HeldOut:
    """Held-out contexts with two independent exact posterior sample sets each."""

    ctxt_obs: Tensor  # (C, 2)
    ctxt_params: Tensor  # (C, 2, D)
    trgt_params: Tensor  # (C, N, 2, D): one target projection per sample
    exact: Tensor  # (C, N, D)
    exact2: Tensor  # (C, N, D)
    projection: Tensor  # (2, D): the held-out projection A_h


def held_out(problem: LinearToyProblem, contexts: int = 20, samples: int = 500, seed: int = 1234) -> HeldOut:
    g = torch.Generator().manual_seed(seed)
    ex = problem.sample_examples(contexts, g)
    trgt = problem.sample_projections(contexts * samples, g).view(contexts, samples, 2, -1)
    exact = torch.stack([problem.posterior_sample(ex["ctxt_obs"][i], ex["ctxt_params"][i], samples, g) for i in range(contexts)])
    exact2 = torch.stack([problem.posterior_sample(ex["ctxt_obs"][i], ex["ctxt_params"][i], samples, g) for i in range(contexts)])
    projection = problem.sample_projections(1, g)[0]
    return HeldOut(ex["ctxt_obs"], ex["ctxt_params"], trgt, exact, exact2, projection)


def model_device(model: nn.Module) -> torch.device:
    return next(iter(model.buffers())).device


def sample_signals(model: DFM, data: HeldOut, seed: int = 0, **sampler_kwargs) -> Tensor:
    """Posterior samples of S for every held-out context at once: ``(C, N, D)``."""
    c, n = data.trgt_params.shape[:2]
    device = model_device(model)
    ctxt_obs = data.ctxt_obs.repeat_interleave(n, 0).to(device)
    ctxt_params = data.ctxt_params.repeat_interleave(n, 0).to(device)
    trgt_params = data.trgt_params.flatten(0, 1).to(device)
    generator = torch.Generator(device).manual_seed(seed)
    out = model.sample(ctxt_obs, ctxt_params, trgt_params, (c * n, 2), generator=generator, **sampler_kwargs)
    return out.signal.view(c, n, -1).cpu()


def posterior_distances(samples: Tensor, data: HeldOut) -> dict[str, float]:
    """Energy distance to the exact posterior, as a ratio of means to the two-exact-sets floor,
    on S itself and on the held-out projection A_h S."""
    result = {}
    for name, f in (("signal", lambda s: s), ("held_out", lambda s: s @ data.projection.T)):
        model = torch.stack([energy_distance(f(s), f(e)) for s, e in zip(samples, data.exact)]).mean()
        floor = torch.stack([energy_distance(f(a), f(b)) for a, b in zip(data.exact2, data.exact)]).mean()
        result[f"ratio_{name}"] = (model / floor).item()
        result[f"floor_{name}"] = floor.item()
    return result


def pca_axes(points: Tensor) -> Tensor:
    """The two principal directions of a point set ``(N, D)`` -> ``(D, 2)``: the view of a plot."""
    centred = points - points.mean(0)
    return torch.linalg.svd(centred, full_matrices=False).Vh[:2].T


def scatter_figure(model_samples: Tensor, exact: Tensor, title: str) -> np.ndarray:
    """Model samples beside exact posterior samples, in the posterior's principal plane."""
    axes = pca_axes(exact)
    e, m = (exact @ axes).numpy(), (model_samples @ axes).numpy()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    a0.scatter(e[:, 0], e[:, 1], s=4, c="tab:gray", alpha=0.6)
    a0.set_title("exact posterior")
    a1.scatter(m[:, 0], m[:, 1], s=4, c="tab:blue", alpha=0.6)
    a1.set_title("DFM samples")
    fig.suptitle(title)
    fig.tight_layout()
    return figure_to_array(fig)


class ToyTask(Task):
    Config = ToyConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.problem = make_problem(cfg.problem, cfg.problem_seed)

    def build_model(self, training: bool = True) -> DFM:
        m = self.cfg.model
        schedule = NoiseSchedule(self.cfg.objective.diffusion_steps)
        denoiser = LinearInverseDenoiser(
            self.problem.signal_dim, self.problem.obs_dim, schedule,
            context_std=self.problem.context_noise, prior_std=m.prior_std,
            width=m.width, depth=m.depth, precondition=m.precondition,
        )
        return self.make_dfm(denoiser, LinearProjection(), schedule, training=training)

    def train_dataset(self) -> Dataset:
        return ObservationDataset(self.problem, self.cfg.dataset_size, self.cfg.data_seed)

    def preview(self, model: DFM, step: int) -> dict[str, Tensor]:
        data = held_out(self.problem, contexts=1, samples=300)
        samples = sample_signals(model, data, steps=25)
        return {"posterior": to_chw(scatter_figure(samples[0], data.exact[0], f"step {step}"))}

    def write_samples(self, model: DFM, out_dir: Path) -> list[Path]:
        """For 4 held-out contexts: scatter plots against the exact posterior, the samples as a
        tensor file, and a video of the sampling trajectory in observation space."""
        s = self.cfg.sample
        data = held_out(self.problem, contexts=4, samples=s.num_samples)
        samples = sample_signals(model, data, seed=s.seed, **s.sampler_kwargs())
        scores = posterior_distances(samples, data)
        frames = [scatter_figure(samples[i], data.exact[i], f"context {i}") for i in range(4)]
        written = [save_image(np.concatenate(frames, axis=0), out_dir / "samples.png")]
        torch.save({"samples": samples, "exact": data.exact, **scores}, out_dir / "samples.pt")
        written.append(out_dir / "samples.pt")
        video = self.trajectory_frames(model, data)
        written += [save_video(video, out_dir / "trajectory.gif"), save_video(video, out_dir / "trajectory.mp4")]
        return written

    def trajectory_frames(self, model: DFM, data: HeldOut) -> list[np.ndarray]:
        """Frames of the target observation moving from noise to posterior samples, for one
        context and one fixed target projection, over the exact distribution of that observation."""
        s, device = self.cfg.sample, model_device(model)
        n = data.exact.shape[1]
        a_t = data.trgt_params[0, :1].expand(n, -1, -1)
        truth = (data.exact[0] @ a_t[0].T).numpy()
        xs = []
        model.sample(
            data.ctxt_obs[:1].expand(n, -1).to(device), data.ctxt_params[:1].expand(n, -1, -1).to(device),
            a_t.to(device), (n, 2), generator=torch.Generator(device).manual_seed(s.seed),
            callback=lambda d: xs.append(d["x"].cpu().numpy()), **s.sampler_kwargs(),
        )
        lim = np.abs(truth).max() * 1.5
        frames = []
        for i, x in enumerate(xs):
            fig, ax = plt.subplots(figsize=(4, 4))
            ax.scatter(truth[:, 0], truth[:, 1], s=4, c="tab:gray", alpha=0.5, label="exact")
            ax.scatter(x[:, 0], x[:, 1], s=4, c="tab:blue", alpha=0.6, label="x_t")
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), title=f"target observation, step {i + 1}/{len(xs)}")
            ax.legend(loc="upper right")
            frames.append(figure_to_array(fig))
        return frames + frames[-1:] * 12  # hold the last frame
