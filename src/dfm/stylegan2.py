"""The StyleGAN2 generator (Karras et al. 2020; ADA variant, Karras et al. 2020b) as a fixed forward model.

A clean-room definition written from the method: a mapping MLP turns ``z`` into a style vector ``w``; the
synthesis network starts from a learned 4x4 constant and doubles the resolution in each block with
style-modulated, demodulated 3x3 convolutions, and (the 'skip' architecture) sums every block's ToRGB
output into the image, up-sampling the running image with the [1, 3, 3, 1] FIR filter.

Weights. Submodule, parameter and buffer names and shapes equal those of the ``G_ema`` network of the
official PyTorch release (NVlabs/stylegan2-ada-pytorch, ``training/networks.py``; the StyleGAN3 release's
``networks_stylegan2.py`` has the same layout). The defaults are the FFHQ 256x256 network used by the DFM
paper, ``ffhq-res256-mirror-paper256-noaug.pkl`` (stylegan2-ada-pytorch ``pretrained/transfer-learning-
source-nets``): the 'paper256' configuration, i.e. z_dim = w_dim = 512, 8 mapping layers, channel_base
16384 (fmaps 0.5 * 32768; the TensorFlow original stores fmap_base 8192, which the official converter
doubles), channel_max 512, so 512 channels up to 32x32, then 256, 128, 64; conv_clamp 256; 14 ws. NVIDIA's
later ``stylegan2-ffhq-256x256.pkl`` (StyleGAN3 release) was trained with ``--cbase=16384`` and the
stylegan2 config's 8 mapping layers, so it has the same layout; other networks load by passing their
``img_resolution``, ``channel_base`` (32768 for the 512 and 1024 networks), ``num_mapping_layers`` etc.

One-time export, on a machine with the official repository (its ``legacy.py``) and the pickle::

    import legacy, torch
    with open("ffhq-res256-mirror-paper256-noaug.pkl", "rb") as f:
        G = legacy.load_network_pkl(f)["G_ema"]
    torch.save(G.state_dict(), "stylegan2_ffhq256.pt")  # or safetensors.torch.save_file(...)

then ``dfm.generators.load_generator("stylegan2_ffhq256.pt", "stylegan2", space="w")``, or in a config
``generator: {architecture: stylegan2, path: stylegan2_ffhq256.pt, space: w}``. We never unpickle the official file ourselves: it holds
code objects, not just tensors.

Differences from the official module, none of which change the weights: everything runs in fp32 (the
official one runs the four highest resolutions in fp16 on GPUs, so its images differ by fp16 rounding);
noise is the stored ``noise_const`` by default (the official default is fresh random noise), because a
forward model must be a deterministic function of the latent; ``w_avg`` is loaded, never updated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SPACES = ("z", "w", "w+")
NOISE_MODES = ("const", "none")
_FIR_TAPS = (1.0, 3.0, 3.0, 1.0)  # binomial low-pass filter used for every 2x up-sampling
_KERNEL = 3  # synthesis convolutions are 3x3
_LRELU_SLOPE, _LRELU_GAIN = 0.2, math.sqrt(2)  # the gain keeps the activations' second moment at 1


def fir_filter(taps: tuple[float, ...] = _FIR_TAPS) -> Tensor:
    """The separable 2-D filter ``outer(taps, taps)`` normalised to sum 1 (the ``resample_filter`` buffers)."""
    t = torch.tensor(taps)
    f = torch.outer(t, t)
    return f / f.sum()


def _depthwise_fir(x: Tensor, f: Tensor, gain: float) -> Tensor:
    """Filter every channel of ``x`` (already padded) with ``gain * f`` as a convolution (``f`` flipped)."""
    c = x.shape[1]
    kernel = (gain * f.flip(0, 1)).to(x.dtype).expand(c, 1, *f.shape)
    return F.conv2d(x, kernel, groups=c)


def upsample2x(x: Tensor, f: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, C, 2H, 2W)``: zero insertion, then convolution with ``4 f``.

    A transposed convolution with stride 2 does both at once; ``padding=1`` crops the result so that the
    output grid is centred like the input's. With the [1, 3, 3, 1] filter each output pixel is
    ``(3 * nearer + 1 * farther) / 4`` along each axis: bilinear interpolation with half-pixel centres,
    except at the border, where the pixels outside are zeros.
    """
    c, k = x.shape[1], f.shape[-1]
    kernel = (4 * f).to(x.dtype).expand(c, 1, k, k)
    return F.conv_transpose2d(x, kernel, stride=2, padding=(k - 2) // 2, groups=c)


def modulated_conv2d(
    x: Tensor, weight: Tensor, styles: Tensor, *, demodulate: bool = True, up_filter: Tensor | None = None
) -> Tensor:
    """StyleGAN2's modulated convolution, one weight per example, as one grouped convolution.

    ``x`` (B, I, H, W), ``weight`` (O, I, k, k), ``styles`` (B, I). Each example's weight is scaled along
    its input channels by its styles; demodulation then rescales every output channel's weight to unit
    norm, which normalises the output statistics without instance normalisation's droplet artefacts.
    Without ``up_filter`` this is a 'same' correlation (``F.conv2d``); with it, the input is up-sampled 2x
    first: a stride-2 transposed convolution (zero insertion plus a true convolution with the weight),
    then the low-pass ``up_filter`` with gain 4; returns (B, O, 2H, 2W).
    """
    b, _, h, w_ = x.shape
    out_c, in_c, k, _ = weight.shape
    w = weight[None] * styles[:, None, :, None, None]  # (B, O, I, k, k)
    if demodulate:
        w = w * (w.square().sum((2, 3, 4), keepdim=True) + 1e-8).rsqrt()
    x = x.reshape(1, b * in_c, h, w_)  # examples become groups
    if up_filter is None:
        y = F.conv2d(x, w.reshape(b * out_c, in_c, k, k), padding=k // 2, groups=b)
    else:
        if k != 3 or up_filter.shape[-1] != 4:
            raise ValueError("up-sampling modulated convolution supports 3x3 weights and 4-tap filters")
        y = F.conv_transpose2d(x, w.transpose(1, 2).reshape(b * in_c, out_c, k, k), stride=2, groups=b)
        # y is 2H + 1 wide; one pixel of padding per side lets the 4-tap filter leave 2H, on upsample2x's grid
        y = _depthwise_fir(F.pad(y, (1, 1, 1, 1)), up_filter, gain=4.0)
    return y.reshape(b, out_c, *y.shape[2:])


class FullyConnected(nn.Module):
    """Dense layer with equalised learning rate: the weight is stored as N(0, 1) / ``lr_multiplier`` and
    scaled by ``lr_multiplier / sqrt(in_features)`` at run time (the bias by ``lr_multiplier``), so every
    layer learns at the same speed under Adam; ``lrelu`` adds leaky ReLU (slope 0.2) with gain sqrt(2)."""

    def __init__(self, in_features: int, out_features: int, *, lrelu: bool = False,
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.lrelu, self.lr_multiplier = lrelu, lr_multiplier
        self.weight_gain = lr_multiplier / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_multiplier)
        return F.leaky_relu(x, _LRELU_SLOPE) * _LRELU_GAIN if self.lrelu else x


class MappingNetwork(nn.Module):
    """``z`` (B, z_dim) -> ``w`` (B, w_dim): normalise z to unit second moment, then an MLP whose layers learn
    100x slower (lr multiplier 0.01). ``w_avg`` is the training-time running mean of w (truncation target)."""

    def __init__(self, z_dim: int, w_dim: int, num_layers: int):
        super().__init__()
        self.z_dim, self.num_layers = z_dim, num_layers
        for i in range(num_layers):
            layer = FullyConnected(z_dim if i == 0 else w_dim, w_dim, lrelu=True, lr_multiplier=0.01)
            setattr(self, f"fc{i}", layer)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: Tensor, truncation_psi: float = 1.0) -> Tensor:
        """``truncation_psi`` pulls w towards ``w_avg`` (1: not at all, 0: always ``w_avg``): the truncation
        trick, trading diversity for typical, cleaner images."""
        _check_shape(z, (self.z_dim,), "z")
        x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        return x if truncation_psi == 1 else self.w_avg.lerp(x, truncation_psi)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally up-sampling 2x), plus per-pixel noise, bias, leaky ReLU with gain
    sqrt(2), and a clamp to ``+-conv_clamp`` (the official networks were trained with it, so it is part of
    the function). ``noise_const`` is a fixed (res, res) noise image scaled by ``noise_strength``."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, *, up: bool,
                 conv_clamp: float | None, noise_mode: str):
        super().__init__()
        self.up, self.conv_clamp, self.noise_mode = up, conv_clamp, noise_mode
        self.register_buffer("resample_filter", fir_filter())
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)  # styles start at 1: no modulation
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, _KERNEL, _KERNEL))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        up_filter = self.resample_filter if self.up else None
        x = modulated_conv2d(x, self.weight, self.affine(w), up_filter=up_filter)
        if self.noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        x = F.leaky_relu(x + self.bias[:, None, None], _LRELU_SLOPE) * _LRELU_GAIN
        return x if self.conv_clamp is None else x.clamp(-self.conv_clamp, self.conv_clamp)


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to RGB, not demodulated (it outputs colours, not normalised features);
    the styles carry the equalised-learning-rate gain 1/sqrt(in_channels)."""

    def __init__(self, in_channels: int, img_channels: int, w_dim: int, *, conv_clamp: float | None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(img_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False) + self.bias[:, None, None]
        return x if self.conv_clamp is None else x.clamp(-self.conv_clamp, self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the 'skip' synthesis network. The first block (``in_channels == 0``) starts from
    the learned ``const`` and has one convolution; the others up-sample with ``conv0`` and refine with
    ``conv1``. Every block adds its ToRGB output to the 2x up-sampled running image. Consumes
    ``num_conv + 1`` ws (its convolutions', then its ToRGB's)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 conv_clamp: float | None, noise_mode: str):
        super().__init__()
        self.register_buffer("resample_filter", fir_filter())
        layer = {"w_dim": w_dim, "resolution": resolution, "conv_clamp": conv_clamp, "noise_mode": noise_mode}
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=True, **layer)
        self.conv1 = SynthesisLayer(out_channels, out_channels, up=False, **layer)
        self.torgb = ToRGB(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2

    def forward(self, x: Tensor | None, img: Tensor | None, ws: Tensor) -> tuple[Tensor, Tensor]:
        """``ws`` (B, num_conv + 1, w_dim); ``x``, ``img`` are None for the first block."""
        if x is None:
            x = self.const.expand(ws.shape[0], *self.const.shape)
            x = self.conv1(x, ws[:, 0])
        else:
            x = self.conv1(self.conv0(x, ws[:, 0]), ws[:, 1])
        rgb = self.torgb(x, ws[:, self.num_conv])
        return x, rgb if img is None else upsample2x(img, self.resample_filter) + rgb


class SynthesisNetwork(nn.Module):
    """``ws`` (B, num_ws, w_dim) -> image (B, img_channels, R, R); blocks ``b4 ... bR`` with
    ``min(channel_base // res, channel_max)`` channels at resolution ``res``."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int, channel_max: int,
                 conv_clamp: float | None, noise_mode: str):
        super().__init__()
        self.w_dim = w_dim
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.resolutions = [2**i for i in range(2, img_resolution.bit_length())]
        channels = {res: min(channel_base // res, channel_max) for res in self.resolutions}
        for res in self.resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_channels, channels[res], w_dim, res, img_channels, conv_clamp, noise_mode)
            setattr(self, f"b{res}", block)
        # consecutive blocks share a w: a block's ToRGB style is the next block's conv0 style
        self.num_ws = sum(self.block(res).num_conv for res in self.resolutions) + 1

    def block(self, res: int) -> SynthesisBlock:
        return getattr(self, f"b{res}")

    def forward(self, ws: Tensor) -> Tensor:
        _check_shape(ws, (self.num_ws, self.w_dim), "ws")
        x = img = None
        start = 0
        for res in self.resolutions:
            block = self.block(res)
            x, img = block(x, img, ws[:, start : start + block.num_conv + 1])
            start += block.num_conv
        return img


class StyleGAN2Generator(nn.Module):
    """StyleGAN2 generator as a forward model ``(B, latent_dim) -> (B, img_channels, R, R)``.

    ``space`` says what the flat latent is: ``"z"`` (B, z_dim), a Gaussian input of the mapping network;
    ``"w"`` (B, w_dim), one style vector for every layer (the DFM paper's choice); ``"w+"``
    (B, num_ws * w_dim), one style vector per layer, flattened. Images are nominally in [-1, 1] but, as in
    the official network, not clamped (clamping would zero the gradient of saturated pixels).
    ``noise_mode`` "const" adds the stored noise images, "none" none; either way the output is a
    deterministic, differentiable function of the latent.

    ``mapping(z, truncation_psi)`` (B, z_dim) -> (B, w_dim) and ``synthesis(ws)`` (B, num_ws, w_dim) ->
    image are the two halves; they are also the submodules whose parameters and buffers are named as in
    the official ``G_ema`` (module docstring). The defaults are the FFHQ-256 ('paper256') configuration.
    """

    def __init__(
        self,
        space: str = "w",
        *,
        z_dim: int = 512,
        w_dim: int = 512,
        img_resolution: int = 256,
        img_channels: int = 3,
        num_mapping_layers: int = 8,
        channel_base: int = 16384,
        channel_max: int = 512,
        conv_clamp: float | None = 256,
        noise_mode: str = "const",
    ):
        super().__init__()
        if space not in SPACES:
            raise ValueError(f"unknown latent space {space!r}; choose one of {SPACES}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"unknown noise_mode {noise_mode!r}; choose one of {NOISE_MODES}")
        self.space, self.z_dim, self.w_dim = space, z_dim, w_dim
        # registered before the mapping network, as in the official Generator (same state-dict order)
        self.synthesis = SynthesisNetwork(
            w_dim, img_resolution, img_channels, channel_base, channel_max, conv_clamp, noise_mode
        )
        self.mapping = MappingNetwork(z_dim, w_dim, num_mapping_layers)

    @property
    def num_ws(self) -> int:
        """How many style vectors the synthesis network takes (14 at 256x256)."""
        return self.synthesis.num_ws

    @property
    def latent_dim(self) -> int:
        return {"z": self.z_dim, "w": self.w_dim, "w+": self.num_ws * self.w_dim}[self.space]

    def to_ws(self, latent: Tensor, space: str | None = None) -> Tensor:
        """Per-layer styles (B, num_ws, w_dim) from a latent in ``space`` (default ``self.space``):
        z (B, z_dim) is mapped without truncation, w (B, w_dim) is repeated, w+ (B, num_ws, w_dim) is kept."""
        space = self.space if space is None else space
        if space not in SPACES:
            raise ValueError(f"unknown latent space {space!r}; choose one of {SPACES}")
        if space == "w+":
            _check_shape(latent, (self.num_ws, self.w_dim), "w+ latents")
            return latent
        w = self.mapping(latent) if space == "z" else latent
        _check_shape(w, (self.w_dim,), "w latents")
        return w[:, None].expand(-1, self.num_ws, -1)

    def forward(self, latent: Tensor) -> Tensor:
        """Flat latents (B, latent_dim) in ``self.space`` -> images (B, img_channels, R, R)."""
        _check_shape(latent, (self.latent_dim,), f"{self.space} latents")
        if self.space == "w+":
            latent = latent.reshape(-1, self.num_ws, self.w_dim)
        return self.synthesis(self.to_ws(latent))

    @property
    def noise_dim(self) -> int:
        return self.z_dim

    def latents_from_noise(self, u: Tensor, truncation_psi: float = 1.0) -> Tensor:
        """Flat latents (B, latent_dim) in ``self.space`` of standard normal ``u`` (B, z_dim), the prior's source.

        z: ``u`` itself. w: ``mapping(u, truncation_psi)``. w+: that w repeated for every layer (the prior puts
        all layers at one w). Truncation is defined in w space only (pulling z towards 0 is not what
        StyleGAN's psi means), so in z space ``truncation_psi`` must be 1.
        """
        if self.space == "z":
            if truncation_psi != 1:
                raise ValueError("truncation applies to w; a z-space prior cannot be truncated (use space 'w')")
            return u
        w = self.mapping(u, truncation_psi)
        return w if self.space == "w" else w.repeat(1, self.num_ws)

    def prior_latents(self, n: int, generator: torch.Generator | None = None, truncation_psi: float = 1.0) -> Tensor:
        """``n`` flat latents of the prior (see :meth:`latents_from_noise`); ``generator`` on the module's device."""
        u = torch.randn(n, self.z_dim, generator=generator, device=self.mapping.w_avg.device)
        return self.latents_from_noise(u, truncation_psi)


def _check_shape(x: Tensor, tail: tuple[int, ...], what: str) -> None:
    if x.ndim != 1 + len(tail) or tuple(x.shape[1:]) != tail:
        raise ValueError(f"{what} must have shape (B, {', '.join(map(str, tail))}), got {tuple(x.shape)}")
