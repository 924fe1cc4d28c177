"""GAN inversion from a small patch on held-out generator samples: DFM beside latent optimisation.

For every held-out image (a truncated generator sample; one visible square patch) each method
produces latents, rendered at the observation resolution. Reported:

- patch PSNR: agreement with the visible patch (images in [-1, 1], peak-to-peak 2);
- diversity: mean pairwise RMS distance between the samples of one input outside the patch
  (images in [0, 1]); the optimisation baseline gets one latent per start, so its "diversity" is
  between independent random starts;
- mean-to-truth: RMS distance between the mean of the samples and the true image, outside the patch;
- wall time per sample (sampling is batched over all inputs; so is the optimisation).
A reference row draws latents from the prior, ignoring the patch.

Writes ``docs/gan_samples.png`` (patch, truth, DFM samples) and ``docs/gan_inversions.png``.

    python benchmarks/gan.py --dfm runs/gan_faces
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from pathlib import Path

import torch

from dfm.generators import truncated_latents
from dfm.runs import load_trained
from dfm.visualize import save_image


def scores(task, latents: torch.Tensor, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """``latents`` (B, N, D) for the held-out ``data``: patch PSNR, diversity, mean-to-truth."""
    b, n = latents.shape[:2]
    with torch.no_grad():
        images = task.observe(task.cfg.resolution)(latents.flatten(0, 1)).view(b, n, 3, *data["trgt_obs"].shape[-2:])
    truth, mask = data["trgt_obs"][:, None], data["ctxt_obs"][:, None, 3:]
    inside = mask.expand_as(images)
    mse_patch = ((images - truth) ** 2 * inside).sum((2, 3, 4)) / inside.sum((2, 3, 4))
    outside = (1 - mask).expand_as(images[:, :1])[:, 0]
    to01 = (images + 1) / 2

    def rms_outside(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return (((a - c) ** 2 * outside).sum((1, 2, 3)) / outside.sum((1, 2, 3))).sqrt()

    pairs = list(itertools.combinations(range(n), 2))
    diversity = torch.stack([rms_outside(to01[:, i], to01[:, j]) for i, j in pairs]).mean() if pairs else torch.tensor(float("nan"))
    return dict(
        patch_psnr=(10 * torch.log10(4 / mse_patch)).mean().item(),
        diversity=diversity.item(),
        mean_to_truth=rms_outside(to01.mean(1), (truth[:, 0] + 1) / 2).mean().item(),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dfm", default="runs/gan_faces", help="DFM run or checkpoint directory")
    p.add_argument("--inputs", type=int, default=50, help="held-out images")
    p.add_argument("--samples", type=int, default=8, help="DFM samples per input (N)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--starts", type=int, default=2, help="independent optimisation runs per input")
    p.add_argument("--inversion-steps", type=int, default=None, help="Adam steps (default: the config's)")
    p.add_argument("--docs", default="docs")
    args = p.parse_args()
    torch.set_grad_enabled(False)

    overrides = [f"inversion.steps={args.inversion_steps}"] if args.inversion_steps else []
    task, model = load_trained(args.dfm, overrides)
    data = task.held_out(args.inputs)
    rows = {}

    start = time.perf_counter()
    latents = task.sample_latents(model, data["ctxt_obs"], args.samples, steps=args.steps)
    seconds = time.perf_counter() - start
    rows[f"DFM, DDIM {args.steps} steps"] = dict(scores(task, latents, data), seconds=seconds / latents[:, :, 0].numel())
    dfm_latents = latents

    start = time.perf_counter()
    inverted = torch.cat([task.invert_latents(data["ctxt_obs"], seed=s) for s in range(args.starts)], dim=1)
    seconds = time.perf_counter() - start
    rows[f"latent optimisation, Adam {task.cfg.inversion.steps} steps"] = dict(scores(task, inverted, data), seconds=seconds / inverted[:, :, 0].numel())

    g = task.cfg.generator
    prior = truncated_latents(args.inputs * args.samples, g.latent_dim, g.psi, torch.Generator().manual_seed(0))
    rows["prior samples (ignore the patch)"] = dict(scores(task, prior.view(args.inputs, args.samples, -1), data), seconds=float("nan"))

    print(f"{args.inputs} held-out faces, patches {task.cfg.patch_min}-{task.cfg.patch_max} px at {task.cfg.resolution}x{task.cfg.resolution}, "
          f"{args.samples} DFM samples / {args.starts} optimisation starts per input; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads\n")
    print("| method | patch PSNR (dB) | diversity outside the patch | mean-to-truth RMS | s / sample |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['patch_psnr']:.2f} | {r['diversity']:.3f} | {r['mean_to_truth']:.3f} | {r['seconds']:.3f} |")
    print(f"\nreproduce: python benchmarks/gan.py --dfm {args.dfm} --inputs {args.inputs} --samples {args.samples}")

    shown = {k: v[:4] for k, v in data.items()}
    docs = Path(args.docs)
    for name, lat in (("gan_samples", dfm_latents[:4]), ("gan_inversions", inverted[:4])):
        print(f"wrote {save_image(task.grid(shown['ctxt_obs'], lat, shown['latent'], None), docs / f'{name}.png')}")


if __name__ == "__main__":
    main()
