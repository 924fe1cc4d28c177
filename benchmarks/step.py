"""Time and memory of ONE training step of a 3-D scenes config on the CPU (default: ``scenes_paper``).

One step is what the trainer does per batch: the DFM objective's forward pass, the backward pass,
gradient clipping and the config's optimiser update (fused AdamW by default; ``--no-optimizer``: forward + backward only). The batch is
synthetic but has exactly the layout of ``SceneViews`` collated at batch size 1: the config's
resolution and context views, a target and a novel view (a ``data.patch_size`` patch of each when
the config trains on patches), real cameras on an orbit (8 views at radius 3.2, 25 degrees up, 45
degree field of view) and random images in [-1, 1].

Every configuration runs in a fresh process, so that its memory figures are its own:

- process peak: ``getrusage(RUSAGE_SELF).ru_maxrss`` (model building and warm-up included; read before
  and after the timed steps, since resetting ``VmHWM`` lowers it as well);
- step peak: the resident set's high-water mark (``VmHWM``) over the timed steps only, reset before
  them through ``/proc/self/clear_refs``; where the reset is refused, the largest ``VmRSS`` seen by a
  thread sampling it every 2 ms;
- after building: ``VmRSS`` with the model and optimiser built, before any step (weights, the interpreter);
- before step: ``VmRSS`` just before the timed steps, after the warm-up and ``malloc_trim`` (weights and
  AdamW states: what stays resident between steps).

``--variants`` measures changed configurations in the same run, e.g. ``odet_full``: O_det (the
context-only render given to the target encoder) at the full image resolution and not recomputed as
a whole, as the published code does (its field queries are still recomputed chunk by chunk while
``model.render.checkpoint`` is on), instead of this config's half resolution recomputed in the
backward pass.

    python benchmarks/step.py --variants odet_full
    python benchmarks/step.py model.encoder.size=T model.field.width=64 --threads 1 --steps 1   # a tiny check
"""

from __future__ import annotations

import argparse
import ctypes
import math
import multiprocessing as mp
import platform
import resource
import shlex
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import torch

from dfm.cli import parse_with_overrides

VARIANTS = {
    # O_det at full resolution, not recomputed as a whole (as published, but for the field's per-chunk recomputation)
    "odet_full": ["model.render.context_resolution=null", "model.render.context_checkpoint=false"],
    "odet_off": ["model.render.context_samples=0"],  # no O_det and no L_cond
    "no_checkpointing": ["model.encoder.checkpointing=false"],  # keep the DiT's activations
    "no_field_checkpointing": ["model.render.checkpoint=false"],  # keep the field's activations
    "one_field": ["model.field.coarse_network=false"],  # one field for the coarse and fine passes
    "adafactor": ["train.optimizer=adafactor"],  # factored optimiser state instead of AdamW's two moments
    "adaptive_mmap": ["train.mmap_threshold_kib=0"],  # glibc's own mmap threshold, which climbs to 32 MB
    "mmap_4m": ["train.mmap_threshold_kib=4096"],  # a fixed threshold between the config's 128 KiB and glibc's 32 MB
}
PUBLISHED = ("published code (quoted)", 107.0, 23.4)  # s / step, GB
TARGET_GB, TARGET_S = 8.0, 53.0  # issue 18: half the published time, within 8 GB
GB = 1e9


