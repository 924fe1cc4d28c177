"""The 3-D denoiser and its forward model: sample radiance fields, observe them by volume rendering.

The *signal* is a :class:`Scene`: a pixel-aligned radiance field (:class:`dfm.networks.field.PixelAlignedField`)
bound to the feature maps of the context views and of the noisy target view. The forward model,
:class:`VolumeRenderer`, renders a scene from cameras, whole images or a patch of each.

:class:`SceneDenoiser` reads, top to bottom:

1. encode every context view at ``t = 0``;
2. render the deterministic estimate ``O_det`` of the target view from a field over the context views
   alone (RGB, depth and feature channels), at a resolution and sample count of its own;
3. encode the noisy target concatenated with ``O_det`` (upsampled) at ``t``; a few extra output
   channels, averaged over the image, are the scene's global latent;
4. bind the field to all views' features (context + target) and cameras, at ``t``, with the latent.

Parameters (``params``) of the forward model and of the denoiser are dicts: ``c2w`` ``(B, 4, 4)`` and
``K`` ``(B, 3, 3)`` per target (``(B, V, ...)`` for the context views), the scene's ``near`` and ``far``
``(B,)``, plus ``patch`` ``(B, 2)`` (top, left) when only a patch of each target is rendered (its size
is the renderer's :class:`~dfm.tasks.scenes.views.PatchGeometry`'s, shared with the dataset). The
bounds travel with the sampled :class:`Scene`, so it renders from any camera without them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dfm.cameras import image_rays, patch_rays
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
    context_render: dict[str, Tensor] | None  # O_det: rgb, depth, opacity (B, C, h, w), or None without it
    near: Tensor  # (B,) the scene's bounds along every ray
    far: Tensor


class VolumeRenderer(nn.Module):
    """The forward model ``(Scene, cameras) -> {"observation": (B, 3, h, w), ...}``.

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

    def forward(self, scene: Scene, cameras: Cameras) -> dict[str, Any]:
        return self.render(scene.field, scene.coarse_field, cameras, scene.near, scene.far)

    def render(
        self, field: Field, coarse_field: Field, cameras: Cameras, near: Tensor, far: Tensor, resolution: int | None = None,
        num_coarse: int | None = None, num_fine: int | None = None,
    ) -> dict[str, Any]:
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

        result = {
            "observation": image(final["rgb"]), "depth": image(final["depth"]), "opacity": image(final["opacity"]),
            "weights": final["weights"], "edges": final["edges"],
        }
        if "features" in final:
            result["features"] = image(final["features"])
        if num_fine:
            result["coarse"] = image(out["coarse"]["rgb"])
        return result


