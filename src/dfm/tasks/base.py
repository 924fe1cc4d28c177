"""What every task provides: a config schema, a model, a dataset, previews and sample outputs.

A task is thin wiring: it chooses a denoiser and a forward model, builds the dataset and writes
what a user wants to look at. Everything else (objective, sampling, training) is the engine's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from torch import Tensor, nn
from torch.utils.data import Dataset

from dfm.config import check_values
from dfm.diffusion import TIMESTEP_SPACINGS, NoiseSchedule
from dfm.model import DFM, Regularizer
from dfm.networks.dit import DiT
from dfm.precision import PRECISIONS
from dfm.samplers import SAMPLERS


@dataclass
class ObjectiveConfig:
    """The DFM objective (see ``dfm.model.DFM``)."""

    loss_weights: dict[str, float] = field(default_factory=dict)  # e.g. {novel: 0.0} drops the novel term
    p_uncond: float = 0.1  # per-sample probability of dropping the context (for guidance)
    deterministic: bool = False  # train the same network as a plain regressor (baseline)
    diffusion_steps: int = 1000
    timestep_bias: float = 0.0  # > 0 trains more at high noise: p(t) proportional to (t + 1)^bias
    self_condition: float = 0.0  # share of samples given the denoiser's own first estimate (dfm.model.DFM); tasks that support it

    def __post_init__(self) -> None:
        check_values(self, "objective", probability=["p_uncond", "self_condition"], non_negative=["timestep_bias"])
        check_values(self.loss_weights, "objective.loss_weights", non_negative=list(self.loss_weights))
        if self.diffusion_steps < 2:  # the schedule interpolates between consecutive steps
            raise ValueError(f"objective.diffusion_steps must be >= 2, got {self.diffusion_steps}")


@dataclass
class DiTConfig:
    """A task's DiT encoder: a preset size (``dfm.networks.dit.SIZES``) that width/depth/heads override."""

    section: ClassVar[str] = "model"  # where tasks put it, for error messages
    size: str = "XS"
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    patch_size: int = 2
    checkpointing: bool = False  # recompute block activations in the backward pass (less memory)

    def __post_init__(self) -> None:
        check_values(self, self.section, positive=["width", "depth", "heads", "patch_size"])

    def build(self, in_channels: int, out_channels: int, cond_dim: int | None = None) -> DiT:
        return DiT(
            in_channels, out_channels, size=self.size, patch_size=self.patch_size, width=self.width,
            depth=self.depth, heads=self.heads, cond_dim=cond_dim, checkpointing=self.checkpointing,
        )


@dataclass
class SampleConfig:
    """How ``dfm sample`` / ``dfm demo`` draw samples."""

    steps: int = 50
    sampler: str = "ddim"  # ddim | dpmpp_2m
    spacing: str = "uniform"  # uniform | karras
    eta: float = 0.0  # 0 deterministic; 1 stochastic (ancestral DDIM, SDE-DPM-Solver++)
    guidance: float = 1.0  # classifier-free guidance weight (1 = off)
    temperature: float = 1.0  # scale of the initial noise
    num_samples: int = 500
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (GPU only): the networks' precision (dfm.precision)

    def __post_init__(self) -> None:  # fail at config time, not after training
        check_values(self, "sample", positive=["steps", "num_samples"], non_negative=["eta", "temperature"])
        if self.precision not in PRECISIONS:
            raise ValueError(f"sample.precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sample.sampler must be one of {sorted(SAMPLERS)}, got {self.sampler!r}")
        if self.spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"sample.spacing must be one of {TIMESTEP_SPACINGS}, got {self.spacing!r}")

    def sampler_kwargs(self) -> dict[str, Any]:
        return dict(
            steps=self.steps, sampler=self.sampler, spacing=self.spacing, guidance=self.guidance, temperature=self.temperature, eta=self.eta,
            precision=self.precision,
        )


class Task(ABC):
    """One application. Subclasses set ``Config`` (a dataclass with ``task``, ``out_dir``,
    ``objective``, ``train`` and ``sample`` fields plus their own) and implement the methods."""

    Config: ClassVar[type]

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def make_dfm(
        self, denoiser: nn.Module, forward_model: Any, schedule: NoiseSchedule, regularizers: Mapping[str, Regularizer] | None = None,
        loss_weights: Mapping[str, float] | None = None, training: bool = True,
    ) -> DFM:
        """The DFM of this task's objective config; ``loss_weights`` replaces the config's weights (e.g.
        with only the terms the model can compute). Without ``training`` it has no loss terms but the
        target and novel views: sampling needs none."""
        o = self.cfg.objective
        weights = dict(o.loss_weights if loss_weights is None else loss_weights)
        if not training:
            regularizers, weights = None, {k: v for k, v in weights.items() if k in ("target", "novel")}
        return DFM(
            denoiser, forward_model, schedule, loss_weights=weights, regularizers=regularizers,
            p_uncond=o.p_uncond, deterministic=o.deterministic, timestep_bias=o.timestep_bias, self_condition=o.self_condition,
        )

    @abstractmethod
    def build_model(self, training: bool = True) -> DFM:
        """The task's DFM; ``training=False`` (sampling) builds no loss terms beyond the engine's."""

    @abstractmethod
    def train_dataset(self) -> Dataset: ...

    def preview(self, model: DFM, step: int) -> dict[str, Tensor]:
        """Images for TensorBoard during training (``(3, H, W)`` in [0, 1])."""
        return {}

    @abstractmethod
    def write_samples(self, model: DFM, out_dir: Path) -> list[Path]:
        """Sample with ``cfg.sample`` and write images/videos/arrays; return the files written."""
