"""From a config to a trained model and back: the glue shared by the CLI, benchmarks and examples."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch

from dfm.config import build_config, read_yaml, to_dict
from dfm.model import DFM
from dfm.tasks import Task, task_class
from dfm.training import Trainer, load_checkpoint, load_weights


def make_task(raw: dict, overrides: Sequence[str] = (), origin: str = "config") -> Task:
    """Validate a raw run config (and ``key=value`` overrides) against its task's schema."""
    name = raw.get("task")
    if name is None:
        raise ValueError(f"{origin} has no 'task' key")
    cls = task_class(name)
    return cls(build_config(cls.Config, raw, overrides, origin))


def task_from_config(source: str | Path, overrides: Sequence[str] = ()) -> Task:
    raw, origin = read_yaml(source)
    return make_task(raw, overrides, origin)


def train(task: Task, resume: bool | str | Path = False, progress: bool = True) -> tuple[Trainer, dict]:
    """Train the task's model with the one trainer (``resume`` as in ``Trainer.fit``); returns the trainer
    (for its EMA model) and stats."""
    cfg = task.cfg
    train_cfg = dataclasses.replace(cfg.train, progress=progress and cfg.train.progress)
    with torch.random.fork_rng():  # initial weights from the config's seed, without touching the caller's RNG
        torch.manual_seed(cfg.train.seed)
        model = task.build_model()
    trainer = Trainer(
        model, task.train_dataset(), train_cfg, out_dir=cfg.out_dir,
        run_config=to_dict(cfg), preview=task.preview,
    )
    return trainer, trainer.fit(resume=resume)


def load_trained(checkpoint: str | Path, overrides: Sequence[str] = ()) -> tuple[Task, DFM]:
    """Rebuild a task and its model from a checkpoint (run dir or checkpoint dir), with EMA weights."""
    ckpt = load_checkpoint(checkpoint, train_state=False)  # sampling needs no optimiser state
    task = make_task(ckpt.config, overrides, origin=f"config of checkpoint {str(checkpoint)!r}")
    model = task.build_model(training=False)  # no loss terms (and none of their weight files)
    load_weights(model, ckpt.ema_state, source=str(checkpoint))
    return task, model.eval()
