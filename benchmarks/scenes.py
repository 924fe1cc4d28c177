"""3-D scenes from one image on held-out Synth3D scenes: DFM beside the deterministic baseline, scored by
`dfm eval`'s synth3d protocol (dfm/tasks/scenes/evaluation.py, which says what each column measures).

Each model samples scenes from the context view (view 0), diffusing the view opposite it (the hidden
side); the deterministic baseline's samples are all the same, so it gets one per scene. Prints one
table for both models (the README's) and writes ``docs/scenes_samples.png`` (context and hidden view,
true above the DFM's samples).

    python benchmarks/scenes.py --dfm runs/scenes_synth3d --baseline runs/scenes_synth3d_regression
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from dfm.runs import load_trained
from dfm.tasks.scenes.evaluation import COLUMNS, evaluate, machine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dfm", default="runs/scenes_synth3d", help="DFM run or checkpoint directory")
    p.add_argument("--baseline", default="runs/scenes_synth3d_regression", help="the same model trained by regression ('': none)")
    p.add_argument("--scenes", type=int, default=50, help="held-out scenes")
    p.add_argument("--samples", type=int, default=16, help="DFM samples per scene")
    p.add_argument("--steps", type=int, default=10, help="sampler steps (the README tables use 10)")
    p.add_argument("--sampler", default="dpmpp_2m", help="ddim | dpmpp_2m")
    p.add_argument("--eta", type=float, default=0.0, help="0: deterministic; 1: stochastic (ancestral DDIM, SDE-DPM-Solver++)")
    p.add_argument("--chunk", type=int, help="rays per rendering chunk (default: 64 on a CPU, where small chunks are faster; 4096 on a GPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda (default: cuda if available)")
    p.add_argument("--out", default="outputs/bench_scenes", help="where the samples are kept (an interrupted run resumes)")
    p.add_argument("--docs", default="docs")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    chunk = args.chunk or (64 if args.device == "cpu" else 4096)

    rows = {}
    for name, path in (("DFM", args.dfm), ("deterministic baseline (regression)", args.baseline)):
        if not path:
            continue
        task, model = load_trained(path, [f"model.render.chunk={chunk}"])
        model.to(args.device)
        n = 1 if task.cfg.objective.deterministic else args.samples
        if name == "DFM":
            name = f"DFM, {args.sampler} {args.steps} steps" + (f", eta {args.eta:g}" if args.eta else "")
        start = time.perf_counter()
        out = Path(args.out) / ("baseline" if task.cfg.objective.deterministic else "dfm")
        sampler = dict(steps=args.steps, sampler=args.sampler, eta=args.eta)
        report = evaluate(model, task, "synth3d", out, scenes=args.scenes, samples=n, sampler=sampler)
        rows[name] = report["metrics"] | {"seconds": (time.perf_counter() - start) / (report["scenes"] * n)}
        if name.startswith("DFM"):
            Path(args.docs).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / "samples.png", Path(args.docs) / "scenes_samples.png")
        print(f"{name}: done", flush=True)

    keys = ["context_psnr", "novel_psnr", "target_psnr", "best_psnr", "on_palette", "palette_tv", "median_share", "diversity", "diversity_unseen"]
    print(f"\n{args.scenes} held-out Synth3D scenes, {args.samples} DFM samples per scene (1 for the baseline); {machine()}, "
          f"device {args.device}\n")
    print("| model | " + " | ".join(COLUMNS[k][0] for k in keys) + " | s / sample |")
    print("|---|" + "---:|" * (len(keys) + 1))
    for name, r in rows.items():
        cells = [format(r[k], COLUMNS[k][1]) if k in r else "" for k in keys]
        print(f"| {name} | " + " | ".join(cells) + f" | {r['seconds']:.2f} |")
    print(f"\nreproduce: python benchmarks/scenes.py --dfm {args.dfm} --baseline '{args.baseline}' --scenes {args.scenes} "
          f"--samples {args.samples} --steps {args.steps} --sampler {args.sampler} --eta {args.eta:g} --device {args.device}")


if __name__ == "__main__":
    main()
