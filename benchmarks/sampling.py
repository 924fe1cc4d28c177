"""Seconds per sampling step and per sampled view of a 3-D scenes config on the CPU (default: ``scenes_paper``).

Sampling one view runs the denoiser's context part once (the context views' encoding and O_det; twice
under guidance: the conditional and the unconditional context) and then, at every sampler step, its
per-step part (the noisy target's encoding, binding the field) and the forward model (rendering the
whole target view). The sampler's own arithmetic is negligible beside them, so the benchmark times the
parts themselves, as ``DFM.sample`` calls them (``dfm.model.GuidedX0``), on one batch of ``--batch``
views: the context part (building ``GuidedX0``) and ``--repeats`` calls of one step's clean estimate
(after one untimed call), and reports

    s / step = the mean step call,       s / view at N steps = context part + N * s / step.

"before split" hides the denoiser's split (it is called whole at every step, as before the engine's
``ContextSplit``: its context part is then inside every step), "split" is what ``DFM.sample`` does now.
Weights are the config's random initialisation: time does not depend on their values. Every
configuration runs in a fresh process.

    python benchmarks/sampling.py                                   # 64 and 128, guidance 1 and 2, fp32 and bf16
    python benchmarks/sampling.py --resolutions 64 --guidance 2      # a part of the table
    python benchmarks/sampling.py model.encoder.size=T model.field.width=64 --resolutions 32   # a tiny check
"""

from __future__ import annotations

import argparse
import itertools
import platform
import shlex
import sys
import time
import warnings

import torch
from torch import nn

from dfm.cli import parse_with_overrides
from step import in_child  # benchmarks/step.py, beside this script


class Unsplit(nn.Module):
    """A denoiser seen whole: the sampler calls it at every step (no ``encode_context``)."""

    def __init__(self, denoiser: nn.Module):
        super().__init__()
        self.inner = denoiser

    def forward(self, *args):
        return self.inner(*args)


def measure(config: str, overrides: list[str], resolution: int, guidance: float, precision: str, split: bool,
            batch: int, repeats: int, threads: int) -> dict:
    """Seconds of the context part and of one step's clean estimate (fresh process)."""
    from dfm.cameras import intrinsics_from_fov, orbit
    from dfm.model import GuidedX0
    from dfm.runs import task_from_config

    torch.set_num_threads(threads)
    task = task_from_config(config, [*overrides, f"data.resolution={resolution}"])
    cfg = task.cfg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LPIPS and such: sampling builds no loss terms
        model = task.build_model(training=False).eval()
    if not split:
        model.denoiser = Unsplit(model.denoiser)
    g = torch.Generator().manual_seed(0)
    v = cfg.data.views.context_views
    c2w, K = orbit(8, 3.2, 25.0), intrinsics_from_fov(45.0)
    bounds = {"near": torch.full((batch,), cfg.data.near), "far": torch.full((batch,), cfg.data.far)}
    ctxt = torch.rand(batch, v, 3, resolution, resolution, generator=g) * 2 - 1
    ctxt_params = {"c2w": c2w[:v].expand(batch, v, 4, 4), "K": K.expand(batch, v, 3, 3)} | bounds
    target = {"c2w": c2w[4].expand(batch, 4, 4), "K": K.expand(batch, 3, 3)} | bounds
    x = torch.randn(batch, 3, resolution, resolution, generator=g)
    t = torch.tensor(500.0)
    with torch.no_grad():
        start = time.perf_counter()
        x0_fn = GuidedX0(model, ctxt, ctxt_params, target, guidance, precision)
        context = time.perf_counter() - start
        x0_fn(x, t)  # untimed: first-call allocations
        start = time.perf_counter()
        for _ in range(repeats):
            x0_fn(x, t)
        per_step = (time.perf_counter() - start) / repeats
    return dict(context=context, per_step=per_step, threads=torch.get_num_threads())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--config", default="scenes_paper", help="config file or built-in name (default: scenes_paper)")
    p.add_argument("--resolutions", default="64,128", help="comma-separated image sizes (default: 64,128)")
    p.add_argument("--guidance", default="1,2", help="comma-separated guidance weights (default: 1,2; 1 = none)")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated precisions (default: fp32,bf16)")
    p.add_argument("--batch", type=int, default=1, help="views sampled at once (default: 1)")
    p.add_argument("--repeats", type=int, default=2, help="timed step calls (default: 2)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps of the per-view column (default: 50)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: 2)")
    args = parse_with_overrides(p)
    split = lambda text, kind: [kind(x) for x in text.split(",") if x]  # noqa: E731
    resolutions, guidances, precisions = split(args.resolutions, int), split(args.guidance, float), split(args.precision, str)
    if any(v not in ("fp32", "bf16") for v in precisions):
        p.error(f"--precision takes fp32 and/or bf16 on a CPU, got {args.precision!r}")
    if args.repeats < 1 or args.batch < 1 or args.steps < 1:
        p.error("--repeats, --batch and --steps must be at least 1")

    print("Command: `" + " ".join(["python benchmarks/sampling.py", *map(shlex.quote, sys.argv[1:])]) + "`")
    rows = []
    for r, w, precision in itertools.product(resolutions, guidances, precisions):
        cells = {}
        for splitting in (False, True):
            print(f"measuring {r}x{r}, guidance {w:g}, {precision}, {'split' if splitting else 'before split'} ...", file=sys.stderr, flush=True)
            cells[splitting] = in_child(measure, args.config, args.overrides, r, w, precision, splitting, args.batch, args.repeats, args.threads)
        rows.append((r, w, precision, cells))

    n = args.steps
    print(f"\n{args.config}, batch {args.batch}; mean of {args.repeats} step calls after one untimed; {platform.machine()}, "
          f"{rows[0][3][True]['threads']} torch threads, torch {torch.__version__}; overrides: {args.overrides or 'none'}\n")
    print(f"| resolution | guidance | precision | s / step, before split | s / step, split | context part, split (s) | "
          f"s / view at {n} steps, before | s / view at {n} steps, split | speed-up over fp32 before split |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    per_view = lambda c: c["context"] + n * c["per_step"]  # noqa: E731
    base = {(r, w): per_view(c[False]) for r, w, precision, c in rows if precision == "fp32"}
    for r, w, precision, c in rows:
        speedup = f"{base[r, w] / per_view(c[True]):.2f}x" if (r, w) in base else ""
        print(f"| {r}x{r} | {w:g} | {precision} | {c[False]['per_step']:.2f} | {c[True]['per_step']:.2f} | {c[True]['context']:.2f} | "
              f"{per_view(c[False]):.0f} | {per_view(c[True]):.0f} | {speedup} |")


if __name__ == "__main__":
    main()
