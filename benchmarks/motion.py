"""Motion prediction on held-out procedural sprite scenes: DFM beside the deterministic baseline.

For every held-out first frame each model draws N next frames (with their motion fields). Reported:

- best-of-N PSNR of the sampled next frame against the true one, the mean single-sample PSNR,
  and the PSNR of the mean of the N samples (what a regressor optimises);
- sprite directions: each sprite's sampled direction is the mean sampled flow over its visible
  pixels, snapped to the nearest of the dataset's directions, or "still" when shorter than half the
  speed. One frame does not tell the direction, so the true distribution is uniform over the
  directions: the total variation (TV) distance to it, the share of "still", and how many distinct
  directions the N samples of one sprite take. As a diagnostic, "TV, any length" snaps the mean
  flow to a direction however short it is.

Writes ``docs/motion_directions.png`` (direction histograms) and ``docs/motion_samples.png``.

    python benchmarks/motion.py --dfm runs/motion_sprites --baseline runs/motion_sprites_regression
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from dfm import metrics
from dfm.data.sprites import SpriteMotion
from dfm.runs import load_trained
from dfm.tasks.motion import motion_panel, sample_motions
from dfm.visualize import figure_to_array, save_image


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:func:`dfm.metrics.psnr` (images in [-1, 1]) over any leading dims, broadcast."""
    a, b = torch.broadcast_tensors(a, b)
    return metrics.psnr(a.flatten(0, -4), b.flatten(0, -4)).view(a.shape[:-3])


def held_out_scenes(generator: SpriteMotion, count: int, seed: int):
    """Scenes never written to the training set, quantised to 8 bits like the PNGs trained on."""
    rng = np.random.default_rng(seed)
    scenes = [generator.scene(rng) for _ in range(count)]
    for s in scenes:
        s.frames = ((s.frames + 1) * 127.5).round() / 127.5 - 1
    return scenes


def classify_directions(flow: torch.Tensor, scenes, generator: SpriteMotion, min_pixels: int, still: float) -> list[list[int]]:
    """Per visible sprite, the direction index of each sample (``directions`` = still: a mean flow
    shorter than ``still`` pixels)."""
    velocities = torch.from_numpy(generator.velocities).float()
    out = []
    for i, scene in enumerate(scenes):
        for mask in scene.masks:
            if mask.sum() < min_pixels:
                continue
            mean = flow[i][:, :, mask].mean(-1)  # (N, 2)
            nearest = (mean @ velocities.T).argmax(-1)
            out.append(torch.where(mean.norm(dim=-1) < still, generator.directions, nearest).tolist())
    return out


