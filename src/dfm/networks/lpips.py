"""LPIPS perceptual distance (Zhang et al. 2018, version 0.1), built here and loaded from user-given files.

Pixel losses blur; LPIPS compares images through the channel-normalised activations of an ImageNet
network, weighted by 1x1 layers fitted to human similarity judgements. We define the network
ourselves (no torchvision, no ``lpips`` package, nothing downloaded at run time) and read the weights
from two files the user supplies:

* the backbone: torchvision's ImageNet checkpoint (``vgg16-397923af.pth`` or
  ``alexnet-owt-7be5be79.pth``); our conv stack has the same ``features.<i>.*`` keys, so the file
  loads as is (``classifier.*`` keys are ignored, a features-only state dict works too);
* the linear layers: the ``lpips`` package's ``weights/v0.1/vgg.pth`` or ``alex.pth``, keys
  ``lin<k>.model.1.weight`` of shape ``(1, C_k, 1, 1)``.

Without both files :func:`load_lpips` warns and returns ``None``: a randomly initialised LPIPS would
silently train against noise, so the term is switched off instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from dfm.training.checkpoint import CheckpointError, load_weights

Backbone = Literal["vgg", "alex"]

# Per backbone: the torchvision ``features`` layers up to the last tap, the indices whose outputs
# are tapped (after relu1_2 ... relu5_3 for VGG16, relu1 ... relu5 for AlexNet), their channels,
# and the smallest input side that still leaves a pixel at the last tap.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = {"vgg": (3, 8, 15, 22, 29), "alex": (1, 4, 7, 9, 11)}
CHANNELS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}
MIN_SIZE = {"vgg": 16, "alex": 31}
WEIGHT_FILES = {
    "vgg": ("vgg16-397923af.pth", "weights/v0.1/vgg.pth"),
    "alex": ("alexnet-owt-7be5be79.pth", "weights/v0.1/alex.pth"),
}


class LPIPSWeightsError(ValueError):
    """A weight file is missing, unreadable, or does not match the architecture."""


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.ReLU()]
            in_ch = v
    return nn.Sequential(*layers)


def _alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )  # fmt: skip


class _Backbone(nn.Module):
    """Holds ``features`` so that this module's state-dict keys are torchvision's (``features.<i>.*``)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.features = _vgg16_features() if backbone == "vgg" else _alexnet_features()