def proc_status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class RssSampler(threading.Thread):
    """The largest ``VmRSS`` seen every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.interval, self.peak, self._done = interval, 0, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, proc_status("VmRSS"))
            self._done.wait(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def synthetic_batch(resolution: int, context_views: int, patch_size: int | None, seed: int = 0, near: float = 1.5, far: float = 5.0) -> dict:
    """What ``SceneViews`` gives for one item, collated with batch size 1."""
    from dfm.cameras import intrinsics_from_fov, orbit

    g = torch.Generator().manual_seed(seed)
    c2w, K = orbit(8, 3.2, 25.0), intrinsics_from_fov(45.0)
    target, novel = 4, 2  # opposite the context view 0, and a side view
    context = [0, *[v for v in range(1, 8) if v not in (target, novel)]][:context_views]
    r = resolution

    def image(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g) * 2 - 1

    def cameras(view) -> dict[str, torch.Tensor]:
        return {
            "c2w": c2w[view][None], "K": (K.repeat(len(view), 1, 1) if isinstance(view, list) else K)[None],
            "near": torch.tensor([near]), "far": torch.tensor([far]),
        }

    batch = {
        "ctxt_obs": image(1, len(context), 3, r, r), "ctxt_params": cameras(context),
        "trgt_obs": image(1, 3, r, r), "trgt_params": cameras(target),
        "novel_obs": image(1, 3, r, r), "novel_params": cameras(novel),
    }
    if patch_size is not None:
        p = patch_size
        (top, left), (novel_top, novel_left) = torch.randint(0, r - p + 1, (2, 2), generator=g).tolist()
        batch["trgt_params"]["patch"] = torch.tensor([[top, left]])
        batch["trgt_pixels"] = batch["trgt_obs"][:, :, top : top + p, left : left + p]
        batch["novel_params"]["patch"] = torch.tensor([[novel_top, novel_left]])
        batch["novel_obs"] = batch["novel_obs"][:, :, novel_top : novel_top + p, novel_left : novel_left + p]
    return batch


def build_step(config: str, overrides: list[str], threads: int, optimizer: bool, precision: str):
    """The model, its config and ``step(i) -> losses``: one training step as the trainer takes it (autocast
    forward at ``precision``, backward, clipping, the optimiser update), on a synthetic batch."""
    from dfm.precision import autocast
    from dfm.runs import task_from_config
    from dfm.training.trainer import fix_mmap_threshold, make_optimizer

    torch.set_num_threads(threads)
    task = task_from_config(config, overrides)
    cfg = task.cfg
    fix_mmap_threshold(cfg.train.mmap_threshold_kib)  # as the trainer does
    torch.manual_seed(cfg.train.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = task.build_model().train()
    opt = make_optimizer(model.parameters(), cfg.train, "cpu") if optimizer else None  # as the trainer builds it
    d = cfg.data
    batch = synthetic_batch(d.resolution, d.views.context_views, d.patch_size, cfg.train.seed, d.near, d.far)
    generator = torch.Generator()

    def step(i: int) -> dict[str, float]:
        generator.manual_seed(i)
        with autocast(precision, "cpu"):
            losses = model(batch, generator=generator)
        losses["loss"].backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        if opt is not None:
            with torch.profiler.record_function("optimizer"):
                opt.step()
        model.zero_grad(set_to_none=True)
        return {k: v.item() for k, v in losses.items()}

    return model, cfg, step, [str(w.message) for w in caught]


def measure(config: str, overrides: list[str], steps: int, warmup: int, threads: int, optimizer: bool, precision: str) -> dict:
    """Build the model and run ``warmup`` + ``steps`` training steps; times and memory (in a fresh process)."""
    model, cfg, step, caught = build_step(config, overrides, threads, optimizer, precision)
    built = proc_status("VmRSS")
    params = sum(p.numel() for p in model.parameters())
    for i in range(warmup):
        step(i)
    try:  # hand the warm-up's freed memory back to the system, so that the timed steps fault in their own
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    before = proc_status("VmRSS")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; read now: the reset below lowers it too
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS
        hwm_reset = True
    except OSError:
        hwm_reset = False
    sampler = RssSampler()
    sampler.start()
    times = []
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        losses = step(i)
        times.append(time.perf_counter() - start)
    sampled = sampler.stop()
    step_peak = max(proc_status("VmHWM"), sampled) if hwm_reset else sampled
    return dict(
        seconds=sum(times) / len(times), process_peak=max(maxrss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        step_peak=step_peak, sampled_peak=sampled, hwm_reset=hwm_reset, built=built, before=before, params=params,
        threads=torch.get_num_threads(), losses=losses, warnings=caught,
        resolution=cfg.data.resolution, patch=cfg.data.patch_size, context_views=cfg.data.views.context_views,
    )


# operator kinds for the time breakdown: the first pattern that an aten operator's name contains wins
KINDS = {
    "attention": ("scaled_dot_product", "attention"),
    "matmul / conv": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "conv", "aten::_mkldnn"),
    "layer norm": ("layer_norm",),
    "copies and casts": ("copy_", "aten::to", "aten::_to_copy", "aten::cat", "aten::clone", "aten::contiguous", "aten::stack", "fill_", "zero_", "aten::empty", "aten::resize_", "aten::index_put", "aten::pad", "constant_pad"),
    "ray / feature sampling": ("grid_sampler", "searchsorted", "aten::sort", "gather", "scatter", "aten::index", "aten::cumsum", "aten::cumprod"),
    "reductions": ("aten::sum", "aten::mean", "aten::amax", "aten::max", "aten::min", "aten::norm", "linalg_vector_norm", "aten::var"),
    "element-wise": ("aten::",),  # every other aten operator: add, mul, silu, gelu, exp, where, ...
}


def breakdown(config: str, overrides: list[str], threads: int, optimizer: bool, precision: str, warmup: int) -> dict:
    """Self time of one profiled step (torch.profiler, CPU) by operator kind, the top operators, and the step's
    FLOPs as the profiler counts them (matrix products and convolutions, forward, backward and the
    recomputation of checkpointed parts; not attention, not element-wise work). torch's FlopCounterMode
    would count attention too, but its module hooks defeat activation checkpointing: it ran out of 24 GB."""
    from torch.profiler import ProfilerActivity, profile

    _, _, step, _ = build_step(config, overrides, threads, optimizer, precision)
    for i in range(warmup):
        step(i)
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        step(warmup)
    events = prof.key_averages()
    flops = float(sum(e.flops or 0 for e in events))
    optimizer_total = sum(e.cpu_time_total for e in events if e.key == "optimizer") / 1e6
    kinds = dict.fromkeys(KINDS, 0.0)
    ops = {}
    for e in events:
        if not e.key.startswith("aten::"):
            continue
        seconds = e.self_cpu_time_total / 1e6
        ops[e.key] = seconds
        kind = next(k for k, patterns in KINDS.items() if any(p in e.key for p in patterns))
        kinds[kind] += seconds
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    kinds["other (autograd, Python, profiler)"] = total - sum(kinds.values())
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:8]
    return dict(kinds=kinds, total=total, optimizer=optimizer_total, top=top, flops=flops)


def matmul_peak(threads: int, dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """The machine's matmul rate (FLOP/s) for ``dtype`` at ``threads``: the best of ``repeats`` n x n products."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def in_child(fn, *args):
    """``fn(*args)`` in a fresh process; a child killed (e.g. out of memory) raises BrokenProcessPool, no hang."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. model.encoder.size=S")
    p.add_argument("--config", default="scenes_paper", help="config file or built-in name (default: scenes_paper)")
    p.add_argument("--steps", type=int, default=2, help="timed steps (default: 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: 2)")
    p.add_argument("--no-optimizer", action="store_true", help="forward + backward only (no optimiser update)")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated precisions, one row each (default: fp32,bf16)")
    p.add_argument("--variants", default="", help=f"comma-separated, also measured: {', '.join(VARIANTS)}")
    p.add_argument("--profile", action="store_true", help="also profile a step: its time by operator kind, its FLOPs (torch.profiler)")
    args = parse_with_overrides(p)
    variants = [v for v in args.variants.split(",") if v]
    precisions = [v for v in args.precision.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if not precisions or any(v not in ("fp32", "bf16") for v in precisions):
        p.error(f"--precision takes fp32 and/or bf16 on a CPU, got {args.precision!r}")
    if args.steps < 1:
        p.error("--steps must be at least 1")
    optimizer = not args.no_optimizer

    print("Command: `" + " ".join(["python benchmarks/step.py", *map(shlex.quote, sys.argv[1:])]) + "`")
    rows, profiles = {}, {}
    for name in ["", *variants]:
        for precision in precisions:
            label = args.config + (f" + {name}" if name else "") + f", {precision}"
            overrides = [*args.overrides, *VARIANTS.get(name, [])]
            print(f"measuring {label} ...", file=sys.stderr, flush=True)
            rows[label] = in_child(measure, args.config, overrides, args.steps, args.warmup, args.threads, optimizer, precision)
            if args.profile:
                profiles[label] = in_child(breakdown, args.config, overrides, args.threads, optimizer, precision, args.warmup)
    peaks = {v: in_child(matmul_peak, args.threads, {"fp32": torch.float32, "bf16": torch.bfloat16}[v]) for v in precisions}

    first = next(iter(rows.values()))
    what = "forward + backward" if args.no_optimizer else "forward + backward + clip + optimiser update: fused AdamW unless the row says adafactor"
    patch = f"{first['patch']}x{first['patch']} patches of" if first["patch"] else "whole"
    print(f"\nOne training step ({what}) at {first['resolution']}x{first['resolution']}, batch 1, "
          f"{first['context_views']} context view(s), {patch} target + novel view; mean of {args.steps} step(s) after "
          f"{args.warmup} warm-up; {platform.machine()}, {first['threads']} torch threads, torch {torch.__version__}; "
          f"overrides: {args.overrides or 'none'}\n")
    print("| run | s / step | process peak RSS (GB) | step peak RSS (GB) | RSS after building (GB) | RSS before step (GB) | parameters | TFLOP / step | TFLOP/s | of matmul peak |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in rows.items():
        rate = ""
        if label in profiles:
            flops = profiles[label]["flops"]
            achieved = flops / r["seconds"]
            rate = f"{flops / 1e12:.2f} | {achieved / 1e12:.3f} | {achieved / peaks[label.rsplit(', ', 1)[1]]:.0%}"
        print(f"| {label} | {r['seconds']:.2f} | {r['process_peak'] / GB:.2f} | {r['step_peak'] / GB:.2f} | "
              f"{r['built'] / GB:.2f} | {r['before'] / GB:.2f} | {r['params'] / 1e6:.1f} M | {rate or ' | |'} |")
    name, seconds, gb = PUBLISHED
    print(f"| {name} | {seconds:.0f} | {gb} | | | | | | | |")
    print(f"| target | <= {TARGET_S:.0f} | <= {TARGET_GB:.0f} | <= {TARGET_GB:.0f} | | | | | | |")
    how = "VmHWM over the timed steps, reset before them" if first["hwm_reset"] else "largest VmRSS sampled every 2 ms during the timed steps"
    sampled = ", ".join(f"{r['sampled_peak'] / GB:.2f}" for r in rows.values())
    print(f"\nGB = 10^9 bytes. Step peak: {how} (VmRSS sampled every 2 ms: {sampled}). "
          f"Weights + gradients + AdamW states take 16 bytes per parameter ({16 * first['params'] / GB:.2f} GB for the "
          "first row) whatever the activations; the trainer's EMA copy (4 bytes per parameter) is not part of this step. "
          "Matmul peak (best of 10 2048x2048 products, same threads): "
          + ", ".join(f"{v} {peak / 1e9:.0f} GFLOP/s" for v, peak in peaks.items()) + ". FLOPs (with --profile): "
          "torch.profiler's count of the profiled step (matrix products and convolutions; forward, backward and "
          "recomputation; not attention, not element-wise work), divided by the timed step's seconds.")
    for label, r in rows.items():
        terms = ", ".join(f"{k} {v:.4g}" for k, v in r["losses"].items())
        print(f"- {label}: losses of the last step: {terms}")
    for w in dict.fromkeys(w for r in rows.values() for w in r["warnings"]):
        print(f"- warning while building: {w}")
    if profiles:
        labels = list(profiles)
        print("\nWhere a step's time goes (one profiled step, self CPU time by operator kind; seconds, share; the "
              "profiler itself slows the step down):\n")
        print("| kind | " + " | ".join(labels) + " |")
        print("|---|" + "---:|" * len(labels))
        for kind in profiles[labels[0]]["kinds"]:
            cells = [f"{pr['kinds'][kind]:.1f} ({pr['kinds'][kind] / pr['total']:.0%})" for pr in profiles.values()]
            print(f"| {kind} | " + " | ".join(cells) + " |")
        print("| total | " + " | ".join(f"{pr['total']:.1f}" for pr in profiles.values()) + " |")
        print("| of which the optimiser update | " + " | ".join(f"{pr['optimizer']:.1f}" for pr in profiles.values()) + " |")
        for label, pr in profiles.items():
            print(f"- {label}, top operators: " + ", ".join(f"{k.removeprefix('aten::')} {v:.1f} s" for k, v in pr["top"]))


if __name__ == "__main__":
    main()
