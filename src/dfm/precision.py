"""Mixed precision: which parts of a step run in bf16 / fp16, and which must stay in fp32.

``train.precision`` and ``sample.precision`` name one of :data:`PRECISIONS`. Under ``bf16`` or ``fp16`` the
networks' matrix products and convolutions run in that type through ``torch.autocast`` (the trainer
adds a gradient scaler under fp16); weights, optimiser state,
the noise schedule, the sampler's updates and the loss reductions stay in fp32. Code whose accuracy a
low-precision input would ruin (transmittance products along rays, softmax splatting's exponentials)
runs under :func:`full_precision`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import torch
from torch import Tensor

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

F = TypeVar("F", bound=Callable[..., Any])


def check_precision(precision: str, device: torch.device | str, where: str) -> None:
    """ValueError unless ``precision`` is known and runs on ``device`` (fp16 autocast needs a GPU: CPUs
    have no fast fp16 matmul, and fp16's narrow range needs the gradient scaler CUDA training uses)."""
    if precision not in PRECISIONS:
        raise ValueError(f"{where} must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise ValueError(f"{where}=fp16 needs a CUDA device (got {torch.device(device).type}); use bf16 on a CPU")


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager:
    """A context in which the networks run at ``precision`` on ``device`` (fp32: nothing changes)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def full_precision(fn: F) -> F:
    """Run ``fn`` in fp32 whatever the surrounding autocast: autocast off, half-precision tensor arguments
    (a network's outputs under autocast) cast to float32; float32 and float64 ones pass as they are."""

    def lift(x: Any) -> Any:
        return x.float() if isinstance(x, Tensor) and x.dtype in (torch.bfloat16, torch.float16) else x

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        device = next((a.device.type for a in [*args, *kwargs.values()] if isinstance(a, Tensor)), "cpu")
        with torch.autocast(device, enabled=False):
            return fn(*map(lift, args), **{k: lift(v) for k, v in kwargs.items()})

    return wrapped  # type: ignore[return-value]


def to_fp32(obj: Any) -> Any:
    """``obj`` with its half-precision tensors cast to float32, through tuples (named too), lists, dicts,
    dataclasses and ``functools.partial`` (a field bound to its conditioning): what sampling returns is
    then usable outside autocast whatever precision produced it."""
    if isinstance(obj, Tensor):
        return obj.float() if obj.dtype in (torch.bfloat16, torch.float16) else obj
    if isinstance(obj, functools.partial):
        return functools.partial(obj.func, *map(to_fp32, obj.args), **{k: to_fp32(v) for k, v in obj.keywords.items()})
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*map(to_fp32, obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map(to_fp32, obj))
    if isinstance(obj, dict):
        return {k: to_fp32(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: to_fp32(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init})
    return obj
