"""Pretrained GAN generators as forward models (GAN inversion: the signal is the latent).

Two architectures (:data:`ARCHITECTURES`), both defined in this project and loaded from a weight file
by :func:`load_generator`:

- ``dcgan64``: the 64x64 DCGAN face generator (DigiFace1M, latent size 100) whose weights ship inside
  the PyPI wheel ``gan-face-generate`` (install it with ``pip install --no-deps gan-face-generate``: its
  declared dependencies would pull torchvision, which we do not need). Only the weight file is used;
  the package's own code is never imported.
- ``stylegan2``: the paper's generator (:mod:`dfm.stylegan2`), from a state dict the user exports once
  from the official checkpoint.

Both have the same prior interface: ``noise_dim``, ``latent_dim`` and ``latents_from_noise(u, psi)``, the
latent of standard normal noise ``u`` under truncation ``psi``. Priors are thereby pushforwards of
N(0, I), which is what the exact posterior of :mod:`dfm.tasks.gan` samples over.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from dfm.stylegan2 import StyleGAN2Generator
from dfm.training.checkpoint import CheckpointError, load_weights, nonfinite_tensors

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

    @property
    def noise_dim(self) -> int:
        return self.latent_dim

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latents must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        return self.main(z[:, :, None, None])

    def latents_from_noise(self, u: Tensor, truncation_psi: float = 1.0) -> Tensor:
        """``psi * u``: a DCGAN has no mapping network, so truncation pulls the Gaussian z itself towards
        its mean 0 (StyleGAN truncates in w). ``psi < 1`` trades diversity for typical, cleaner images."""
        return truncation_psi * u

    def prior_latents(self, n: int, generator: torch.Generator | None = None, truncation_psi: float = 1.0) -> Tensor:
        """``n`` latents of the (truncated) prior."""
        return self.latents_from_noise(torch.randn(n, self.noise_dim, generator=generator), truncation_psi)


ARCHITECTURES: dict[str, type[nn.Module]] = {"dcgan64": DCGANGenerator, "stylegan2": StyleGAN2Generator}


def bundled_weights_path() -> Path:
    """The weight file inside the installed gan-face-generate wheel, found without importing the package."""
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)  # a top-level spec: nothing of the package runs
    if spec is None or not spec.submodule_search_locations:
        raise GeneratorError(f"the pretrained DCGAN face generator is not installed: {_INSTALL_HINT}, or pass a path")
    return Path(next(iter(spec.submodule_search_locations))) / _BUNDLED_FILE


def load_generator(path: str | Path | None = None, architecture: str = "dcgan64", **options) -> nn.Module:
    """A frozen pretrained generator: eval mode, no parameter requires grad.

    ``path``: a ``.safetensors`` file, or a ``torch.save``'d state dict (read with ``weights_only=True``),
    plain or under ``netG_state_dict``; None loads the gan-face-generate DCGAN weights. ``options`` go to
    the architecture (e.g. ``width=32``, ``space="w+"``). Loading is strict: missing, unexpected and
    wrongly shaped keys are named in the GeneratorError, as are non-finite values.
    """
    if architecture not in ARCHITECTURES:
        raise GeneratorError(f"{path}: unknown generator architecture {architecture!r}; available: {sorted(ARCHITECTURES)}")
    bundled = path is None
    if bundled and architecture != "dcgan64":
        raise GeneratorError(f"the {architecture} generator needs a weight file (generator.path); see dfm.stylegan2 for the export")
    path = bundled_weights_path() if bundled else Path(path)
    if not path.is_file():
        hint = f" (reinstall gan-face-generate: {_INSTALL_HINT})" if bundled else ""
        raise GeneratorError(f"generator weights not found: {path}{hint}")
    try:
        state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types; torch's message suggests unsafe loading
        raise GeneratorError(
            f"cannot read generator weights {path} ({type(e).__name__}); expected a .safetensors file or a state dict "
            "saved with torch.save (read with weights_only=True)"
        ) from e
    if isinstance(state, dict) and "netG_state_dict" in state:
        state = state["netG_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise GeneratorError(f"{path} holds no state dict (a dict of tensors, possibly under 'netG_state_dict')")
    bad = nonfinite_tensors(state)
    if bad:
        raise GeneratorError(f"{path}: non-finite values in {', '.join(bad[:5])}")
    model = ARCHITECTURES[architecture](**options)
    try:
        load_weights(model, state, source=f"generator weights {path}")
    except CheckpointError as e:
        raise GeneratorError(f"{e} (architecture {architecture!r}, options {options})") from e
    return model.eval().requires_grad_(False)


class GeneratorForward(nn.Module):
    """The GAN-inversion forward model ``(latent, params) -> image`` in [-1, 1].

    Every observation is the whole image rendered by the same fixed generator; ``params`` only chooses its
    size: None renders at ``resolution`` (None: the generator's own), ``{"resolution": (B,) tensor}`` at
    that size (one for the whole batch; 0: the generator's own), e.g. a novel view at full resolution
    that constrains what the training resolution does not show.

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

    def forward(self, signal: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        size = self.resolution if params is None else int(params["resolution"].flatten()[0]) or None
        return resize(self.generator(signal), size)


def resize(image: Tensor, size: int | None) -> Tensor:
    """``image`` (B, C, H, W) at ``size`` x ``size`` (None: as it is); area averaging anti-aliases a downsample."""
    if size is None or image.shape[-2:] == (size, size):
        return image
    if size < min(image.shape[-2:]):
        return F.interpolate(image, size=(size, size), mode="area")
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