def evaluate(model, scenes, generator: SpriteMotion, samples: int, steps: int, min_pixels: int, chunk: int, precision: str = "fp32") -> dict:
    frames = torch.stack([s.frames[0] for s in scenes])
    truth = torch.stack([s.frames[1] for s in scenes])
    nexts, flows = [], []
    start = time.perf_counter()
    per_chunk = max(1, chunk // samples)
    for i in range(0, len(scenes), per_chunk):
        n, motion = sample_motions(model, frames[i : i + per_chunk], samples, seed=i, steps=steps, precision=precision)
        nexts.append(n)
        flows.append(motion.flow)
    seconds = time.perf_counter() - start
    nexts, flows = torch.cat(nexts), torch.cat(flows)
    scores = psnr(nexts, truth[:, None])  # (B, N)
    labels = classify_directions(flows, scenes, generator, min_pixels, still=generator.speed / 2)
    k = generator.directions
    uniform = np.r_[np.full(k, 1 / k), 0.0]

    def histogram(labels: list[list[int]]) -> np.ndarray:
        counts = np.bincount(np.ravel(labels), minlength=k + 1)
        return counts / counts.sum()

    freq = histogram(labels)
    # diagnostic: the direction of the mean flow whatever its length (only exactly zero is still)
    any_length = histogram(classify_directions(flows, scenes, generator, min_pixels, still=1e-6))
    return dict(
        best_of_n=scores.max(1).values.mean().item(),
        single=scores.mean().item(),
        mean_sample=psnr(nexts.mean(1), truth).mean().item(),
        tv=0.5 * np.abs(freq - uniform).sum(),
        tv_any_length=0.5 * np.abs(any_length - uniform).sum(),
        still=freq[k],
        distinct=float(np.mean([len(set(x)) for x in labels])),
        frequencies=freq,
        sprites=len(labels),
        seconds_per_sample=seconds / (len(scenes) * samples),
        nexts=nexts,
        flows=flows,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dfm", default="runs/motion_sprites", help="DFM run or checkpoint directory")
    p.add_argument("--baseline", default="runs/motion_sprites_regression", help="regression run or checkpoint")
    p.add_argument("--scenes", type=int, default=100)
    p.add_argument("--samples", type=int, default=8, help="samples per frame (N)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--min-pixels", type=int, default=12, help="sprites with fewer visible pixels are skipped")
    p.add_argument("--chunk", type=int, default=256, help="samples drawn at once")
    p.add_argument("--seed", type=int, default=10_000, help="seed of the held-out scenes (training used 0)")
    p.add_argument("--docs", default="docs", help="where the figures go")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="of the networks while sampling (default: fp32)")
    args = p.parse_args()
    torch.set_grad_enabled(False)

    task, dfm = load_trained(args.dfm)
    generator_file = Path(task.cfg.data.root) / "generator.json"
    params = json.loads(generator_file.read_text()) if generator_file.exists() else {}
    generator = SpriteMotion(**{k: v for k, v in params.items() if k in SpriteMotion.__dataclass_fields__})
    scenes = held_out_scenes(generator, args.scenes, args.seed)

    rows = {"DFM": evaluate(dfm, scenes, generator, args.samples, args.steps, args.min_pixels, args.chunk, args.precision)}
    if Path(args.baseline).exists():
        _, baseline = load_trained(args.baseline)
        rows["regression baseline"] = evaluate(baseline, scenes, generator, args.samples, args.steps, args.min_pixels, args.chunk, args.precision)
    frames = torch.stack([s.frames[0] for s in scenes])
    truth = torch.stack([s.frames[1] for s in scenes])
    still = psnr(frames, truth).mean().item()

    n = args.samples
    print(f"{args.scenes} held-out scenes x {n} samples, {rows['DFM']['sprites']} visible sprites, "
          f"{generator.directions} directions, DDIM {args.steps} steps, {args.precision}; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads\n")
    print(f"| model | best-of-{n} PSNR | sample PSNR | mean-sample PSNR | direction TV | still | distinct directions / sprite | TV, any length | s / sample |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['best_of_n']:.2f} | {r['single']:.2f} | {r['mean_sample']:.2f} | {r['tv']:.3f} | "
              f"{r['still']:.2f} | {r['distinct']:.2f} of {n} | {r['tv_any_length']:.3f} | {r['seconds_per_sample']:.3f} |")
    print(f"| no motion (the first frame) | {still:.2f} | {still:.2f} | {still:.2f} | | | | | |")
    print("\nreproduce: python benchmarks/motion.py " + f"--dfm {args.dfm} --baseline {args.baseline} --scenes {args.scenes} --samples {n} --precision {args.precision}")

    docs = Path(args.docs)
    names = [*(["right", "up", "left", "down"] if generator.directions == 4 else [f"{round(360 * i / generator.directions)}°" for i in range(generator.directions)]), "still"]
    fig, ax = plt.subplots(figsize=(6, 3))
    width = 0.8 / (len(rows) + 1)
    truth_freq = np.r_[np.full(generator.directions, 1 / generator.directions), 0]
    for j, (label, freq) in enumerate([("true posterior", truth_freq), *((k, r["frequencies"]) for k, r in rows.items())]):
        ax.bar(np.arange(len(names)) + (j - len(rows) / 2) * width, freq, width, label=label)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("share of sampled sprite motions")
    ax.legend(frameon=False)
    fig.tight_layout()
    print(f"wrote {save_image(figure_to_array(fig), docs / 'motion_directions.png')}")
    shown = min(4, args.scenes)
    panel = motion_panel(frames[:shown], truth[:shown], rows["DFM"]["nexts"][:shown], rows["DFM"]["flows"][:shown])
    print(f"wrote {save_image(panel, docs / 'motion_samples.png')}")


if __name__ == "__main__":
    main()
