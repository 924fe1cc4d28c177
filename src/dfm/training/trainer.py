"""One training loop for every task.

The trainer knows nothing about a model beyond its contract: ``model(batch, generator=g)`` returns a dict
of scalar losses whose ``"loss"`` entry is minimised (the rest are logged). Calling ``forward`` rather than
some other method is what lets DistributedDataParallel synchronise gradients.

Reproducibility and exact resumption come from making all training randomness a pure function of
``(seed, rank, step)``: the loss generator is reseeded every step and the data order is a per-epoch
permutation derived from the seed. A checkpoint therefore only has to record the step, plus the
optimizer/scheduler/EMA state, to continue bit-for-bit where it stopped.

The same code runs on a CPU, a GPU, or N processes launched by ``torchrun`` / ``accelerate launch``.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list, gather_object, send_to_device
from ema_pytorch import EMA
from PIL import Image
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from dfm.config import check_values
from dfm.precision import PRECISIONS, autocast, check_precision
from dfm.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    nonfinite_tensors,
    save_checkpoint,
    step_dirs,
)
from dfm.training.lock import RunInUseError, run_lock

log = logging.getLogger(__name__)

Preview = Callable[[nn.Module, int], Mapping[str, Tensor]]


OPTIMIZERS = ("adamw", "adafactor")


def make_optimizer(params, config: "TrainConfig", device_type: str) -> torch.optim.Optimizer:
    """The optimiser of ``config``. AdamW keeps two float32 states per weight (8 bytes per parameter,
    5.5 GB for a DiT-XL); Adafactor (Shazeer & Stern 2018) keeps row and column statistics instead,
    for models whose optimiser state would not fit (its ``lr`` is relative to each weight's RMS)."""
    if config.optimizer == "adafactor":
        return torch.optim.Adafactor(params, lr=config.lr, weight_decay=config.weight_decay)
    # fused: one kernel for all parameters; PyTorch's per-tensor default is ~100x slower on CPU
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=device_type in ("cpu", "cuda"))


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def fix_mmap_threshold(kib: int) -> bool:
    """Have glibc serve every allocation of ``kib`` KiB or more by ``mmap``, so that a freed tensor's
    memory goes back to the system at once; False for ``kib <= 0`` (glibc's adaptive threshold stays)
    or where there is no glibc (nothing changes).

    Process-wide. glibc raises its threshold (from 128 KiB up to 32 MB) each time such a block is
    freed, after which blocks below it come from the heap, which keeps freed memory and fragments.
    Activations of many sizes are freed every step, so the resident peak grows by what the heap
    holds: in the paper-scale scenes step (with Adafactor), 8.75 GB with glibc's adaptive threshold,
    6.2 GB with it fixed at 128 KiB, its initial value (``benchmarks/step.py``). Every such block
    is then mapped and faulted in afresh, which costs time where a step allocates much for little
    compute: the CPU motion config trains at 1.3 instead of 1.9 steps/s, so it is off by default."""
    if kib <= 0:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, kib * 1024))


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. a non-finite loss); no checkpoint was written for the failing step."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped training after a checkpoint of the current step was saved."""


@dataclass
class TrainConfig:
    steps: int = 10_000
    batch_size: int = 256  # per process
    lr: float = 1e-4
    warmup_steps: int = 500  # linear warm-up, then constant (or cosine decay to 0)
    cosine_decay: bool = False
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # adamw | adafactor (factored second moments, no first: ~no optimiser state)
    grad_clip: float = 1.0  # max global grad norm; <= 0 disables clipping (the norm is still logged)
    mmap_threshold_kib: int = 0  # > 0: glibc mmaps allocations this large, so freed ones are not kept (see fix_mmap_threshold)
    ema_decay: float = 0.999  # upper bound of ema_pytorch's warm-up schedule
    ema_start: int = 0  # the EMA copies the weights until this step, then averages
    ema_power: float = 2 / 3  # ema_pytorch warm-up: decay = min(ema_decay, 1 - (1 + t) ** -ema_power)
    checkpoint_every: int = 1000  # <= 0: only at the end (and on interruption)
    keep_checkpoints: int = 2
    log_every: int = 50
    preview_every: int = 1000  # <= 0: only at the end
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "mps"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (CUDA only): autocast of the forward pass (dfm.precision)
    progress: bool = True
    max_minutes: float | None = None  # wall-clock budget: stop with a checkpoint after it (resume continues)

    def __post_init__(self) -> None:
        check_values(
            self, "train", positive=["batch_size", "lr", "keep_checkpoints", "ema_power", "max_minutes"],
            non_negative=["steps", "warmup_steps", "weight_decay", "ema_start", "num_workers"], decay=["ema_decay"],
        )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"train.device must be 'auto', 'cpu', 'cuda' or 'mps', got {self.device!r}")


