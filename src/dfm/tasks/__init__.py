"""The applications, by name. Each is a ``Task`` subclass in its own module."""

from __future__ import annotations

from importlib import import_module

from dfm.tasks.base import Task

TASKS = {"toy": "dfm.tasks.toy:ToyTask", "motion": "dfm.tasks.motion:MotionTask", "gan": "dfm.tasks.gan:GanTask",
         "scenes": "dfm.tasks.scenes:ScenesTask"}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {sorted(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(import_module(module), cls)
