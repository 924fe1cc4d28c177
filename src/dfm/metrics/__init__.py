"""Evaluation metrics, one module per kind of question.

* :mod:`~dfm.metrics.distances` -- distributions of low-dimensional samples: :func:`energy_distance`.
* :mod:`~dfm.metrics.images` -- a prediction against its ground truth, per image, in [-1, 1]:
  :func:`psnr`, :func:`ssim`, :func:`lpips_distance`.
* :mod:`~dfm.metrics.inception` -- :class:`InceptionFeatures`, the FID InceptionV3 (pytorch-fid's
  network and weight file, loaded from the user's copy), and its input conventions ([0, 1] images).
* :mod:`~dfm.metrics.fid` -- image *sets*: :func:`fid`, :func:`kid` and :func:`image_features` from
  images in [-1, 1] and a feature extractor, :func:`fid_from_features` / :func:`kid_from_features`
  from ``(N, D)`` features of any network.
* :mod:`~dfm.metrics.diversity` -- the K samples of one context: :func:`pairwise_diversity`,
  :func:`best_of_k`.

Nothing here downloads weights; a metric whose network has no weights raises
:class:`MetricWeightsError` rather than scoring with a random network.
"""

from dfm.metrics.distances import energy_distance
from dfm.metrics.diversity import best_of_k, pairwise_diversity
from dfm.metrics.fid import fid, fid_from_features, image_features, kid, kid_from_features
from dfm.metrics.images import lpips_distance, psnr, ssim
from dfm.metrics.inception import InceptionFeatures, MetricWeightsError

__all__ = [
    "InceptionFeatures",
    "MetricWeightsError",
    "best_of_k",
    "energy_distance",
    "fid",
    "fid_from_features",
    "image_features",
    "kid",
    "kid_from_features",
    "lpips_distance",
    "pairwise_diversity",
    "psnr",
    "ssim",
]
