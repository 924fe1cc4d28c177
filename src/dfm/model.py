"""The DFM model: a denoiser that outputs *signals*, a forward model that observes them, a schedule.

``DFM.forward(batch)`` is the training objective (DESIGN.md §1), read top to bottom:

    batch -> noise the target -> denoise -> signal -> forward(target params), forward(novel params)
          -> target + novel + regulariser losses

``DFM.sample(...)`` runs any sampler of ``dfm.samplers`` over the target observation, where each
step's clean estimate is ``forward(denoise(context, x_t, t), target params)``, and returns the final
observation together with the signal that produced it.

A batch is a dict with the keys ``ctxt_obs``, ``trgt_obs``, ``novel_obs`` and ``novel_params`` (the last two
unless the novel term's weight is 0), and optionally ``ctxt_params``, ``trgt_params`` (None when absent),
``trgt_pixels``; observations are
tensors with the batch first, params are whatever the denoiser and forward model accept.
``trgt_pixels`` is the part of the target that ``forward(signal, trgt_params)`` renders when that is
not the whole of ``trgt_obs`` (e.g. a random patch: the denoiser sees the whole noisy target, the
loss compares only the rendered patch); ``novel_obs`` is always what ``novel_params`` renders.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfm.config import check_values
from dfm.diffusion import NoiseSchedule
from dfm.precision import autocast, check_precision, to_fp32
from dfm.samplers import SAMPLERS

Batch = Mapping[str, Any]


class Denoised(NamedTuple):
    """What a denoiser may return instead of a bare signal: the signal, and by-products that only loss
    terms read (the 3-D task's context-only estimate O_det, say), kept beside the signal so that the
    forward model, the sampler and every user of the signal never see them."""

    signal: Any
    extras: Mapping[str, Any]


class Denoiser(Protocol):
    """Maps (context observations, noisy target observation, t) to a *signal* (or a :class:`Denoised`),
    not to pixels.

    ``noisy_obs`` is the target observation noised by the schedule (variance preserving:
    ``sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``). ``t`` is a float tensor of shape ``(B,)`` with values in
    ``[0, schedule.num_steps - 1]`` (``[0, 999]`` by default), integer-valued in training and fractional
    while sampling; embed it as a continuous value (``dfm.networks.embeddings.TimestepEmbedding``). The
    context is zeroed for a ``p_uncond`` share of training samples (classifier-free guidance). A
    self-conditioned denoiser (``DFM(self_condition=...)``) also takes ``previous``: its own last clean
    estimate of the target observation (zeros when there is none)."""

    def __call__(self, ctxt_obs: Tensor, ctxt_params: Any, noisy_obs: Tensor, t: Tensor, trgt_params: Any) -> Any: ...


@runtime_checkable
class ContextSplit(Protocol):
    """A denoiser whose work splits into a part that depends only on the context (and on the target's
    parameters) and a part that depends on the noisy target and ``t``; calling it must equal
    ``denoise(encode_context(ctxt_obs, ctxt_params, trgt_params), noisy_obs, t, trgt_params)``.

    Sampling then runs the context part once per call (and once for the unconditional branch of
    guidance) instead of at every step; training calls the denoiser whole. A denoiser without such a
    part (the context enters with the noisy target, as channels of one network) need not split."""

    def encode_context(self, ctxt_obs: Tensor, ctxt_params: Any, trgt_params: Any) -> Any: ...

    def denoise(self, context: Any, noisy_obs: Tensor, t: Tensor, trgt_params: Any) -> Any: ...  # and ``previous``, if self-conditioned


class ForwardModel(Protocol):
    """A known, differentiable, batched map from a signal and parameters to an observation.

    It returns the observation, or a typed output whose ``observation`` attribute is the observation
    and whose other fields are by-products that regularisers use (a renderer's depth, opacity, ray
    weights, ...)."""

    def __call__(self, signal: Any, params: Any) -> Any: ...


def observation(rendered: Any) -> Tensor:
    """The observation in a forward model's output (see ``ForwardModel``)."""
    return rendered if isinstance(rendered, Tensor) else rendered.observation


def denoised(out: Any) -> tuple[Any, Mapping[str, Any]]:
    """A denoiser's output as ``(signal, by-products)`` (see :class:`Denoised`)."""
    return (out.signal, out.extras) if isinstance(out, Denoised) else (out, {})


def takes_previous(denoiser: Any) -> bool:
    """Whether ``denoiser`` (and its per-step part, if it splits) accepts self-conditioning's ``previous``."""
    whole = denoiser.forward if isinstance(denoiser, nn.Module) else denoiser  # a module's __call__ takes **kwargs
    parts = [whole, denoiser.denoise] if isinstance(denoiser, ContextSplit) else [whole]
    def accepts(fn) -> bool:
        params = inspect.signature(fn).parameters
        return "previous" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    return all(accepts(fn) for fn in parts)


class Regularizer(Protocol):
    """A task's extra loss term, given the signal, the batch and the predictions: the forward model's
    outputs (``predictions["target"]``, and ``predictions["novel"]`` when the novel term is on) and the
    denoiser's by-products (``predictions["denoiser"]``, see :class:`Denoised`)."""

    def __call__(self, signal: Any, batch: Batch, predictions: Mapping[str, Any]) -> Tensor: ...


def mse(prediction: Tensor, target: Tensor, params: str, obs: str) -> Tensor:
    """The mean squared error of a rendered view, refusing shapes that would broadcast (say (B, 3, 1)
    against (B, 3)), which would train on a wrong loss without a word."""
    if prediction.shape != target.shape:
        raise ValueError(f"forward_model(signal, {params}) returned {tuple(prediction.shape)}, but {obs} is {tuple(target.shape)}")
    return F.mse_loss(prediction, target)


class SamplingError(RuntimeError):
    """Sampling produced NaN or inf; the message names the likely causes."""


class Sample(NamedTuple):
    observation: Tensor  # the sampled target observation
    signal: Any  # the denoiser's signal at the last step (its conditional branch under guidance)


def drop_context(ctxt_obs: Tensor, keep: Tensor) -> Tensor:
    """Zero the context of the samples where ``keep`` is False (classifier-free guidance)."""
    return ctxt_obs * keep.to(ctxt_obs.dtype).view(-1, *([1] * (ctxt_obs.ndim - 1)))


class DFM(nn.Module):
    """Diffusion with a forward model.

    Args:
        denoiser: module mapping (ctxt_obs, ctxt_params, noisy_obs, t, trgt_params) to a signal.
        forward_model: module/callable mapping (signal, params) to an observation.
        schedule: the noise schedule over target observations (cosine, 1000 steps by default).
        loss_weights: weight per named loss; ``target`` and ``novel`` default to 1, a regulariser
            without a weight gets 1. A zero weight skips the term entirely; a batch without novel views
            is refused unless ``novel`` is 0.
        regularizers: named extra loss terms (``Regularizer``).
        p_uncond: probability, per sample, of zeroing the context during training so that the
            same network also learns the unconditional model used by guidance.
        deterministic: train a plain regressor with the same network instead of a diffusion model:
            the denoiser always sees an all-zero target at the highest noise level, so it learns
            the posterior mean of the signal; sampling returns that mean.
        timestep_bias: train more often at high noise: ``t`` has density proportional to
            ``(t + 1) ** timestep_bias`` (0: uniform). Where the posterior has several modes, the choice
            between them is made at the highest noise levels; this gives them more of the training.
        self_condition: self-conditioning (Chen et al. 2023): the probability, per sample, that the
            denoiser is given its own estimate of the clean target (the forward model's rendering of a
            first, gradient-free pass) as the keyword ``previous``; zeros otherwise. While sampling it is
            given the previous step's estimate, so a denoiser that inverts a forward model can correct its
            last answer against it (an iterative refinement) instead of starting afresh at every step.
            0 (off): the denoiser is called without ``previous``. Needs a forward model that renders the
            whole target (no ``trgt_pixels``).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        forward_model: Callable[[Any, Any], Tensor],
        schedule: NoiseSchedule | None = None,
        *,
        loss_weights: Mapping[str, float] | None = None,
        regularizers: Mapping[str, Regularizer] | None = None,
        p_uncond: float = 0.1,
        deterministic: bool = False,
        timestep_bias: float = 0.0,
        self_condition: float = 0.0,
    ):
        super().__init__()
        check_values({"self_condition": self_condition}, "", probability=["self_condition"])
        if self_condition and not takes_previous(denoiser):
            raise ValueError(f"self_condition={self_condition} needs a denoiser that takes the keyword `previous`; {type(denoiser).__name__} does not")
        self.denoiser = denoiser
        self.forward_model = forward_model
        self.schedule = schedule if schedule is not None else NoiseSchedule()
        self.regularizers = dict(regularizers or {})
        self.loss_weights = {"target": 1.0, "novel": 1.0, **{k: 1.0 for k in self.regularizers}}
        unknown = set(loss_weights or {}) - set(self.loss_weights)
        if unknown:
            raise ValueError(f"loss weights for unknown terms {sorted(unknown)}; terms: {sorted(self.loss_weights)}")
        self.loss_weights.update(loss_weights or {})
        self.p_uncond = p_uncond
        self.deterministic = deterministic
        self.timestep_bias = timestep_bias
        self.self_condition = self_condition

    def save_pretrained(self, directory: str | Path) -> Path:
        """Save the configuration (parts by import path, their arguments; see ``dfm.saving``) and weights."""
        from dfm.saving import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> DFM:
        """Load a model saved by :meth:`save_pretrained`, or a run/checkpoint of one (``dfm.saving``)."""
        from dfm.saving import from_pretrained

        return from_pretrained(path, **overrides)

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The training objective: a dict of named losses, with their weighted sum under ``loss``."""
        self.check_batch(batch)
        trgt = batch["trgt_obs"]
        n, device = trgt.shape[0], trgt.device

        ctxt = batch["ctxt_obs"]
        if self.p_uncond > 0:
            keep = torch.rand(n, generator=generator, device=device) >= self.p_uncond
            ctxt = drop_context(ctxt, keep)

        if self.deterministic:
            noisy, t = self.blind_target(trgt.shape, device, trgt.dtype)
        else:
            t = self.schedule.sample_timesteps(n, generator, device, bias=self.timestep_bias)
            noise = torch.randn(trgt.shape, generator=generator, device=device, dtype=trgt.dtype)
            noisy = self.schedule.add_noise(trgt, t, noise)

        previous = self.previous_estimate(ctxt, batch, noisy, t, generator)
        signal, extras = denoised(self.denoiser(ctxt, batch.get("ctxt_params"), noisy, t, batch.get("trgt_params"), **previous))

        predictions = {"target": self.forward_model(signal, batch.get("trgt_params")), "denoiser": extras}
        losses = {"target": mse(observation(predictions["target"]), batch.get("trgt_pixels", trgt), "trgt_params", "trgt_pixels" if "trgt_pixels" in batch else "trgt_obs")}
        if self.loss_weights["novel"]:
            predictions["novel"] = self.forward_model(signal, batch["novel_params"])
            losses["novel"] = mse(observation(predictions["novel"]), batch["novel_obs"], "novel_params", "novel_obs")
        for name, regularizer in self.regularizers.items():
            if self.loss_weights[name]:
                losses[name] = regularizer(signal, batch, predictions)

        losses["loss"] = sum(self.loss_weights[k] * v for k, v in losses.items())
        return losses

    def check_batch(self, batch: Batch) -> None:
        """Refuse a batch that lacks what the objective reads, naming the keys it has. Without ``novel_obs``
        the novel term, on which the learned distribution over signals rests (DESIGN.md, Proposition 1),
        would be lost silently: a model without novel views must say so with ``loss_weights={"novel": 0}``."""
        required = ["ctxt_obs", "trgt_obs"] + (["novel_obs", "novel_params"] if self.loss_weights["novel"] else [])
        missing = [k for k in required if k not in batch]
        if not missing:
            return
        hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, list(batch), 1, cutoff=0.8)) else repr(k) for k in missing]
        novel = (" (the novel-view term needs them; without novel views, pass loss_weights={'novel': 0.0})"
                 if {"novel_obs", "novel_params"} & set(missing) else "")
        raise ValueError(f"the batch has no {', '.join(hints)}{novel}; its keys: {sorted(batch)}")

    def previous_estimate(self, ctxt: Tensor, batch: Batch, noisy: Tensor, t: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        """The keyword arguments that self-conditioning adds to the denoiser's call (none when it is off):
        ``previous``, a gradient-free first estimate of the clean target for a ``self_condition`` share of
        the samples, zeros for the others."""
        if not self.self_condition:
            return {}
        previous = torch.zeros_like(noisy)
        use = torch.rand(noisy.shape[0], generator=generator, device=noisy.device) < self.self_condition
        if use.any():
            with torch.no_grad():
                first, _ = denoised(self.denoiser(ctxt, batch.get("ctxt_params"), noisy, t, batch.get("trgt_params"), previous=previous))
                estimate = observation(self.forward_model(first, batch.get("trgt_params"))).to(noisy.dtype)
            if estimate.shape != noisy.shape:
                raise ValueError(
                    f"self-conditioning feeds the rendered target back to the denoiser, but the forward model renders "
                    f"{tuple(estimate.shape)} for a target of {tuple(noisy.shape)}"
                )
            previous = torch.where(use.view(-1, *[1] * (noisy.ndim - 1)), estimate, previous)
        return {"previous": previous}

    def blind_target(self, shape: tuple[int, ...], device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """What a regressor's denoiser sees instead of a noisy target: zeros at the highest noise level."""
        t = torch.full((shape[0],), self.schedule.num_steps - 1.0, device=device)
        return torch.zeros(shape, device=device, dtype=dtype), t

    @torch.no_grad()
    def sample(
        self,
        ctxt_obs: Tensor,
        ctxt_params: Any,
        trgt_params: Any,
        shape: tuple[int, ...],
        *,
        steps: int = 50,
        sampler: str = "ddim",
        spacing: str = "uniform",
        guidance: float = 1.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        callback: Callable[[dict], None] | None = None,
        progress: bool = False,
        precision: str = "fp32",
        **sampler_options,
    ) -> Sample:
        """Sample target observations of shape ``shape`` (batch first) and their signals.

        ``guidance`` is the classifier-free guidance weight w in
        ``x0 = x0_uncond + w * (x0_cond - x0_uncond)`` (1 = no guidance); ``temperature`` scales
        the initial noise. ``precision`` (``dfm.precision.PRECISIONS``) is that of the denoiser and forward
        model; the sampler's updates stay in fp32. Extra keyword options go to the sampler (e.g. ``eta``: 0
        deterministic, 1 stochastic). Raises SamplingError rather than return non-finite observations, which would pass as images.
        """
        options = dict(steps=steps, guidance=guidance, temperature=temperature, eta=sampler_options.get("eta"))
        check_values(options, "", positive=["steps"], non_negative=["temperature", "eta"])
        if ctxt_obs.shape[0] != shape[0]:
            raise ValueError(
                f"ctxt_obs holds {ctxt_obs.shape[0]} contexts but shape asks for {shape[0]} samples; repeat the context "
                f"(and its params) once per sample, e.g. ctxt_obs.repeat_interleave(n, 0)"
            )
        device = ctxt_obs.device
        check_precision(precision, device, "precision")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; available: {sorted(SAMPLERS)}")
        if self.deterministic:
            noisy, t = self.blind_target(shape, device, ctxt_obs.dtype)
            previous = {"previous": torch.zeros_like(noisy)} if self.self_condition else {}
            with autocast(precision, device):
                signal = to_fp32(denoised(self.denoiser(ctxt_obs, ctxt_params, noisy, t, trgt_params, **previous))[0])
                obs = observation(self.forward_model(signal, trgt_params))
            out = Sample(obs.float(), signal)
        else:
            x0_fn = GuidedX0(self, ctxt_obs, ctxt_params, trgt_params, guidance, precision)
            x = temperature * torch.randn(shape, generator=generator, device=device)
            timesteps = self.schedule.sampling_timesteps(steps, spacing)
            obs = SAMPLERS[sampler](
                x0_fn, x, timesteps, self.schedule, generator=generator, callback=callback, progress=progress, **sampler_options
            )
            out = Sample(obs, x0_fn.signal)
        if not torch.isfinite(out.observation).all():
            raise SamplingError(
                "the sampled observations contain NaN or inf. Likely causes: non-finite weights (e.g. a checkpoint of "
                f"a run that diverged), non-finite inputs, or an extreme guidance ({guidance}) or temperature ({temperature})"
            )
        return out


class _Whole:
    """A denoiser without a context part, seen as a :class:`ContextSplit`: its context is the context views."""

    def __init__(self, denoiser: Denoiser, ctxt_params: Any):
        self.denoiser, self.ctxt_params = denoiser, ctxt_params

    def encode_context(self, ctxt_obs: Tensor, ctxt_params: Any, trgt_params: Any) -> Tensor:
        return ctxt_obs

    def denoise(self, context: Tensor, noisy_obs: Tensor, t: Tensor, trgt_params: Any, **previous) -> Any:
        return self.denoiser(context, self.ctxt_params, noisy_obs, t, trgt_params, **previous)


class GuidedX0:
    """The sampler's view of a DFM: ``x_t, t -> x0``, with guidance; keeps the last conditional signal.

    The denoiser's context part (:class:`ContextSplit`) is computed here, once for the conditional and
    once for the unconditional branch, and each step runs only its per-step part. Both run at
    ``precision``; the signal (:func:`dfm.precision.to_fp32`) and the clean estimate handed to the
    sampler are fp32. A self-conditioned denoiser gets each branch's clean estimate of the previous step."""

    def __init__(self, model: DFM, ctxt_obs: Tensor, ctxt_params: Any, trgt_params: Any, guidance: float, precision: str = "fp32"):
        self.model, self.trgt_params, self.guidance = model, trgt_params, guidance
        self.autocast = lambda: autocast(precision, ctxt_obs.device)
        split = model.denoiser if isinstance(model.denoiser, ContextSplit) else _Whole(model.denoiser, ctxt_params)
        self.denoise = split.denoise
        with self.autocast():
            self.cond = split.encode_context(ctxt_obs, ctxt_params, trgt_params)
            self.uncond = split.encode_context(torch.zeros_like(ctxt_obs), ctxt_params, trgt_params) if guidance != 1.0 else None
        self.signal = None
        self.previous: dict[str, Tensor] | None = {} if model.self_condition else None  # per branch

    def _observe(self, branch: str, context: Any, x: Tensor, t: Tensor) -> tuple[Any, Tensor]:
        t = t.to(x.device).expand(x.shape[0])
        previous = {} if self.previous is None else {"previous": self.previous.get(branch, torch.zeros_like(x))}
        with self.autocast():
            signal = to_fp32(denoised(self.denoise(context, x, t, self.trgt_params, **previous))[0])
            obs = observation(self.model.forward_model(signal, self.trgt_params)).float()
        if self.previous is not None:
            self.previous[branch] = obs
        return signal, obs

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.signal, x0 = self._observe("cond", self.cond, x, t)
        if self.uncond is not None:
            _, x0_uncond = self._observe("uncond", self.uncond, x, t)
            x0 = x0_uncond + self.guidance * (x0 - x0_uncond)
        return x0
