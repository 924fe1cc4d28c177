"""Pretrained GAN generators as forward models (GAN inversion: the signal is the latent).

The default generator is the 64x64 DCGAN face generator (DigiFace1M, latent size 100) whose weights
ship inside the PyPI wheel ``gan-face-generate`` (install it with ``pip install --no-deps
gan-face-generate``: its declared dependencies would pull torchvision, which we do not need). Only the
weight file is used; the package's own code is never imported. The architecture is defined here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from dfm.training.checkpoint import CheckpointError, load_weights

_BUNDLED_PACKAGE, _BUNDLED_FILE = "gan_face_generate", "weights.tar"
_INSTALL_HINT = "install it with `pip install --no-deps gan-face-generate`"


class GeneratorError(Exception):
    """Generator weights are missing, unreadable, or do not fit the requested architecture."""


class DCGANGenerator(nn.Module):
    """DCGAN generator (Radford et al. 2016) for 64x64 images: ``(B, latent_dim) -> (B, channels, 64, 64)``.

    A latent seen as a 1x1 map goes through five 4x4 transposed convolutions (1 -> 4 -> 8 -> 16 -> 32 -> 64
    pixels; ``8w, 4w, 2w, w`` channels, each followed by BatchNorm and ReLU), then Tanh, so images are in
    [-1, 1]. The layers sit in one ``nn.Sequential`` called ``main`` so that the state-dict keys match the
    gan-face-generate weights (``main.0.weight`` ... ``main.12.weight``).
    """

    def __init__(self, latent_dim: int = 100, width: int = 64, channels: int = 3):
        super().__init__()
        self.latent_dim = latent_dim
        widths = [latent_dim, 8 * width, 4 * width, 2 * width, width]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            stride, padding = (1, 0) if i == 0 else (2, 1)
            conv = nn.ConvTranspose2d(c_in, c_out, 4, stride, padding, bias=False)
            layers += [conv, nn.BatchNorm2d(c_out), nn.ReLU()]
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latents must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        return self.main(z[:, :, None, None])


ARCHITECTURES: dict[str, type[nn.Module]] = {"dcgan64": DCGANGenerator}


def bundled_weights_path() -> Path:
    """The weight file inside the installed gan-face-generate wheel, found without importing the package."""
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)  # a top-level spec: nothing of the package runs
    if spec is None or not spec.submodule_search_locations:
        raise GeneratorError(f"the pretrained DCGAN face generator is not installed: {_INSTALL_HINT}, or pass a path")
    return Path(next(iter(spec.submodule_search_locations))) / _BUNDLED_FILE


def load_generator(path: str | Path | None = None, architecture: str = "dcgan64", **options) -> nn.Module:
    """A frozen pretrained generator: eval mode, no parameter requires grad.

    ``path`` is a ``torch.save``'d plain state dict or a dict holding one under ``netG_state_dict``; None
    loads the gan-face-generate weights. ``options`` go to the architecture (e.g. ``width=32``).
    """
    bundled = path is None
    path = bundled_weights_path() if bundled else Path(path)
    if architecture not in ARCHITECTURES:
        known = sorted(ARCHITECTURES)
        raise GeneratorError(f"{path}: unknown generator architecture {architecture!r}; available: {known}")
    if not path.is_file():
        hint = f" (reinstall gan-face-generate: {_INSTALL_HINT})" if bundled else ""
        raise GeneratorError(f"generator weights not found: {path}{hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types (pickle, zip, EOF); its message suggests unsafe loading
        raise GeneratorError(
            f"cannot read generator weights {path} with torch.load(weights_only=True) ({type(e).__name__}); "
            "expected a torch.save'd state dict"
        ) from e
    if isinstance(state, dict) and "netG_state_dict" in state:
        state = state["netG_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise GeneratorError(f"{path} holds no state dict (a dict of tensors, possibly under 'netG_state_dict')")
    model = ARCHITECTURES[architecture](**options)
    try:
        load_weights(model, state, source=f"generator weights {path}")
    except CheckpointError as e:
        raise GeneratorError(f"{e} (architecture {architecture!r}, options {options})") from e
    return model.eval().requires_grad_(False)


class GeneratorForward(nn.Module):
    """The GAN-inversion forward model ``(latent, params) -> image`` in [-1, 1].

    ``params`` is ignored (None is fine): every observation is the whole image rendered by the same fixed
    generator, so there is nothing that varies between context and target views.

    The generator is fixed and has its own weight file, so it is kept out of ``parameters()`` and
    ``state_dict()``: optimisers, DDP and checkpoints see only what is learned (a run's config says
    which generator to load). It still follows ``.to()`` and stays in eval mode: in training mode
    BatchNorm would normalise with batch statistics, making an image depend on the rest of the batch.
    """

    def __init__(self, generator: nn.Module, resolution: int | None = 64):
        super().__init__()
        self._frozen = (generator.eval().requires_grad_(False),)  # a tuple is not registered as a submodule
        self.resolution = resolution

    @property
    def generator(self) -> nn.Module:
        return self._frozen[0]

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), .double() reach the hidden generator too
        self.generator._apply(fn)
        return super()._apply(fn, recurse)

    def forward(self, signal: Tensor, params=None) -> Tensor:
        image = self.generator(signal)
        size = self.resolution
        if size is None or image.shape[-2:] == (size, size):
            return image
        if size < min(image.shape[-2:]):  # area averaging anti-aliases a downsample
            return F.interpolate(image, size=(size, size), mode="area")
        return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)


def truncated_latents(
    n: int,
    latent_dim: int,
    psi: float,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    mean: Tensor | None = None,
) -> Tensor:
    """``n`` latents ``z = mean + psi * (z0 - mean)``, ``z0 ~ N(0, I)``: the truncation trick.

    StyleGAN truncates in its mapped w space towards the average w; a DCGAN has no mapping network, so the
    analogue pulls the Gaussian z itself towards its mean (0 unless given). ``psi < 1`` trades diversity
    for typical, cleaner images; ``psi = 1`` is the untruncated prior.
    """
    z0 = torch.randn(n, latent_dim, generator=generator, device=device)
    mean = torch.zeros_like(z0) if mean is None else mean.to(z0)
    return mean + psi * (z0 - mean)


def _masked_mse(image: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per-example mean squared error over the pixels (and all channels) where ``mask`` is 1."""
    weight = mask.to(image.dtype).expand_as(image)
    return (weight * (image - target) ** 2).sum((1, 2, 3)) / weight.sum((1, 2, 3)).clamp_min(1)