def _derive_seed(*parts: Any) -> int:
    """A 63-bit seed for each purpose/rank/step, so independent streams never overlap or correlate."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    """Scale of the base lr for 0-based update ``step``: the first update already moves (1/warmup)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if not cfg.cosine_decay:
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class _ShardedBatches:
    """Endless batch sampler: a fresh permutation each epoch, split between processes.

    The order depends only on (seed, epoch, rank), so resuming needs just the number of batches already
    taken (``start``). Each process gets the same number of full batches of disjoint indices.
    """

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int, start: int = 0):
        self.per_epoch = n // world // batch_size
        if self.per_epoch == 0:
            raise ValueError(f"dataset of {n} items cannot fill one batch of {batch_size} on each of {world} processes")
        self.n, self.batch_size, self.rank, self.world, self.seed, self.start = n, batch_size, rank, world, seed, start

    def __iter__(self) -> Iterator[list[int]]:
        epoch, skip = divmod(self.start, self.per_epoch)
        while True:
            order = torch.Generator().manual_seed(_derive_seed(self.seed, "data", epoch))
            perm = torch.randperm(self.n, generator=order)
            mine = perm[self.rank :: self.world]
            for b in range(skip, self.per_epoch):
                yield mine[b * self.batch_size : (b + 1) * self.batch_size].tolist()
            epoch, skip = epoch + 1, 0


