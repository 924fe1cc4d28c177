"""FID and KID: distances between image sets, measured on the features of a fixed network.

:func:`fid_from_features` and :func:`kid_from_features` take ``(N, D)`` feature tensors from any
network; :func:`fid`, :func:`kid` and :func:`image_features` take images in [-1, 1] (the models'
convention, like every image metric here) and a feature extractor, usually
:class:`~dfm.metrics.inception.InceptionFeatures`, which is handed them in [0, 1] (pytorch-fid's and
torchmetrics' convention for feature modules). Everything is computed in float64 with torch
alone (no scipy at run time): the FID's matrix square root comes from ``eigh`` and ``svdvals``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["fid", "fid_from_features", "image_features", "kid", "kid_from_features"]

Images = Tensor | Iterable[Tensor]  # (N, 3, H, W) in [-1, 1], or batches of it


def _check_pair(a: Tensor, b: Tensor, min_rows: int = 2) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (n, d) and (m, d) feature tensors, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(len(a), len(b)) < min_rows:
        raise ValueError(f"need at least {min_rows} feature vectors per set, got {len(a)} and {len(b)}")


def _sqrt_psd(s: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix. Eigenvalues at round-off level are
    set to 0: with fewer samples than dimensions the covariance is singular, and the square root
    would blow their ~1e-16 noise up to ~1e-8 in every null direction."""
    w, v = torch.linalg.eigh(s)
    w = torch.where(w > w.max() * len(w) * torch.finfo(w.dtype).eps, w, 0)
    return (v * w.sqrt()) @ v.T


def fid_from_features(a: Tensor, b: Tensor) -> float:
    """Fréchet distance ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` between Gaussians fitted
    to ``a: (n, d)`` and ``b: (m, d)`` (unbiased covariances, as pytorch-fid's ``np.cov``).

    ``Tr (S_a S_b)^(1/2)`` is the sum of the square roots of the eigenvalues of ``S_a S_b``, which are
    those of ``S_a^(1/2) S_b S_a^(1/2) = M M^T`` with ``M = S_a^(1/2) S_b^(1/2)``, i.e. the sum of the
    singular values of ``M``: symmetric eigendecompositions and an SVD instead of a general (scipy)
    ``sqrtm``, no complex round-off to discard, and no square root of round-off noise.
    """
    _check_pair(a, b)
    a, b = a.double(), b.double()
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)  # (d, d)
    cross = torch.linalg.svdvals(_sqrt_psd(s_a) @ _sqrt_psd(s_b)).sum()
    return ((a.mean(0) - b.mean(0)).square().sum() + s_a.trace() + s_b.trace() - 2 * cross).item()


def _mmd2_unbiased(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 of two equal-size sets ``(m, d)`` under the kernel ``(x.y / d + 1)^3``."""
    m, d = x.shape

    def kernel(u: Tensor, v: Tensor) -> Tensor:
        return (u @ v.T / d + 1) ** 3  # (m, m)

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    within = k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()
    return within / (m * (m - 1)) - 2 * k_xy.sum() / m**2


def kid_from_features(
    a: Tensor, b: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance of ``a: (n, d)`` and ``b: (m, d)``: mean and (population) standard
    deviation of the unbiased MMD^2 with the cubic kernel ``(x.y / d + 1)^3`` over random subsets.

    Unlike FID it is unbiased, so it can be compared across set sizes. The subset size is capped at
    ``min(n, m)``. Subsets are drawn reproducibly: a CPU ``torch.Generator`` seeded with ``seed`` draws,
    for each subset in turn, ``randperm(n)[:size]`` of ``a`` and then ``randperm(m)[:size]`` of ``b``.
    """
    _check_pair(a, b)
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"need subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    a, b = a.double(), b.double()
    size = min(subset_size, len(a), len(b))
    g = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        ia = torch.randperm(len(a), generator=g)[:size].to(a.device)
        ib = torch.randperm(len(b), generator=g)[:size].to(b.device)
        scores.append(_mmd2_unbiased(a[ia], b[ib]))
    scores = torch.stack(scores)  # (subsets,)
    return scores.mean().item(), scores.std(correction=0).item()


def _device(module: nn.Module) -> torch.device:
    return next((t.device for t in (*module.parameters(), *module.buffers())), torch.device("cpu"))


def _batches(images: Images, batch_size: int, device: torch.device) -> Iterable[Tensor]:
    """Batches of ``images`` on ``device``, mapped from [-1, 1] to the extractor's [0, 1]."""
    for batch in images.split(batch_size) if isinstance(images, Tensor) else images:
        yield (batch.to(device) + 1) / 2


@torch.no_grad()
def image_features(extractor: nn.Module, images: Images, batch_size: int = 50) -> Tensor:
    """``(N, D)`` features of ``images`` (a tensor ``(N, 3, H, W)`` in [-1, 1], or an iterable of such
    batches), fed to ``extractor`` in batches on its device; compute real-set features once and reuse them."""
    return torch.cat([extractor(batch) for batch in _batches(images, batch_size, _device(extractor))])


@torch.no_grad()
def fid(real_images: Images, fake_images: Images, extractor: nn.Module, batch_size: int = 50) -> float:
    """FID of two image sets in [-1, 1] (tensors ``(N, 3, H, W)`` or iterables of batches) through
    torchmetrics' ``FrechetInceptionDistance`` with ``extractor`` as its feature network.

    It streams: only the feature sums and ``(D, D)`` outer-product sums are kept, never the features.
    Equals :func:`fid_from_features` of the two feature sets (to float32 round-off).
    """
    # Imported on use: torchmetrics adds ~0.5 s to `import dfm.metrics`, which toy tasks import.
    from torchmetrics.image.fid import FrechetInceptionDistance

    device = _device(extractor)
    metric = FrechetInceptionDistance(feature=extractor).to(device)
    for images, real in ((real_images, True), (fake_images, False)):
        for batch in _batches(images, batch_size, device):
            metric.update(batch, real=real)
    return metric.compute().item()


@torch.no_grad()
def kid(
    real_images: Images,
    fake_images: Images,
    extractor: nn.Module,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    batch_size: int = 50,
) -> tuple[float, float]:
    """:func:`kid_from_features` of the :func:`image_features` of two image sets in [-1, 1].

    Not torchmetrics' ``KernelInceptionDistance``: that draws its subsets from the global RNG (so a
    result depends on everything that ran before) and refuses sets smaller than ``subset_size``; on the
    same subsets the two agree.
    """
    real = image_features(extractor, real_images, batch_size)
    fake = image_features(extractor, fake_images, batch_size)
    return kid_from_features(real, fake, subsets, subset_size, seed)