def invert_patch(
    forward: GeneratorForward,
    target: Tensor,
    mask: Tensor,
    *,
    steps: int = 500,
    lr: float = 0.05,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    latent_dim: int = 100,
    progress: bool = False,
) -> Tensor:
    """Optimisation baseline for GAN inversion from a partial view: the latents ``(B, latent_dim)`` whose
    images best match ``target`` (``(B, C, H, W)``, [-1, 1]) where ``mask`` (``(B, 1, H, W)``) is 1.

    Adam minimises masked MSE + ``1e-3 * mean(z**2)``; the second term is the Gaussian prior's negative
    log-density (up to scale), which keeps latents where the generator was trained when a small patch
    leaves most of the latent unconstrained. ``restarts`` independent N(0, I) starts (drawn from
    ``generator``) run as one batch; each example keeps the start with the lowest final masked MSE.
    """
    b, device = target.shape[0], target.device
    z = torch.randn(restarts * b, latent_dim, generator=generator, device=device).requires_grad_(True)
    targets, masks = target.repeat(restarts, 1, 1, 1), mask.repeat(restarts, 1, 1, 1)
    optimizer = torch.optim.Adam([z], lr=lr)
    with torch.enable_grad():
        for _ in tqdm(range(steps), desc="inverting", disable=not progress):
            loss = _masked_mse(forward(z), targets, masks) + 1e-3 * z.pow(2).mean(1)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # a sum keeps every example's gradient independent of the batch size
            optimizer.step()
    with torch.no_grad():
        errors = _masked_mse(forward(z), targets, masks).view(restarts, b)
        best = errors.argmin(0)
        return z.detach().view(restarts, b, latent_dim)[best, torch.arange(b, device=device)]
