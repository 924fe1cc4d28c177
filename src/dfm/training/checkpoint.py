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
process leaves at most a hidden directory, which is ignored and removed by the next save. A failed write
(a full disk) raises a ``CheckpointError`` naming the directory and leaves the earlier checkpoints as they
were. Weights are checked on loading: non-finite values, or a ``state.pt`` whose step is not its folder's,
are a ``CheckpointError``; loading a run directory falls back to the newest checkpoint that loads.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

log = logging.getLogger(__name__)

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


def _new_dir(parent: Path, prefix: str) -> Path:
    """A new, uniquely named directory in ``parent``, with the permissions ``mkdir`` gives (the umask
    applies; ``tempfile.mkdtemp`` would make it, and so every checkpoint renamed from it, 0700)."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _remove(path: Path) -> None:
    """Delete a checkpoint directory by first renaming it out of the ``step-*`` namespace, so a crash
    halfway through the deletion cannot leave a partial directory that looks like a checkpoint."""
    trash = _new_dir(path.parent, f".trash-{path.name}-")
    os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """The ``step-*`` checkpoint directories in ``root``, oldest first, with their steps."""
    if not root.is_dir():
        return []
    found = ((_STEP_DIR.fullmatch(p.name), p) for p in root.iterdir() if p.is_dir())
    return sorted((int(m.group(1)), p) for m, p in found if m)


def nonfinite_tensors(state: dict[str, Tensor]) -> list[str]:
    """The names of the floating-point tensors in ``state`` that hold a NaN or an infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _write_error(root: Path, name: str, error: Exception) -> CheckpointError:
    """What a failed checkpoint write tells the user: where, why, and how much space is left."""
    try:
        free = f"{shutil.disk_usage(root).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    full = " (disk full)" if isinstance(error, OSError) and error.errno == errno.ENOSPC else ""
    return CheckpointError(
        f"could not write checkpoint {name} in {root}{full}: {type(error).__name__}: {error} ({free}); "
        "the earlier checkpoints there are intact"
    )


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
    try:
        tmp = _new_dir(root, f".tmp-{final.name}-")
    except OSError as e:
        raise _write_error(root, final.name, e) from e
    try:
        save_file(_cpu_copy(model_state), tmp / "model.safetensors")
        save_file(_cpu_copy(ema_state), tmp / "ema.safetensors")
        meta = {"format_version": FORMAT_VERSION, "step": step, "run_config": run_config or {}}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        torch.save(train_state, tmp / "state.pt")
        mode = stat.S_IMODE((tmp / "config.json").stat().st_mode)  # what the umask gives a new file
        for name in FILES:
            os.chmod(tmp / name, mode)  # safetensors writes its files 0600
            _fsync(tmp / name)
        _fsync(tmp)
        if final.exists():  # re-saving a step (e.g. interrupted right after resuming)
            _remove(final)
        os.replace(tmp, final)
    except (OSError, RuntimeError, SafetensorError) as e:  # how the three writers report a full disk
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(root, final.name, e) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(root)

    pointer = root / f".tmp-latest-{secrets.token_hex(6)}"
    try:
        with open(pointer, "x") as f:  # created like any file (mkstemp would make it 0600)
            f.write(final.name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer, root / "latest")
    except OSError as e:  # the checkpoint is saved; the pointer is only for people (see latest_checkpoint)
        pointer.unlink(missing_ok=True)
        log.warning("%s: could not update the pointer file (%s)", root / "latest", e)
    for _, old in step_dirs(root)[:-keep]:
        if old != final:
            _remove(old)
    _fsync(root)
    return final


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint directory of a run, or None if it has none.

    The highest ``step-*`` directory wins rather than the ``latest`` file: directories only appear by an
    atomic rename, so it is always complete, even if the process died before updating the pointer.
    """
    dirs = step_dirs(Path(out_dir) / "checkpoints")
    return dirs[-1][1] if dirs else None


def _read(path: Path, what: str, reader):
    try:
        return reader(path)
    except Exception as e:  # noqa: BLE001 - every failure mode of the readers means "unreadable"
        raise CheckpointError(f"{path}: corrupt or truncated {what} ({type(e).__name__}: {e})") from e


def _is_checkpoint_dir(path: Path) -> bool:
    return (path / "config.json").exists() or _STEP_DIR.fullmatch(path.name) is not None


def load_checkpoint(path: str | os.PathLike, *, train_state: bool = True) -> Checkpoint:
    """Load a checkpoint directory, or the newest loadable checkpoint of a run directory, onto the CPU.

    ``path`` may also be a file inside a checkpoint. A run whose newest checkpoint is damaged (a file
    missing, truncated or corrupt, non-finite weights, steps that disagree) falls back to the one before
    it, with a warning; if none loads, the error lists why for each. ``train_state=False`` reads only
    what sampling needs (``config.json`` and ``ema.safetensors``), so it also loads an exported
    checkpoint (``export_checkpoint``).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if path.is_file():
        path = path.parent
    if _is_checkpoint_dir(path):
        return _load(path, train_state)
    candidates = [p for _, p in reversed(step_dirs(path / "checkpoints"))]
    if not candidates:
        raise CheckpointError(f"{path}: no checkpoints found (expected {path / 'checkpoints' / 'step-*'})")
    errors = []
    for ckpt in candidates:
        try:
            return _load(ckpt, train_state)
        except CheckpointError as e:
            errors.append(str(e))
            if ckpt != candidates[-1]:
                log.warning("%s; falling back to the checkpoint before it", e)
    raise CheckpointError(f"{path}: no checkpoint loads: " + "; ".join(errors))


