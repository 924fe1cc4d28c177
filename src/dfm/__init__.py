"""dfm: Diffusion with Forward Models.

Learn to *sample* signals that are only ever observed through a known, differentiable forward
model: ``DFM(denoiser, forward_model)`` is trained on tuples of observations and samples signals
consistent with a context observation.
"""

from dfm.configurable import Configurable
from dfm.diffusion import NoiseSchedule
from dfm.forward_models import LinearProjection
from dfm.model import DFM, Sample, SamplingError
from dfm.networks.embeddings import TimestepEmbedding
from dfm.networks.mlp import ResMLP
from dfm.samplers import SAMPLERS, ddim, dpmpp_2m
from dfm.training import Trainer, TrainConfig, load_checkpoint

__all__ = [
    "DFM", "Configurable", "Sample", "SamplingError", "NoiseSchedule", "LinearProjection", "ResMLP", "TimestepEmbedding",
    "SAMPLERS", "ddim", "dpmpp_2m", "Trainer", "TrainConfig", "load_checkpoint",
]
__version__ = "0.1.0"
