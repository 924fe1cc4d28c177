"""The InceptionV3 that FID is defined with, built here and loaded from a user-given file.

FID and KID values are only comparable between papers when the feature network, its weights and its
input pipeline are the same. This module reproduces pytorch-fid's network exactly: the TensorFlow
2015-12-05 InceptionV3 graph (the one of the original TTUR FID code), which differs from
torchvision's ImageNet InceptionV3 in its weights (1008 classes) and in three block types (average
pools that ignore padding, and a *max* pool in the last block). We define it ourselves (no
torchvision, nothing downloaded at run time) and read pytorch-fid's weight file
``pt_inception-2015-12-05-6726825d.pth`` (:data:`WEIGHTS_URL`): its keys are those of torchvision's
``Inception3(num_classes=1008, aux_logits=False)`` (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch1x1.bn.running_mean``, ..., ``fc.weight``), and our module has exactly that key set
and those shapes, so the file loads strictly.

Input conventions of :class:`InceptionFeatures` (those of pytorch-fid, whose reference images are
8-bit PNG files read as ``uint8 / 255``):

1. images ``(N, 3, H, W)`` in [0, 1] are clamped and quantised to 8 bits, ``round(x * 255) / 255``,
   as if written to PNG and read back, so generated and stored images are measured alike;
2. resized to 299x299 with ``F.interpolate(mode="bilinear", align_corners=False)`` and no
   antialiasing, exactly pytorch-fid's resize (torch-fidelity, hence torchmetrics' default FID,
   instead feeds ``uint8`` through a re-implementation of TensorFlow 1's bilinear resize, and
   clean-fid uses PIL bicubic: each gives slightly different numbers);
3. scaled to [-1, 1] by ``2 x - 1``;
4. the 2048 channels of the final average pool are the features.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfm.training.checkpoint import CheckpointError, load_weights

__all__ = ["WEIGHTS_FILE", "WEIGHTS_URL", "InceptionFeatures", "MetricWeightsError"]

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
SIZE = 299


class MetricWeightsError(ValueError):
    """A metric's weight file is missing, unreadable, or does not match its network."""


class _Conv(nn.Module):
    """Bias-free convolution, batch norm with TensorFlow's eps, ReLU (keys ``conv.*``, ``bn.*``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | tuple = 0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor) -> Tensor:
    """TensorFlow's 3x3 'SAME' average pool: padded zeros do not count towards the mean."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):  # Mixed_5b/c/d: 35x35, -> 224 + pool_ch channels
    def __init__(self, c_in: int, pool_ch: int):
        super().__init__()
        self.branch1x1 = _Conv(c_in, 64, 1)
        self.branch5x5_1 = _Conv(c_in, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(c_in, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(c_in, pool_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], 1)  # fmt: skip


class _BlockB(nn.Module):  # Mixed_6a: 35x35 -> 17x17, 288 -> 768 channels
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = _Conv(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(c_in, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)  # fmt: skip


class _BlockC(nn.Module):  # Mixed_6b-e: 17x17, 768 channels, factorised 7x7 convolutions
    def __init__(self, c_in: int, c7: int):
        super().__init__()
        self.branch1x1 = _Conv(c_in, 192, 1)
        self.branch7x7_1 = _Conv(c_in, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(c_in, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            dbl = conv(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool(x)),
        ], 1)  # fmt: skip


class _BlockD(nn.Module):  # Mixed_7a: 17x17 -> 8x8, 768 -> 1280 channels
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = _Conv(c_in, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(c_in, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):  # Mixed_7b/c: 8x8, -> 2048 channels, split 1x3 / 3x1 convolutions
    def __init__(self, c_in: int, max_pool: bool):
        super().__init__()
        # The FID graph's last block (Mixed_7c) pools with max, not average: likely a slip in that
        # TensorFlow export, but it is the network every reference FID was computed with.
        self.max_pool = max_pool
        self.branch1x1 = _Conv(c_in, 320, 1)
        self.branch3x3_1 = _Conv(c_in, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(c_in, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], 1)  # fmt: skip


class InceptionFeatures(nn.Module):
    """``(N, 3, H, W)`` images in [0, 1], any size -> ``(N, 2048)`` FID Inception pool features.

    ``InceptionFeatures()`` only builds the architecture with random weights; get the real network
    from :meth:`from_file`. The module is frozen and always in eval mode (batch statistics would
    change the features). ``num_features`` tells torchmetrics' FID/KID the feature size.
    """

    num_features = 2048

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _BlockA(192, 32)
        self.Mixed_5c = _BlockA(256, 64)
        self.Mixed_5d = _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, 128)
        self.Mixed_6c = _BlockC(768, 160)
        self.Mixed_6d = _BlockC(768, 160)
        self.Mixed_6e = _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # the 1008-way classifier: unused, but part of the file's keys
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> InceptionFeatures:
        """Load pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` with strict key and shape checks.

        The ``bn.num_batches_tracked`` counters are the only keys that may be absent (they are
        training bookkeeping, unused in eval; some conversions of the same weights omit them).

        Raises:
            MetricWeightsError: the file is missing, unreadable, or its keys/shapes do not match.
        """
        where = f"FID Inception weights file {os.fspath(path)!r}"
        if not os.path.isfile(path):
            raise MetricWeightsError(
                f"{where} does not exist (or is not a file); FID/KID need pytorch-fid's {WEIGHTS_FILE} "
                f"({WEIGHTS_URL}), a random network is never used"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip and torch errors all mean "not a readable checkpoint"
            raise MetricWeightsError(f"{where} could not be read as a torch state dict: {exc}") from exc
        if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
        ):
            raise MetricWeightsError(f"{where} does not hold a state dict of tensors (got {type(state).__name__})")
        model = cls()
        state = dict(state)
        for key, value in model.state_dict().items():
            if key.endswith(".num_batches_tracked"):
                state.setdefault(key, value)
        try:
            load_weights(model, state, source=where)
        except CheckpointError as error:
            raise MetricWeightsError(str(error)) from error
        return model

    def train(self, mode: bool = True) -> InceptionFeatures:
        """Stay in eval mode whatever is asked (a metric wrapper may call ``.train()``)."""
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"InceptionFeatures needs (N, 3, H, W) images in [0, 1], got {tuple(images.shape)}")
        x = torch.round(images.clamp(0, 1) * 255) / 255  # 8-bit, like a PNG round trip
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # (N, 3, 299, 299) in [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = F.max_pool2d(x, 3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (N, 192, 71, 71)
        x = F.max_pool2d(x, 3, stride=2)  # (N, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d):
            x = block(x)  # (N, 288, 35, 35) after the last
        for block in (self.Mixed_6a, self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
            x = block(x)  # (N, 768, 17, 17)
        for block in (self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # (N, 2048, 8, 8) after the last
        return x.mean(dim=(2, 3))  # (N, 2048)