def _load(ckpt: Path, train_state: bool) -> Checkpoint:
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
    step = meta["step"]
    folder = _STEP_DIR.fullmatch(ckpt.name)
    if folder and int(folder.group(1)) != step:
        raise CheckpointError(f"{ckpt / 'config.json'}: records step {step}, but its folder is {ckpt.name}")
    state = None
    if train_state:
        state = _read(ckpt / "state.pt", "training state", lambda p: torch.load(p, map_location="cpu", weights_only=True))
        if not isinstance(state, dict) or state.get("step") != step:
            found = state.get("step") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"{ckpt / 'state.pt'}: holds step {found}, but {ckpt / 'config.json'} step {step}")
    weights = {"ema.safetensors": _read(ckpt / "ema.safetensors", "safetensors file", load_file)}
    if train_state:
        weights["model.safetensors"] = _read(ckpt / "model.safetensors", "safetensors file", load_file)
    for name, tensors in weights.items():
        bad = nonfinite_tensors(tensors)
        if bad:
            raise CheckpointError(f"{ckpt / name}: non-finite values in {len(bad)} of {len(tensors)} tensors ({_listing(bad)})")
    return Checkpoint(
        path=ckpt, step=step, config=meta["run_config"], model_state=weights.get("model.safetensors"),
        ema_state=weights["ema.safetensors"], train_state=state,
    )


def _is_export(path: Path) -> bool:
    """A directory that an earlier export wrote: sampling files only (a killed export may have left one)."""
    names = {p.name for p in path.iterdir() if not p.name.startswith(".tmp-")}
    return bool(names) and names <= set(SAMPLING_FILES)


def export_checkpoint(path: str | os.PathLike, out: str | os.PathLike, *, force: bool = False) -> Path:
    """Copy what sampling needs (EMA weights + config) from a checkpoint or run into ``out``: a small
    checkpoint to ship, which ``load_checkpoint(out, train_state=False)`` reads.

    Deletes nothing it did not write: ``out`` must be new or an empty directory, or, with ``force=True``,
    an earlier export, which is replaced. Anything else (a run, a checkpoint, a folder with other files,
    the source itself) is refused with a CheckpointError. Each file is written to a temporary name and
    renamed; ``config.json`` comes last, so an interrupted export is incomplete, never mismatched.
    """
    ckpt = load_checkpoint(path, train_state=False)  # validate before writing anything
    src, target = ckpt.path.resolve(), Path(out).resolve()
    if target == src or target.is_relative_to(src) or src.is_relative_to(target):
        raise CheckpointError(f"{out}: overlaps the checkpoint it would copy ({ckpt.path}); choose another directory")
    if target.exists():
        if not target.is_dir():
            raise CheckpointError(f"{out}: exists and is not a directory")
        if (target / "checkpoints").is_dir() or (target / "state.pt").exists():
            raise CheckpointError(f"{out}: is a training run or checkpoint; nothing written, choose another directory")
        if _is_export(target):
            if not force:
                raise CheckpointError(f"{out}: holds an earlier export; pass --force (force=True) to replace it")
        elif any(not p.name.startswith(".tmp-") for p in target.iterdir()):
            raise CheckpointError(f"{out}: is not empty and not an earlier export; nothing written, choose another directory")
    try:
        target.mkdir(parents=True, exist_ok=True)
        (target / "config.json").unlink(missing_ok=True)  # from here on the old export is incomplete, not mixed
        for name in SAMPLING_FILES:
            tmp = target / f".tmp-{name}-{secrets.token_hex(6)}"
            try:
                shutil.copyfile(ckpt.path / name, tmp)
                _fsync(tmp)
                os.replace(tmp, target / name)
            finally:
                tmp.unlink(missing_ok=True)
        _fsync(target)
    except OSError as e:
        raise CheckpointError(f"could not write the export {out}: {type(e).__name__}: {e}") from e
    return Path(out)


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