@contextmanager
def _stop_requests() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into a flag checked between steps, so training stops with a checkpoint rather
    than dying mid-update. Another Ctrl-C a second later aborts at once (an immediate repeat is ignored:
    under torchrun the workers get the terminal's SIGINT and the launcher's forwarded copy)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # signals can only be caught there
        yield received
        return
    first = [math.inf]

    def handler(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and time.monotonic() - first[0] > 1.0:
            raise KeyboardInterrupt
        first[0] = min(first[0], time.monotonic())
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _loss_keys(losses: Any) -> list[str]:
    if not isinstance(losses, Mapping) or "loss" not in losses:
        raise TypeError(
            f"model(batch, generator=g) must return a dict of losses with a 'loss' key, got {type(losses).__name__}"
        )
    for k, v in losses.items():
        if not (isinstance(v, Tensor) and v.numel() == 1):
            shape = tuple(v.shape) if isinstance(v, Tensor) else ""
            raise TypeError(f"loss term {k!r} must be a scalar tensor, got {type(v).__name__} {shape}")
    return ["loss", *(k for k in losses if k != "loss")]


def _to_image(img: Tensor) -> np.ndarray:
    """(3,H,W), (H,W,3), (1,H,W), (H,W,1) or (H,W) in [0,1] -> uint8 (H,W,C)."""
    img = img.detach().float().cpu()
    if img.ndim == 2:
        img = img[..., None]
    elif img.ndim == 3 and img.shape[0] in (1, 3):
        img = img.permute(1, 2, 0)
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ValueError(f"preview images must be (3,H,W), (H,W,3) or (H,W), got {tuple(img.shape)}")
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _rng_state(device: torch.device) -> dict[str, Tensor | None]:
    """Global RNG state of this process: only models that bypass the supplied generator (nn.Dropout) use it."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _model_config(model: nn.Module) -> dict[str, Any]:
    """What ``DFM.from_pretrained`` rebuilds a model of Configurable parts from (``dfm.saving``); nothing for
    other models."""
    from dfm.saving import KEY, model_spec

    try:
        return {KEY: model_spec(model)}
    except (TypeError, AttributeError):  # not a DFM, or parts that do not record their arguments
        return {}


@dataclass
class _Progress:
    """What the loop carries between steps: the loss names, the last saved step, the current log window."""

    saved_step: int | None
    window_start: float
    keys: list[str] | None = None
    window: dict[str, float] = field(default_factory=dict)
    window_steps: int = 0


class Trainer:
    """AdamW + warm-up, gradient clipping, EMA, TensorBoard, previews and atomic checkpoints.

    ``run_config`` (JSON-able) is stored in every checkpoint so that the model can be rebuilt from it.
    ``preview(ema_model, step)`` returns named images in [0,1]; it runs on the main process under
    ``torch.no_grad()`` (use ``torch.enable_grad()`` inside if it needs gradients).
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        config: TrainConfig,
        out_dir: str | Path,
        run_config: dict[str, Any] | None = None,
        preview: Preview | None = None,
    ):
        self.config, self.dataset, self.preview = config, dataset, preview
        self.out_dir = Path(out_dir)
        self.run_config = dict(run_config or {}) or _model_config(model)
        json.dumps(self.run_config)  # fail now rather than at the first checkpoint

        # Without cpu=True, accelerate ignores torchrun's environment on a machine with no GPU and runs N
        # independent single-process trainings that overwrite each other's checkpoints.
        has_accelerator = torch.cuda.is_available() or torch.backends.mps.is_available()
        cpu = config.device == "cpu" or (config.device == "auto" and not has_accelerator)
        check_precision(config.precision, "cpu" if cpu else "cuda" if torch.cuda.is_available() else "mps", "train.precision")
        self.accelerator = Accelerator(cpu=cpu)
        device = self.accelerator.device
        if config.device not in ("auto", "cpu") and device.type != config.device:
            raise RuntimeError(f"device {config.device!r} requested, but the available device is {device}")
        self.model = model.to(device)  # the raw module: checkpoints and EMA use it, training the wrapped one
        optimizer = make_optimizer(model.parameters(), config, device.type)
        self.scheduler = LambdaLR(optimizer, lambda step: _lr_factor(step, config))
        self._train_model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # Mixed precision is autocast around the forward pass (weights, optimiser state and the losses stay
        # fp32) and, under fp16, a gradient scaler. Not accelerate's ``mixed_precision``: that is one
        # setting per process (a second Accelerator with another value raises), and a process may train
        # several models (tests, sweeps, a notebook).
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
        self._ema = EMA(  # built after prepare so that every rank starts from rank 0's broadcast weights
            self.model,
            beta=config.ema_decay,
            update_after_step=config.ema_start,
            update_every=1,
            power=config.ema_power,
            include_online_model=False,
        )
        self._ema.ema_model.eval()

    @property
    def ema_model(self) -> nn.Module:
        """The EMA copy of the model, for sampling."""
        return self._ema.ema_model

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # -- checkpoints ----------------------------------------------------------------------------------

    def _save(self, step: int) -> Path | None:
        """Collective: every rank contributes its RNG state; only the main process writes.

        Weights are checked first, on every rank (they are the same on all), so that no checkpoint holds a
        NaN or an infinity: an update can make them non-finite with a finite loss and gradient (a huge
        learning rate), which the per-step guard only sees a step later."""
        bad = nonfinite_tensors(self.model.state_dict()) + [f"ema:{k}" for k in nonfinite_tensors(self.ema_model.state_dict())]
        if bad:
            last = latest_checkpoint(self.out_dir)
            raise TrainingError(
                f"non-finite weights after step {step} in {len(bad)} tensors ({', '.join(bad[:5])}"
                f"{', ...' if len(bad) > 5 else ''}); checkpoint not written (last checkpoint: "
                f"{last.name if last else 'none'}). Lower train.lr and resume from the last checkpoint."
            )
        rng = gather_object([_rng_state(self.accelerator.device)])
        path = None
        if self.is_main:
            train_state = {
                "step": step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema": {"step": int(self._ema.step), "initted": bool(self._ema.initted)},
                "data": {"batches_seen": step, "batch_size": self.config.batch_size, "processes": len(rng)},
                "rng": rng,
                "train_config": asdict(self.config),
            }
            path = save_checkpoint(
                self.out_dir,
                step,
                model_state=self.model.state_dict(),
                ema_state=self.ema_model.state_dict(),
                train_state=train_state,
                run_config=self.run_config,
                keep=self.config.keep_checkpoints,
            )
        self._wait_for_everyone()
        return path

    def _wait_for_everyone(self) -> None:
        """accelerate's barrier, except on CPU processes: accelerate passes the local rank as a CUDA
        device to gloo's barrier, which fails (invalid device ordinal) on a machine with fewer GPUs than
        processes, even though training is on the CPU."""
        if self.accelerator.distributed_type == DistributedType.MULTI_CPU:
            torch.distributed.barrier()
        else:
            self.accelerator.wait_for_everyone()

    def _start(self, resume: bool | str | os.PathLike) -> int:
        """The step training starts from: 0 for a new run, else that of the checkpoint it resumes."""
        found = latest_checkpoint(self.out_dir)
        if resume is False:
            if found is not None:
                raise FileExistsError(
                    f"{self.out_dir} already has checkpoints ({found.name}); pass resume=True or use a new out_dir"
                )
            return 0
        if resume is True and found is None:
            if self.is_main:
                log.info("no checkpoint in %s; starting from scratch", self.out_dir)
            return 0
        ours = self.out_dir / "checkpoints"
        source = self.out_dir if resume is True else Path(resume)
        in_this_run = source.resolve() == self.out_dir.resolve() or source.resolve().is_relative_to(ours.resolve())
        if found is not None and not in_this_run:
            raise FileExistsError(
                f"{self.out_dir} already has checkpoints ({found.name}); to start from another run's checkpoint "
                f"({source}), train into a new out_dir"
            )
        ckpt = load_checkpoint(source)  # a damaged newest checkpoint falls back to the one before it
        if self.is_main and ckpt.path.parent.resolve() == ours.resolve():
            reason = "damaged" if resume is True else "abandoned"
            for step, path in step_dirs(ours):
                if step > ckpt.step:  # out of the step-* namespace, so the next save cannot prune the good one
                    path.rename(path.with_name(f"{path.name}.{reason}"))
                    log.warning("resuming from %s: set %s aside as %s.%s", ckpt.path.name, path.name, path.name, reason)
        self._wait_for_everyone()
        return self._restore(ckpt)

    def _restore(self, ckpt: Checkpoint) -> int:
        """Load a checkpoint's weights and training state. Settings changed since it was written take
        effect (learning rate, weight decay, schedule, steps, cadences); a different optimiser, whose
        state cannot carry over, is refused."""
        cfg, state = self.config, ckpt.train_state
        before = state.get("train_config", {})
        if before.get("optimizer", cfg.optimizer) != cfg.optimizer:
            raise CheckpointError(
                f"{ckpt.path}: trained with train.optimizer={before['optimizer']}, whose state cannot become "
                f"{cfg.optimizer}'s; resume with train.optimizer={before['optimizer']} or start a new out_dir"
            )
        load_weights(self.model, ckpt.model_state, source=str(ckpt.path / "model.safetensors"))
        load_weights(self.ema_model, ckpt.ema_state, source=str(ckpt.path / "ema.safetensors"))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):  # fp16 runs; a run that changes precision starts a fresh scale
                self.scaler.load_state_dict(state["scaler"])
            self._ema.step.fill_(state["ema"]["step"])
            self._ema.initted.fill_(state["ema"]["initted"])
            rng, step = state["rng"], state["step"]
            if state["data"]["batch_size"] != cfg.batch_size:
                log.warning("batch size changed since the checkpoint; the data order will differ")
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{ckpt.path / 'state.pt'}: unusable training state ({type(e).__name__}: {e})") from e
        # The optimiser's and scheduler's states hold the old base lr and weight decay: the config's win.
        lr = cfg.lr * _lr_factor(step, cfg)  # what LambdaLR computes after `step` updates
        for group in self.optimizer.param_groups:
            group.update(lr=lr, initial_lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler.base_lrs = [cfg.lr] * len(self.optimizer.param_groups)
        self.scheduler._last_lr = [lr] * len(self.optimizer.param_groups)
        changed = {k: (before[k], v) for k, v in asdict(cfg).items() if k in before and before[k] != v and k != "progress"}
        if changed and self.is_main:
            log.info("resuming with changed settings: %s", ", ".join(f"train.{k} {a} -> {b}" for k, (a, b) in changed.items()))
        if len(rng) == self.accelerator.num_processes:
            mine = rng[self.accelerator.process_index]
            torch.set_rng_state(mine["torch"])
            if mine["cuda"] is not None and self.accelerator.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"], self.accelerator.device)
        else:
            log.warning(
                "checkpoint written by %d processes, now %d: global RNG states not restored",
                len(rng),
                self.accelerator.num_processes,
            )
        if self.is_main:
            log.info("resuming from %s (step %d)", ckpt.path, step)
        return step

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the run directory's lock (``dfm.training.lock``): the writing process takes it, and every
        process fails together, with the holder named, if another training has it."""
        with ExitStack() as stack:
            error = None
            if self.is_main:
                try:
                    stack.enter_context(run_lock(self.out_dir))
                except RunInUseError as e:
                    error = str(e)
            if self.accelerator.num_processes > 1:
                error = broadcast_object_list([error])[0]
            if error is not None:
                raise RunInUseError(error)
            yield

    # -- training -------------------------------------------------------------------------------------

    def _write_previews(self, writer: SummaryWriter, step: int) -> None:
        with torch.no_grad():
            images = self.preview(self.ema_model, step)
        folder = self.out_dir / "previews"
        folder.mkdir(parents=True, exist_ok=True)
        for name, img in images.items():
            arr = _to_image(img)
            writer.add_image(f"preview/{name}", arr, step, dataformats="HWC")
            safe = name.replace("/", "_")
            Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(folder / f"{safe}-step-{step:06d}.png")

    def _reduce(self, losses: Mapping[str, Tensor], keys: list[str], grad_norm: Tensor, *flags: bool) -> list[float]:
        """Loss terms and grad norm averaged over processes, then each flag (> 0 if it is set on any rank).

        The one small all-reduce and host sync per step make every rank see the same values, so all of
        them stop together on a non-finite value, a signal or the time limit instead of deadlocking in the
        next collective.
        """
        device = self.accelerator.device
        terms = [losses[k].detach().float().reshape(1) for k in keys]
        terms += [grad_norm.detach().float().reshape(1).to(device), torch.tensor([float(f) for f in flags], device=device)]
        return self.accelerator.reduce(torch.cat(terms), reduction="mean").tolist()

    def _backward(
        self, batch: Any, generator: torch.Generator, step: int, run: _Progress, stop: list[int], time_up: bool,
    ) -> tuple[dict[str, float], bool, bool]:
        """Losses, gradients and their clipped norm for one batch: the named values (averaged over processes)
        and whether any process got a signal (``stop``, read after the backward pass, so that a signal
        during it drops this step) or ran out of time. Raises TrainingError on a non-finite value."""
        cfg = self.config
        with autocast(cfg.precision, self.accelerator.device):
            losses = self._train_model(batch, generator=generator)
        run.keys = run.keys or _loss_keys(losses)
        self.accelerator.backward(self.scaler.scale(losses["loss"]))
        self.scaler.unscale_(self.optimizer)
        grad_norm = self.accelerator.clip_grad_norm_(self._train_model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        *values, signalled, out_of_time = self._reduce(losses, run.keys, grad_norm, bool(stop), time_up)
        named = dict(zip([*run.keys, "grad_norm"], values))
        # under fp16 an overflowing gradient is the scaler's business: it skips the update, lowers the scale
        checked = run.keys if self.scaler.is_enabled() else named
        bad = ", ".join(f"{k}={named[k]}" for k in checked if not math.isfinite(named[k]))
        if bad:
            last = f"last checkpoint: step {run.saved_step}" if run.saved_step is not None else "no checkpoint yet"
            raise TrainingError(f"non-finite values at step {step + 1}: {bad} (update not applied, {last})")
        return named, signalled > 0, out_of_time > 0

    def _update(self) -> float:
        """Apply the gradients (optimiser, lr schedule, EMA); returns the learning rate the update used."""
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._ema.update()
        return lr

    def _record(self, step: int, named: dict[str, float], lr: float, run: _Progress, stats: dict[str, Any],
                writer: SummaryWriter | None, final: bool) -> None:
        """After update ``step``: log the window's means, write previews and checkpoints at their cadences
        (and at the ``final`` step)."""
        cfg = self.config
        run.window = {k: run.window.get(k, 0.0) + v for k, v in named.items()}
        run.window_steps += 1
        if (cfg.log_every > 0 and step % cfg.log_every == 0) or final:
            now = time.perf_counter()
            means = {k: v / run.window_steps for k, v in run.window.items()}
            stats.update(means)
            self._log(writer, step, means, lr, run.window_steps / (now - run.window_start))
            run.window, run.window_steps, run.window_start = {}, 0, now
        if self.preview is not None and self.is_main and ((cfg.preview_every > 0 and step % cfg.preview_every == 0) or final):
            self._write_previews(writer, step)
        if (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0) or final:
            self._save(step)
            run.saved_step = step
            if writer is not None:
                writer.flush()

    def _log(self, writer: SummaryWriter | None, step: int, means: dict[str, float], lr: float, rate: float) -> None:
        if writer is None:
            return
        for k, v in means.items():
            writer.add_scalar(f"train/{k}", v, step)
        writer.add_scalar("train/lr", lr, step)
        writer.add_scalar("train/steps_per_sec", rate, step)

    def fit(self, resume: bool | str | os.PathLike = False) -> dict[str, Any]:
        """Train until ``config.steps`` (or ``config.max_minutes``), holding the run directory's lock
        (RunInUseError if another training holds it). ``resume=False`` starts a new run and refuses an
        ``out_dir`` with checkpoints; ``resume=True`` continues from the newest loadable checkpoint in
        ``out_dir`` (or starts fresh if there is none); a checkpoint path continues from that checkpoint: an
        older one of this run (the newer ones are renamed ``step-N.abandoned``), or another run's, into an
        ``out_dir`` without checkpoints. Settings changed since the checkpoint take effect (see ``_restore``).

        Returns the final step, wall time, steps/s, the mean of each loss term and the grad norm over the
        last log window, and ``stopped`` ("steps", "max_minutes", or "finished before" when a resumed run had
        nothing left to do). Raises TrainingError on a non-finite loss or gradient (nothing saved for that
        step) or non-finite weights at a checkpoint (not saved), and TrainingInterrupted after SIGINT/SIGTERM
        (the current step saved). The global RNG, which a resumed run restores for modules that use it
        (dropout), is the caller's again afterwards.
        """
        device = self.accelerator.device
        with self._exclusive(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            fix_mmap_threshold(self.config.mmap_threshold_kib)  # process-wide, and glibc cannot undo it: only while training
            return self._train(self._start(resume))

    def _train(self, step: int) -> dict[str, Any]:
        """The training loop, from ``step``: one step is ``_backward``, ``_update`` and ``_record``."""
        cfg, acc = self.config, self.accelerator
        stats: dict[str, Any] = {"step": step, "seconds": 0.0, "steps_per_sec": 0.0, "stopped": "steps"}
        if step >= cfg.steps:
            if step > 0:
                log.warning("%s: training already finished (step %d, train.steps=%d); raise train.steps to train further",
                            self.out_dir, step, cfg.steps)
            return stats | {"stopped": "finished before"}

        rank, device = acc.process_index, acc.device
        loader = DataLoader(
            self.dataset,
            batch_sampler=_ShardedBatches(len(self.dataset), cfg.batch_size, rank, acc.num_processes, cfg.seed, step),
            collate_fn=getattr(self.dataset, "collate_fn", None),
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda" and cfg.num_workers > 0,  # batches already on the GPU can't be pinned
            generator=torch.Generator().manual_seed(_derive_seed(cfg.seed, "workers", rank, step)),
        )
        generator = torch.Generator(device)
        first_step, t_start = step, time.perf_counter()
        run = _Progress(saved_step=step if step > 0 else None, window_start=t_start)

        with ExitStack() as stack:
            stop = stack.enter_context(_stop_requests())
            writer = stack.enter_context(SummaryWriter(self.out_dir / "tb", purge_step=step or None)) if self.is_main else None
            bar = stack.enter_context(tqdm(total=cfg.steps, initial=step, disable=not (cfg.progress and self.is_main), dynamic_ncols=True))
            batches = iter(loader)
            self._train_model.train()
            self.optimizer.zero_grad(set_to_none=True)
            while step < cfg.steps:
                generator.manual_seed(_derive_seed(cfg.seed, "loss", rank, step))
                time_up = cfg.max_minutes is not None and time.perf_counter() - t_start >= 60 * cfg.max_minutes
                batch = send_to_device(next(batches), device, non_blocking=True)
                named, signalled, out_of_time = self._backward(batch, generator, step, run, stop, time_up)
                if signalled:  # a signal on some rank: drop this step, save the last completed one
                    self.optimizer.zero_grad(set_to_none=True)
                    if run.saved_step != step:
                        self._save(step)
                    by = signal.Signals(stop[0]).name if stop else "a signal to another process"
                    raise TrainingInterrupted(f"stopped by {by} at step {step}; checkpoint saved in {self.out_dir}")
                lr = self._update()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{named['loss']:.4g}", refresh=False)
                self._record(step, named, lr, run, stats, writer, final=step == cfg.steps or out_of_time)
                if out_of_time:
                    log.warning("%s: stopped after train.max_minutes=%s at step %d of %d; resume to continue",
                                self.out_dir, cfg.max_minutes, step, cfg.steps)
                    stats["stopped"] = "max_minutes"
                    break

        self._wait_for_everyone()
        seconds = time.perf_counter() - t_start
        stats.update(step=step, seconds=seconds, steps_per_sec=(step - first_step) / seconds)
        return stats