class _LinearLayers(nn.Module):
    """The per-tap 1x1 convolutions (``C_k -> 1``, no bias) with the lpips file's keys
    ``lin<k>.model.1.weight``; slot 0 of each ``model`` is the (inference-time no-op) dropout."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        for k, c in enumerate(channels):
            lin = nn.Module()
            lin.model = nn.Sequential(nn.Identity(), nn.Conv2d(c, 1, 1, bias=False))
            self.add_module(f"lin{k}", lin)

    def weights(self) -> list[Tensor]:
        return [self.get_submodule(f"lin{k}.model.1").weight for k in range(len(self._modules))]


def _normalise(f: Tensor, eps: float = 1e-10) -> Tensor:
    """Divide each pixel's feature vector by its L2 norm over channels."""
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """``(x, y: (B, 3, H, W) in [-1, 1]) -> (B,)`` LPIPS v0.1 distances.

    ``LPIPS(backbone)`` only builds the architecture with random weights; get a usable metric from
    :meth:`from_files` (or :func:`load_lpips`). Gradients flow to the inputs, so it can serve as a loss.
    """

    def __init__(self, backbone: Backbone = "vgg"):
        super().__init__()
        if backbone not in _TAPS:
            raise ValueError(f"unknown LPIPS backbone {backbone!r}; expected one of {sorted(_TAPS)}")
        self.backbone_name = backbone
        self.taps = _TAPS[backbone]
        self.backbone = _Backbone(backbone)
        self.linear = _LinearLayers(CHANNELS[backbone])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_files(
        cls, backbone_path: str | os.PathLike[str], linear_path: str | os.PathLike[str], backbone: Backbone = "vgg"
    ) -> LPIPS:
        """Load the backbone (torchvision layout) and linear (lpips v0.1 layout) weights with strict
        key and shape checks; returns the net in eval mode with every parameter frozen.

        Raises:
            LPIPSWeightsError: a file is missing, unreadable, or its keys/shapes do not match.
        """
        model = cls(backbone)
        state = _read_state_dict(backbone_path, f"{backbone} backbone")
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        if state and not any(k.startswith("features.") for k in state):
            state = {f"features.{k}": v for k, v in state.items()}  # a bare `features` state dict
        _load_strict(model.backbone, state, backbone_path, f"{backbone} backbone")
        linear = _read_state_dict(linear_path, f"{backbone} linear")
        _load_strict(model.linear, linear, linear_path, f"{backbone} linear")
        model.eval()
        model.requires_grad_(False)
        return model

    def features(self, x: Tensor) -> list[Tensor]:
        """The five backbone taps (unnormalised) of ``x: (B, 3, H, W)`` in [-1, 1], after the input scaling."""
        h = (x - self.shift) / self.scale
        taps = []
        for i, layer in enumerate(self.backbone.features):
            h = layer(h)
            if i in self.taps:
                taps.append(h)
        return taps

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS needs two (B, 3, H, W) images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if min(x.shape[-2:]) < MIN_SIZE[self.backbone_name]:
            raise ValueError(
                f"LPIPS-{self.backbone_name} needs images of at least {MIN_SIZE[self.backbone_name]} px a side, "
                f"got {tuple(x.shape[-2:])}"
            )
        total = x.new_zeros(x.shape[0])
        for f, w in zip(self.features(torch.cat([x, y])), self.linear.weights(), strict=True):
            fx, fy = f.chunk(2)
            d = (_normalise(fx) - _normalise(fy)).pow(2)
            total = total + nn.functional.conv2d(d, w).mean(dim=(1, 2, 3))
        return total


def load_lpips(backbone_path: str | None, linear_path: str | None, backbone: Backbone = "vgg") -> LPIPS | None:
    """:meth:`LPIPS.from_files`, or ``None`` with a warning when either path is not given (the LPIPS
    term is then off; a random network is never returned)."""
    if backbone_path is None or linear_path is None:
        if backbone not in WEIGHT_FILES:
            raise ValueError(f"unknown LPIPS backbone {backbone!r}; expected one of {sorted(WEIGHT_FILES)}")
        net_file, lin_file = WEIGHT_FILES[backbone]
        missing = " and ".join(name for name, p in (("backbone", backbone_path), ("linear", linear_path)) if p is None)
        warnings.warn(
            f"LPIPS term is off: no {missing} weights path given. To enable it, pass the torchvision "
            f"ImageNet checkpoint ({net_file}) as the backbone file and the lpips v0.1 linear weights "
            f"({lin_file}) as the linear file.",
            stacklevel=2,
        )
        return None
    return LPIPS.from_files(backbone_path, linear_path, backbone)


def _read_state_dict(path: str | os.PathLike[str], what: str) -> dict[str, Tensor]:
    if not os.path.isfile(path):
        raise LPIPSWeightsError(f"LPIPS {what} weights file {os.fspath(path)!r} does not exist (or is not a file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a readable checkpoint"
        raise LPIPSWeightsError(
            f"LPIPS {what} weights file {os.fspath(path)!r} could not be read as a torch state dict: {exc}"
        ) from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise LPIPSWeightsError(
            f"LPIPS {what} weights file {os.fspath(path)!r} does not hold a state dict of tensors "
            f"(got {type(state).__name__})"
        )
    return dict(state)


def _load_strict(module: nn.Module, state: dict[str, Tensor], path: str | os.PathLike[str], what: str) -> None:
    try:
        load_weights(module, state, source=f"LPIPS {what} weights file {os.fspath(path)!r}")
    except CheckpointError as error:
        raise LPIPSWeightsError(str(error)) from error
