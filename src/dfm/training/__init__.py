"""Training: one Trainer for every task, with atomic checkpoints."""

from dfm.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    export_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from dfm.training.lock import RunInUseError
from dfm.training.trainer import TrainConfig, Trainer, TrainingError, TrainingInterrupted

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "RunInUseError",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "export_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
]
