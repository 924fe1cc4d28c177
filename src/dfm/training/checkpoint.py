"""Atomic on-disk checkpoints.

Layout of a run directory::

    out_dir/checkpoints/
        latest               # text file: name of the newest checkpoint (for people and tools)
        step-000100/
            model.safetensors  # raw weights
            ema.safetensors    # EMA weights: what sampling uses
            config.json        # {"format_version", "step", "run_config"}: enough to rebuild the model
            state.pt           # optimizer, scheduler, RNG states, data position: only needed to resume

A checkpoint is assembled in a hidden ``.tmp-*`` directory next to its final place, fsync'ed, and then
renamed into place. The rename is the commit point: every ``step-*`` directory is complete, and a killed
process leaves at most a hidden directory, which is ignored and removed by the next save.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

FORMAT_VERSION = 1
FILES = ("model.safetensors", "ema.safetensors", "config.json", "state.pt")
SAMPLING_FILES = ("ema.safetensors", "config.json")
_STEP_DIR = re.compile(r"step-(\d+)")
_HIDDEN_PREFIXES = (".tmp-", ".trash-")


class CheckpointError(Exception):
    """A checkpoint is missing, incomplete, corrupt, or does not fit the model."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    config: dict[str, Any]  # the run config saved by the trainer
    model_state: dict[str, Tensor] | None  # None when loaded with ``train_state=False``
    ema_state: dict[str, Tensor]
    train_state: dict[str, Any] | None  # None when loaded with ``train_state=False``


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk, so a rename never publishes data still in the page cache."""
    if path.is_dir() and os.name != "posix":
        return  # directories cannot be opened for fsync on Windows
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a checkpoint directory by first renaming it out of the ``step-*`` namespace, so a crash
    halfway through the deletion cannot leave a partial directory that looks like a checkpoint."""
    trash = Path(tempfile.mkdtemp(prefix=f".trash-{path.name}-", dir=path.parent))
    os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = ((_STEP_DIR.fullmatch(p.name), p) for p in root.iterdir() if p.is_dir())
    return sorted((int(m.group(1)), p) for m, p in found if m)


def _cpu_copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # A copy also unties shared tensors (tied weights), which safetensors refuses to save.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def save_checkpoint(
    out_dir: str | os.PathLike,
    step: int,
    *,
    model_state: dict[str, Tensor],
    ema_state: dict[str, Tensor],
    train_state: dict[str, Any],
    run_config: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Atomically write ``out_dir/checkpoints/step-{step:06d}``, point ``latest`` at it and keep only the
    newest ``keep`` checkpoints. Returns the checkpoint directory."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.iterdir():  # left behind by a process killed while saving or pruning
        if not stale.name.startswith(_HIDDEN_PREFIXES):
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)

    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        save_file(_cpu_copy(model_state), tmp / "model.safetensors")
        save_file(_cpu_copy(ema_state), tmp / "ema.safetensors")
        meta = {"format_version": FORMAT_VERSION, "step": step, "run_config": run_config or {}}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        torch.save(train_state, tmp / "state.pt")
        for name in FILES:
            _fsync(tmp / name)
        _fsync(tmp)
        if final.exists():  # re-saving a step (e.g. interrupted right after resuming)
            _remove(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(root)

    fd, pointer = tempfile.mkstemp(prefix=".tmp-latest-", dir=root)
    with os.fdopen(fd, "w") as f:
        f.write(final.name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer, root / "latest")
    for _, old in _step_dirs(root)[:-keep]:
        if old != final:
            _remove(old)
    _fsync(root)
    return final


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint directory of a run, or None if it has none.

    The highest ``step-*`` directory wins rather than the ``latest`` file: directories only appear by an
    atomic rename, so it is always complete, even if the process died before updating the pointer.
    """
    dirs = _step_dirs(Path(out_dir) / "checkpoints")
    return dirs[-1][1] if dirs else None


def _read(path: Path, what: str, reader):
    try:
        return reader(path)
    except Exception as e:  # noqa: BLE001 - every failure mode of the readers means "unreadable"
        raise CheckpointError(f"{path}: corrupt or truncated {what} ({type(e).__name__}: {e})") from e


def _resolve(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if path.is_file():
        path = path.parent
    if (path / "config.json").exists() or _STEP_DIR.fullmatch(path.name):
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointError(f"{path}: no checkpoints found (expected {path / 'checkpoints' / 'step-*'})")
    return found


def load_checkpoint(path: str | os.PathLike, *, train_state: bool = True) -> Checkpoint:
    """Load a checkpoint directory, or the newest checkpoint of a run directory, onto the CPU.

    ``train_state=False`` reads only what sampling needs (``config.json`` and ``ema.safetensors``), so
    it also loads an exported checkpoint (``export_checkpoint``).
    """
    ckpt = _resolve(Path(path))
    for name in FILES if train_state else SAMPLING_FILES:
        if not (ckpt / name).is_file():
            raise CheckpointError(f"{ckpt / name}: missing (incomplete checkpoint)")
    meta = _read(ckpt / "config.json", "JSON", lambda p: json.loads(p.read_text()))
    if not isinstance(meta, dict) or not {"format_version", "step", "run_config"} <= meta.keys():
        raise CheckpointError(f"{ckpt / 'config.json'}: not a dfm checkpoint config")
    if meta["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{ckpt / 'config.json'}: format version {meta['format_version']} is newer than this dfm "
            f"understands ({FORMAT_VERSION})"
        )
    return Checkpoint(
        path=ckpt,
        step=int(meta["step"]),
        config=meta["run_config"],
        model_state=_read(ckpt / "model.safetensors", "safetensors file", load_file) if train_state else None,
        ema_state=_read(ckpt / "ema.safetensors", "safetensors file", load_file),
        train_state=(
            _read(ckpt / "state.pt", "training state", lambda p: torch.load(p, map_location="cpu", weights_only=True))
            if train_state
            else None
        ),
    )


def export_checkpoint(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Copy what sampling needs (EMA weights + config) from a checkpoint or run into ``out``: a small
    checkpoint to ship, which ``load_checkpoint(out, train_state=False)`` reads. Written atomically."""
    src = _resolve(Path(path))
    load_checkpoint(src, train_state=False)  # validate before publishing anything
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    for name in SAMPLING_FILES:
        shutil.copyfile(src / name, tmp / name)
        _fsync(tmp / name)
    if out.exists():
        _remove(out)
    tmp.rename(out)
    return out


def _listing(keys: list[str], limit: int = 20) -> str:
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_weights(module: nn.Module, state: dict[str, Tensor], *, source: str = "checkpoint") -> None:
    """``module.load_state_dict(state)``, but a mismatch raises a CheckpointError that lists every missing,
    unexpected and wrongly shaped key (torch stops at the first shape error)."""
    own = module.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    shapes = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own.keys() & state.keys()
        if own[k].shape != state[k].shape
    )
    problems = [
        f"{label}: {_listing(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state)