class SceneDenoiser(nn.Module):
    """``(context views (B, V, 3, H, W), context cameras, noisy target (B, 3, H, W), t, target cameras) -> Scene``.

    Args:
        encoder: image encoder with the call of :class:`dfm.networks.dit.DiT` / ``ConvEncoder``,
            ``3 + context_channels`` in, ``features + latent_dim`` out, pixel-aligned.
        field: the radiance field over ``features``-channel maps (its ``global_dim`` = ``latent_dim``).
        coarse_field: a separate network for the coarse pass, or None to use ``field`` for both.
        pose_conditioning: give the encoder each view's absolute pose (:func:`pose_vector`) as its
            conditioning vector (the encoder must take ``cond_dim = POSE_DIM``).
        renderer: renders ``O_det``; ``context_resolution`` and ``context_samples`` set its cost
            (None resolution: the image's), ``context_checkpoint`` recomputes it in the backward pass
            instead of keeping its activations. ``context_samples = 0`` leaves ``O_det`` out.
    """

    def __init__(
        self, encoder: nn.Module, field: PixelAlignedField, coarse_field: PixelAlignedField | None,
        renderer: VolumeRenderer, *, features: int, latent_dim: int, pose_conditioning: bool = False,
        context_resolution: int | None = None, context_samples: int = 32, context_checkpoint: bool = True,
    ):
        super().__init__()
        self.encoder, self.field, self.coarse_network = encoder, field, coarse_field
        self.renderer = renderer
        self.features, self.latent_dim, self.pose_conditioning = features, latent_dim, pose_conditioning
        self.context_resolution, self.context_samples, self.context_checkpoint = context_resolution, context_samples, context_checkpoint

    @staticmethod
    def context_channels(field_features: int, context_samples: int) -> int:
        """Channels of ``O_det`` given to the target encoder: RGB, depth, opacity and the field's features."""
        return 5 + field_features if context_samples else 0

    def forward(self, ctxt_obs: Tensor, ctxt_params: Cameras, noisy_obs: Tensor, t: Tensor, trgt_params: Cameras) -> Scene:
        B, V, _, H, W = ctxt_obs.shape
        extra = self.context_channels(self.field.out_features, self.context_samples)
        views = torch.cat([ctxt_obs.flatten(0, 1), ctxt_obs.new_zeros(B * V, extra, H, W)], 1)
        ctxt_pose = pose_vector(ctxt_params["c2w"]).flatten(0, 1) if self.pose_conditioning else None
        ctxt_features = self.encoder(views, t.new_zeros(B * V), ctxt_pose)[:, : self.features].unflatten(0, (B, V))

        context_render, target_input = None, noisy_obs
        if self.context_samples:
            context_render = self.render_context(ctxt_features, ctxt_params, trgt_params)
            o_det = torch.cat([context_render["rgb"], context_render["depth"], context_render["opacity"], context_render["features"]], 1)
            target_input = torch.cat([noisy_obs, F.interpolate(o_det, size=(H, W), mode="bilinear", align_corners=False)], 1)
        out = self.encoder(target_input, t, pose_vector(trgt_params["c2w"]) if self.pose_conditioning else None)
        trgt_features, latent = out[:, : self.features], out[:, self.features:].mean((2, 3))

        maps = torch.cat([ctxt_features, trgt_features[:, None]], 1)
        c2w = torch.cat([ctxt_params["c2w"], trgt_params["c2w"][:, None]], 1)
        K = torch.cat([ctxt_params["K"], trgt_params["K"][:, None]], 1)
        latent = latent if self.latent_dim else None
        field = self.field.bind(maps, c2w, K, t, latent)
        coarse = self.coarse_network.bind(maps, c2w, K, t, latent) if self.coarse_network is not None else field
        return Scene(field, coarse, context_render, trgt_params["near"], trgt_params["far"])

    def render_context(self, ctxt_features: Tensor, ctxt_params: Cameras, trgt_params: Cameras) -> dict[str, Tensor]:
        """``O_det``: the target view rendered from the context views alone, at ``t = 0`` (coarse pass only).

        Depth is mapped to [-1, 1] over the scene's ``[near, far]`` for the encoder."""
        B = ctxt_features.shape[0]
        r = self.renderer

        def render(ctxt_features: Tensor) -> tuple[Tensor, ...]:
            latent = ctxt_features.new_zeros(B, self.latent_dim) if self.latent_dim else None
            field = self.field.bind(ctxt_features, ctxt_params["c2w"], ctxt_params["K"], ctxt_features.new_zeros(B), latent)
            cameras = {"c2w": trgt_params["c2w"], "K": trgt_params["K"]}  # the whole target view, never a patch
            near, far = trgt_params["near"], trgt_params["far"]
            out = r.render(field, field, cameras, near, far, self.context_resolution, num_coarse=self.context_samples, num_fine=0)
            near, far = (x.to(out["depth"]).view(-1, 1, 1, 1) for x in (near, far))
            depth = 2 * (out["depth"] - near) / (far - near) - 1
            return out["observation"], depth, out["opacity"], out.get("features", depth[:, :0])

        if self.context_checkpoint and torch.is_grad_enabled():
            rgb, depth, opacity, features = checkpoint(render, ctxt_features, use_reentrant=False)
        else:
            rgb, depth, opacity, features = render(ctxt_features)
        return {"rgb": rgb, "depth": depth, "opacity": opacity, "features": features}
