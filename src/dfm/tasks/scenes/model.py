"""The 3-D denoiser and its forward model: sample radiance fields, observe them by volume rendering.

The *signal* is a :class:`Scene`: a pixel-aligned radiance field (:class:`dfm.networks.field.PixelAlignedField`)
bound to the feature maps of the context views and of the noisy target view, with the scene's bounds.
The forward model, :class:`VolumeRenderer`, renders a scene from cameras, whole images or a patch of
each, into a typed :class:`Rendering` that also says which by-products it holds (``provides``), so
that each loss term can declare what it reads.

:class:`SceneDenoiser` reads, top to bottom:

1. encode every context view at ``t = 0``;
2. with a :class:`ContextEstimate` part, render the deterministic estimate ``O_det`` of the target
   view from a field over the context views alone (RGB, depth and feature channels), with its own
   resolution, sample count and renderer;
3. encode the noisy target concatenated with ``O_det`` (upsampled) at ``t``; a few extra output
   channels, averaged over the image, are the scene's global latent;
4. bind the field to all views' features (context + target) and cameras, at ``t``, with the latent.

Steps 1 and 2 depend only on the context and the target camera: they are the denoiser's context part
(``encode_context``), which a sampler runs once per call, and steps 3 and 4 its per-step part
(``denoise``; :class:`dfm.model.ContextSplit`). It returns the scene with ``O_det`` beside it (:class:`dfm.model.Denoised`, by-product ``"context"``),
not inside it: only the ``cond`` loss term reads it, and the renderer never needs to know it exists.

Parameters (``params``) of the forward model and of the denoiser are dicts: ``c2w`` ``(B, 4, 4)`` and
``K`` ``(B, 3, 3)`` per target (``(B, V, ...)`` for the context views), the scene's ``near`` and ``far``
``(B,)``, plus ``patch`` ``(B, 2)`` (top, left) when only a patch of each target is rendered (its size
is the renderer's :class:`~dfm.tasks.scenes.views.PatchGeometry`'s, shared with the dataset). The
bounds travel with the sampled :class:`Scene`, so it renders from any camera without them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dfm.cameras import image_rays, patch_rays
from dfm.model import Denoised
from dfm.networks.field import PixelAlignedField
from dfm.rendering import Field, render_rays
from dfm.tasks.scenes.views import PatchGeometry

Cameras = dict[str, Tensor]
POSE_DIM = 12  # an absolute pose as the encoder's conditioning vector: the top 3 rows of c2w


def pose_vector(c2w: Tensor) -> Tensor:
    """``(..., 4, 4)`` camera-to-world matrices -> ``(..., 12)`` (rotation and centre, row-major)."""
    return c2w[..., :3, :].flatten(-2)


class Scene(NamedTuple):
    field: Field  # (points, directions) -> density, rgb, features; every pass but the coarse one
    coarse_field: Field  # the field of the coarse pass (the same one unless the model has a coarse network)
    near: Tensor  # (B,) the scene's bounds along every ray
    far: Tensor


class SceneContext(NamedTuple):
    """The context part of :class:`SceneDenoiser` (what a sampler computes once)."""

    features: Tensor  # (B, V, F, H, W) pixel-aligned features of the context views
    ctxt_params: Cameras
    o_det: dict[str, Tensor] | None  # O_det's channels at its own resolution, for the cond loss term
    o_det_input: Tensor | None  # (B, C, H, W) O_det upsampled: what the target encoder reads beside the noisy view


@dataclass
class Rendering:
    """What :class:`VolumeRenderer` returns; ``h x w`` is the patch's or the image's size."""

    observation: Tensor  # (B, 3, h, w) RGB in [-1, 1]
    depth: Tensor  # (B, 1, h, w) expected distance along the ray
    opacity: Tensor  # (B, 1, h, w) accumulated opacity
    weights: Tensor  # (B, h w, S, 1) the last pass's compositing weights (for the distortion loss)
    edges: Tensor  # (B, h w, S + 1, 1) its bin edges, distances along the ray
    features: Tensor | None = None  # (B, F, h, w) the field's extra channels, when it has them
    coarse: Tensor | None = None  # (B, 3, h, w) the coarse pass's RGB, when there is a fine pass

    def provides(self) -> set[str]:
        return {f.name for f in fields(self) if getattr(self, f.name) is not None}


class VolumeRenderer(nn.Module):
    """The forward model ``(Scene, cameras) -> Rendering``.

    Renders ``num_coarse`` stratified samples per ray between the scene's ``near`` and ``far`` and, with
    ``num_fine > 0``, a fine pass on the coarse samples plus ``num_fine`` importance samples. Sample
    positions are the bins' midpoints (no jitter), so rendering is a deterministic function of the
    scene. Also returns ``coarse`` (the coarse pass's RGB, when there is a fine pass) for its own
    photometric term, ``depth`` (ray distance) and ``opacity`` ``(B, 1, h, w)``, and the last pass's
    ray ``weights`` and bin ``edges`` for the distortion loss. Empty space shows ``background`` (RGB in
    [0, 1]; black, as in the paper, by default). ``chunk`` rays per scene are rendered at a time without
    autograd, and also in training with ``checkpoint``, which recomputes each chunk's field queries in
    the backward pass.
    """

    def __init__(
        self, patches: PatchGeometry, num_coarse: int, num_fine: int = 0, spacing: str = "linear",
        chunk: int | None = None, checkpoint: bool = False, background: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ):
        super().__init__()
        self.patches, self.num_coarse, self.num_fine, self.spacing = patches, num_coarse, num_fine, spacing
        self.chunk, self.checkpoint = chunk, checkpoint
        self.register_buffer("background", torch.tensor(background) * 2 - 1, persistent=False)  # in [-1, 1]

    def provides(self) -> set[str]:
        """The by-products every :class:`Rendering` of this renderer holds (besides the observation)."""
        return {"depth", "opacity", "weights", "edges"} | ({"coarse"} if self.num_fine else set())

    def forward(self, scene: Scene, cameras: Cameras) -> Rendering:
        return self.render(scene.field, scene.coarse_field, cameras, scene.near, scene.far)

    def render(
        self, field: Field, coarse_field: Field, cameras: Cameras, near: Tensor, far: Tensor, resolution: int | None = None,
        num_coarse: int | None = None, num_fine: int | None = None,
    ) -> Rendering:
        """Render ``cameras`` of scenes bounded by ``near``, ``far`` ``(B,)`` (with ``patch``: that patch of
        the full-resolution image; without: the whole image at ``resolution``, by default the full one)."""
        c2w, K, full = cameras["c2w"], cameras["K"], self.patches.resolution
        if "patch" in cameras:
            size = self.patches.size
            origins, directions = patch_rays(c2w, K, full, full, cameras["patch"][:, 0], cameras["patch"][:, 1], size)
        else:
            size = resolution or full
            origins, directions = image_rays(c2w, K, size, size)
        num_fine = self.num_fine if num_fine is None else num_fine
        near, far = (x.to(origins).reshape(-1, 1, 1) for x in (near, far))
        out = render_rays(
            coarse_field, origins, directions, near, far, num_coarse=num_coarse or self.num_coarse,
            num_fine=num_fine, fine_field=field, spacing=self.spacing, background=self.background,
            chunk=self.chunk if self.checkpoint or not torch.is_grad_enabled() else None, checkpoint=self.checkpoint,
        )
        final = out["fine"] if num_fine else out["coarse"]

        def image(x: Tensor) -> Tensor:  # (B, R, C) -> (B, C, size, size)
            return x.transpose(1, 2).unflatten(2, (size, size))

        return Rendering(
            image(final["rgb"]), image(final["depth"]), image(final["opacity"]), final["weights"], final["edges"],
            features=image(final["features"]) if "features" in final else None,
            coarse=image(out["coarse"]["rgb"]) if num_fine else None,
        )


class ContextEstimate(nn.Module):
    """``O_det``: the target view rendered from a field over the context views alone, at ``t = 0``, with
    a renderer and settings of its own (``resolution`` None: the image's; ``samples`` per ray, coarse
    pass only; ``checkpoint``: recompute it in the backward pass instead of keeping its activations).
    Its channels go to the target encoder: RGB, depth mapped to [-1, 1] over the scene's ``[near, far]``,
    opacity and the field's feature channels."""

    def __init__(self, renderer: VolumeRenderer, samples: int, resolution: int | None = None, checkpoint: bool = True):
        super().__init__()
        self.renderer, self.samples, self.resolution, self.checkpoint = renderer, samples, resolution, checkpoint

    @staticmethod
    def channels(field_features: int) -> int:
        return 5 + field_features

    def forward(self, bind: Callable[[Tensor], Field], ctxt_features: Tensor, trgt_params: Cameras) -> dict[str, Tensor]:
        """``bind(ctxt_features)`` is the context-only field; returns ``rgb``, ``depth``, ``opacity``,
        ``features`` ``(B, C, h, w)``."""

        def render(ctxt_features: Tensor) -> tuple[Tensor, ...]:
            field = bind(ctxt_features)
            cameras = {"c2w": trgt_params["c2w"], "K": trgt_params["K"]}  # the whole target view, never a patch
            near, far = trgt_params["near"], trgt_params["far"]
            out = self.renderer.render(field, field, cameras, near, far, self.resolution, num_coarse=self.samples, num_fine=0)
            near, far = (x.to(out.depth).view(-1, 1, 1, 1) for x in (near, far))
            depth = 2 * (out.depth - near) / (far - near) - 1
            return out.observation, depth, out.opacity, out.features if out.features is not None else depth[:, :0]

        if self.checkpoint and torch.is_grad_enabled():
            rgb, depth, opacity, features = checkpoint(render, ctxt_features, use_reentrant=False)
        else:
            rgb, depth, opacity, features = render(ctxt_features)
        return {"rgb": rgb, "depth": depth, "opacity": opacity, "features": features}


class SceneDenoiser(nn.Module):
    """``(context views (B, V, 3, H, W), context cameras, noisy target (B, 3, H, W), t, target cameras)
    -> Denoised(Scene, {"context": O_det})``.

    Args:
        encoder: image encoder with the call of :class:`dfm.networks.dit.DiT` / ``ConvEncoder``,
            ``3 + ContextEstimate.channels(field.out_features)`` in (3 without ``context``),
            ``features + latent_dim`` out, pixel-aligned.
        field: the radiance field over ``features``-channel maps (its ``global_dim`` = ``latent_dim``).
        coarse_field: a separate network for the coarse pass, or None to use ``field`` for both.
        context: the ``O_det`` part, or None to leave it out.
        pose_conditioning: give the encoder each view's absolute pose (:func:`pose_vector`) as its
            conditioning vector (the encoder must take ``cond_dim = POSE_DIM``).
    """

    def __init__(
        self, encoder: nn.Module, field: PixelAlignedField, coarse_field: PixelAlignedField | None,
        context: ContextEstimate | None, *, features: int, latent_dim: int, pose_conditioning: bool = False,
    ):
        super().__init__()
        self.encoder, self.field, self.coarse_network, self.context = encoder, field, coarse_field, context
        self.features, self.latent_dim, self.pose_conditioning = features, latent_dim, pose_conditioning

    def provides(self) -> set[str]:
        """The by-products it returns beside the scene."""
        return {"context"} if self.context is not None else set()

    def forward(self, ctxt_obs: Tensor, ctxt_params: Cameras, noisy_obs: Tensor, t: Tensor, trgt_params: Cameras) -> Denoised:
        return self.denoise(self.encode_context(ctxt_obs, ctxt_params, trgt_params), noisy_obs, t, trgt_params)

    def encode_context(self, ctxt_obs: Tensor, ctxt_params: Cameras, trgt_params: Cameras) -> SceneContext:
        """Steps 1 and 2, which depend only on the context views and the target camera: a sampler runs
        them once (:class:`dfm.model.ContextSplit`)."""
        B, V, _, H, W = ctxt_obs.shape
        extra = ContextEstimate.channels(self.field.out_features) if self.context is not None else 0
        views = torch.cat([ctxt_obs.flatten(0, 1), ctxt_obs.new_zeros(B * V, extra, H, W)], 1)
        ctxt_pose = pose_vector(ctxt_params["c2w"]).flatten(0, 1) if self.pose_conditioning else None
        ctxt_features = self.encoder(views, ctxt_obs.new_zeros(B * V), ctxt_pose)[:, : self.features].unflatten(0, (B, V))
        if self.context is None:
            return SceneContext(ctxt_features, ctxt_params, None, None)

        def context_field(ctxt_features: Tensor) -> Field:
            latent = ctxt_features.new_zeros(B, self.latent_dim) if self.latent_dim else None
            return self.field.bind(ctxt_features, ctxt_params["c2w"], ctxt_params["K"], ctxt_features.new_zeros(B), latent)

        o_det = self.context(context_field, ctxt_features, trgt_params)
        stacked = torch.cat([o_det["rgb"], o_det["depth"], o_det["opacity"], o_det["features"]], 1)
        return SceneContext(ctxt_features, ctxt_params, o_det, F.interpolate(stacked, size=(H, W), mode="bilinear", align_corners=False))

    def denoise(self, context: SceneContext, noisy_obs: Tensor, t: Tensor, trgt_params: Cameras) -> Denoised:
        """Steps 3 and 4: encode the noisy target (with ``O_det``) at ``t`` and bind the field."""
        target_input = noisy_obs if context.o_det_input is None else torch.cat([noisy_obs, context.o_det_input], 1)
        out = self.encoder(target_input, t, pose_vector(trgt_params["c2w"]) if self.pose_conditioning else None)
        trgt_features, latent = out[:, : self.features], out[:, self.features:].mean((2, 3))

        ctxt_params = context.ctxt_params
        maps = torch.cat([context.features, trgt_features[:, None]], 1)
        c2w = torch.cat([ctxt_params["c2w"], trgt_params["c2w"][:, None]], 1)
        K = torch.cat([ctxt_params["K"], trgt_params["K"][:, None]], 1)
        latent = latent if self.latent_dim else None
        field = self.field.bind(maps, c2w, K, t, latent)
        coarse = self.coarse_network.bind(maps, c2w, K, t, latent) if self.coarse_network is not None else field
        extras = {} if context.o_det is None else {"context": context.o_det}
        return Denoised(Scene(field, coarse, trgt_params["near"], trgt_params["far"]), extras)
