"""Does DFM sample the true posterior? Energy distance to exact posterior samples on the toy problems.

For each problem, 20 held-out contexts x 500 samples of the signal S, from: the exact denoiser run
through the samplers (the samplers' own error), DFM, DFM trained without the novel-view term, and
the same network trained as a deterministic regressor. Each row is the mean energy distance to
exact posterior samples divided by the floor, the same distance between two independent exact
sample sets (so 1 is perfect); the same again on a held-out projection A_h S.

    python benchmarks/posterior.py                 # both problems, about 15 min on 2 CPU cores
    python benchmarks/posterior.py --problems gmm --steps 2000 --out /tmp/bench   # quicker look
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dfm.diffusion import NoiseSchedule
from dfm.forward_models import LinearProjection
from dfm.model import DFM
from dfm.runs import task_from_config, train
from dfm.tasks.toy import ExactDenoiser, held_out, posterior_distances, sample_signals, scatter_figure
from dfm.visualize import save_image

SAMPLERS = {
    "DDIM 50": dict(sampler="ddim", steps=50),
    "DDIM 50, karras": dict(sampler="ddim", steps=50, spacing="karras"),
    "DPM++2M 10": dict(sampler="dpmpp_2m", steps=10),
    "DPM++2M 10, karras": dict(sampler="dpmpp_2m", steps=10, spacing="karras"),
}


def evaluate(model: DFM, data, sampler: str | None, precision: str) -> dict:
    start = time.perf_counter()
    samples = sample_signals(model, data, precision=precision, **(SAMPLERS[sampler] if sampler else {}))
    return {**posterior_distances(samples, data), "sample_s": time.perf_counter() - start, "samples": samples}


def run_problem(problem: str, args: argparse.Namespace) -> list[dict]:
    rows = []
    base = task_from_config(f"toy_{problem}", [f"out_dir={args.out}/{problem}"])
    data = held_out(base.problem, contexts=20, samples=500, seed=1234)
    rows.append({"method": "floor (exact vs exact)", "ratio_signal": 1.0, "ratio_held_out": 1.0})

    schedule = NoiseSchedule()
    exact = DFM(ExactDenoiser(base.problem, schedule), LinearProjection(), schedule, p_uncond=0.0)
    # the manifold's exact denoiser integrates over a 16k-point grid: ~70 s per 50-step run, so fewer rows
    for sampler in SAMPLERS if problem == "gmm" else ["DDIM 50", "DPM++2M 10, karras"]:
        rows.append({"method": f"exact denoiser, {sampler}", **evaluate(exact, data, sampler, args.precision)})

    variants = {
        "DFM": [],
        "DFM without novel term": ["objective.loss_weights.novel=0.0"],
        "regressor (same network)": ["objective.deterministic=true", f"train.steps={args.regressor_steps}"],
    }
    if args.plain_mlp:
        variants["DFM, plain MLP (no preconditioning)"] = ["model.precondition=false"]
    for name, overrides in variants.items():
        run_dir = f"{args.out}/{problem}/{name.split(' (')[0].replace(' ', '_').replace(',', '')}"
        task = task_from_config(
            f"toy_{problem}", [f"out_dir={run_dir}", f"train.steps={args.steps}", f"train.precision={args.precision}", *overrides],
        )
        shutil.rmtree(run_dir, ignore_errors=True)  # always measure a fresh training run
        trainer, stats = train(task, progress=args.progress)
        model = trainer.ema_model.eval()
        info = {"train_steps": stats["step"], "train_s": stats["seconds"]}
        samplers = [None] if task.cfg.objective.deterministic else (["DDIM 50", "DPM++2M 10, karras"] if name == "DFM" else ["DDIM 50"])
        for sampler in samplers:
            rows.append({"method": name + (f", {sampler}" if sampler else ""), **info, **evaluate(model, data, sampler, args.precision)})

    dfm_row = next(r for r in rows if r["method"] == "DFM, DDIM 50")
    image = np.concatenate(
        [scatter_figure(dfm_row["samples"][i], data.exact[i], f"{problem}: context {i}, DFM (DDIM 50)") for i in range(2)]
    )
    save_image(image, Path(args.out) / f"posterior_{problem}.png")
    return rows


def table(problem: str, rows: list[dict]) -> str:
    lines = [
        f"**{problem}** (energy distance / floor; lower is better, 1 = exact)",
        "",
        "| method | ratio on S | ratio on A_h S | train steps | train s | sample s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        def f(key, fmt):
            return format(r[key], fmt) if key in r else ""
        lines.append(
            f"| {r['method']} | {f('ratio_signal', '.1f')} | {f('ratio_held_out', '.1f')} | "
            f"{f('train_steps', 'd')} | {f('train_s', '.0f')} | {f('sample_s', '.1f')} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", nargs="+", default=["gmm", "manifold"], choices=["gmm", "manifold"])
    p.add_argument("--steps", type=int, default=None, help="training steps per DFM model (default: the config's)")
    p.add_argument("--regressor-steps", type=int, default=2000)
    p.add_argument("--plain-mlp", action="store_true", help="also train the unpreconditioned MLP (ablation)")
    p.add_argument("--out", default="outputs/bench_posterior")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="of training and sampling (default: fp32)")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()
    if args.steps is None:
        args.steps = task_from_config("toy_gmm").cfg.train.steps

    start = time.perf_counter()
    report = [
        "Command: `python " + " ".join(shlex.quote(a) for a in sys.argv) + "`",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{platform.processor() or platform.platform()}; precision {args.precision} (training and sampling)",
        "",
    ]
    results = {}
    for problem in args.problems:
        rows = run_problem(problem, args)
        results[problem] = [{k: v for k, v in r.items() if k != "samples"} for r in rows]
        report += [table(problem, rows), ""]
    report.append(f"Total wall time: {time.perf_counter() - start:.0f} s")
    text = "\n".join(report)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "posterior.md").write_text(text + "\n")
    (out / "posterior.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
