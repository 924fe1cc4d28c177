"""GAN inversion from a small noisy patch: DFM against the exact posterior, latent optimisation and the prior.

The generator is known and the patch carries Gaussian noise of the task's ``patch_noise``, so
p(latent | patch) is known up to a constant (``GanTask.log_posterior``). HMC samples it for every held-out
patch (``--chains`` independent chains from prior draws, adapted during ``--warmup`` steps): the final
states of the first half of the chains are the reference set A, those of the second half an independent
exact set B. Every method gives ``N = chains / 2`` latents per patch (DFM samples, optimisation restarts,
prior draws), so that all energy distances have the same sample-size bias, and is scored against A:

- posterior ratio: the energy distance (``dfm.metrics.energy_distance``) between the method's images and
  set A, averaged over patches, divided by that of set B (the floor: 1 = as good as exact samples), on
  the patch's pixels and on the rest of the image;
- patch PSNR: agreement with the true image on the patch (images in [-1, 1], peak-to-peak 2);
- diversity: mean pairwise RMS distance between the images of one patch, outside it ([0, 1] units);
- latent norm: mean and standard deviation of |latent| (the prior's row is the typical set);
- s / sample (sampling is batched over all patches; so are MCMC and the optimisation).

Convergence diagnostics of the reference: split-R-hat and ESS over the kept draws of every noise
coordinate and of an image statistic (the mean of each image outside the patch), and the acceptance rate.

    python benchmarks/gan.py --dfm runs/gan_faces
    python benchmarks/gan.py --dfm runs/gan_faces --denoising   # only the denoiser's accuracy by noise level

``--denoising`` asks where the samples' error comes from: for held-out images noised to each of several
timesteps, the PSNR of the image of the predicted latent against the clean image, and the predicted
latents' norm; a self-conditioned denoiser is also measured given its own first estimate (as it is
while sampling).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from dfm.mcmc import effective_sample_size, split_rhat
from dfm.metrics.distances import energy_distance
from dfm.runs import load_trained
from dfm.visualize import save_image


def images_of(task, latents: torch.Tensor) -> torch.Tensor:
    """``latents`` (B, N, D) -> images (B, N, 3, r, r) at the observation resolution."""
    with torch.no_grad():
        images = task.observe(task.cfg.resolution)(latents.flatten(0, 1))
    return images.view(*latents.shape[:2], *images.shape[1:])


def scores(images: torch.Tensor, latents: torch.Tensor, data: dict, reference: torch.Tensor) -> dict[str, float]:
    """Scores of ``images`` (B, N, 3, r, r) of ``latents`` (B, N, D) against the true images and the posterior
    ``reference`` images (B, N, 3, r, r)."""
    truth, mask = data["trgt_obs"][:, None], data["ctxt_obs"][:, None, 3:]
    inside, outside = mask.expand_as(images).bool(), (1 - mask).expand_as(images).bool()
    mse_patch = ((images - truth) ** 2 * inside).sum((2, 3, 4)) / inside.sum((2, 3, 4))
    to01 = (images + 1) / 2

    def rms_outside(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return (((a - c) ** 2 * outside[:, 0]).sum((1, 2, 3)) / outside[:, 0].sum((1, 2, 3))).sqrt()

    pairs = list(itertools.combinations(range(images.shape[1]), 2))
    diversity = torch.stack([rms_outside(to01[:, i], to01[:, j]) for i, j in pairs]).mean()
    distance = {
        region: torch.stack([
            energy_distance(images[b][:, where[b, 0]], reference[b][:, where[b, 0]]) for b in range(len(images))
        ]).mean().item()
        for region, where in (("patch", inside), ("outside", outside))
    }
    norms = latents.flatten(0, 1).norm(dim=-1)
    return dict(
        patch_psnr=(10 * torch.log10(4 / mse_patch)).mean().item(), diversity=diversity.item(),
        ed_patch=distance["patch"], ed_outside=distance["outside"], norm_mean=norms.mean().item(), norm_std=norms.std().item(),
    )


def denoising_profile(task, model, count: int = 64, timesteps=(10, 50, 100, 250, 500, 750, 999)) -> None:
    """Print the denoiser's reconstruction accuracy by noise level (see the module docstring)."""
    data = task.held_out(count)
    x0, ctxt, truth = data["trgt_obs"], data["ctxt_obs"], data["latent"]
    g = torch.Generator().manual_seed(0)
    self_conditioned = model.self_condition > 0
    print(f"{count} held-out images at {task.cfg.resolution}x{task.cfg.resolution}; true latent norm {truth.norm(dim=1).mean():.2f}\n")
    print("| t | PSNR, one pass (dB) | latent norm |" + (" PSNR, given its first estimate (dB) | latent norm |" if self_conditioned else ""))
    print("|---:|---:|---:|" + ("---:|---:|" if self_conditioned else ""))

    def psnr(z: torch.Tensor) -> float:
        mse = ((model.forward_model(z, None) - x0) ** 2).mean((1, 2, 3))
        return (10 * torch.log10(4 / mse)).mean().item()

    for t in timesteps:
        tt = torch.full((count,), float(t))
        xt = model.schedule.add_noise(x0, tt, torch.randn(x0.shape, generator=g))
        previous = {"previous": torch.zeros_like(xt)} if self_conditioned else {}
        z = model.denoiser(ctxt, None, xt, tt, None, **previous)
        row = f"| {t} | {psnr(z):.2f} | {z.norm(dim=1).mean():.2f} |"
        if self_conditioned:
            z2 = model.denoiser(ctxt, None, xt, tt, None, previous=model.forward_model(z, None))
            row += f" {psnr(z2):.2f} | {z2.norm(dim=1).mean():.2f} |"
        print(row)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dfm", default="runs/gan_faces", help="DFM run or checkpoint directory")
    p.add_argument("--inputs", type=int, default=20, help="held-out patches")
    p.add_argument("--chains", type=int, default=16, help="HMC chains per patch; every method gives half as many latents")
    p.add_argument("--warmup", type=int, default=150, help="HMC warm-up steps (step size and mass adaptation)")
    p.add_argument("--mcmc-steps", type=int, default=100, help="HMC steps kept after the warm-up (for the diagnostics)")
    p.add_argument("--leapfrog", type=int, default=10, help="leapfrog steps per HMC step (one generator gradient each)")
    p.add_argument("--steps", type=int, default=50, help="DFM's DDIM steps")
    p.add_argument("--inversion-steps", type=int, default=None, help="Adam steps of the optimisation (default: the config's)")
    p.add_argument("--docs", default="docs")
    p.add_argument("--denoising", action="store_true", help="only print the denoiser's accuracy by noise level")
    args = p.parse_args()
    if args.chains < 4 or args.chains % 2:
        p.error("--chains must be even and at least 4")
    torch.set_grad_enabled(False)

    overrides = [f"inversion.steps={args.inversion_steps}"] if args.inversion_steps else []
    task, model = load_trained(args.dfm, overrides)
    if args.denoising:
        print("Command: `python " + " ".join(shlex.quote(a) for a in ["benchmarks/gan.py", *sys.argv[1:]]) + "`\n")
        return denoising_profile(task, model)
    data = task.held_out(args.inputs)
    n = args.chains // 2
    latents, seconds = {}, {}

    start = time.perf_counter()
    chain = task.posterior_noise(data["ctxt_obs"], args.chains, args.mcmc_steps, args.warmup, args.leapfrog, seed=0, progress=True)
    seconds["mcmc"] = (time.perf_counter() - start) / (args.inputs * args.chains)
    final = task.latents(chain.samples[:, -1])  # (B, chains, D): the chains' last states
    reference, exact = final[:, :n], final[:, n:]
    latents["exact posterior (HMC), independent chains"] = exact

    start = time.perf_counter()
    latents[f"DFM, DDIM {args.steps} steps"] = task.sample_latents(model, data["ctxt_obs"], n, steps=args.steps, progress=True)
    seconds[f"DFM, DDIM {args.steps} steps"] = (time.perf_counter() - start) / (args.inputs * n)

    optimised = f"latent optimisation (MAP), Adam {task.cfg.inversion.steps} steps, {n} restarts"
    start = time.perf_counter()
    u, _ = task.invert_noise(data["ctxt_obs"], restarts=n, seed=1, progress=True)
    latents[optimised] = task.latents(u)
    seconds[optimised] = (time.perf_counter() - start) / (args.inputs * n)

    g = task.cfg.generator
    latents["prior samples (ignore the patch)"] = task.generator.prior_latents(args.inputs * n, torch.Generator().manual_seed(2), g.psi).view(args.inputs, n, -1)
    seconds["exact posterior (HMC), independent chains"] = seconds["mcmc"]

    reference_images = images_of(task, reference)
    rows = {k: scores(images_of(task, v), v, data, reference_images) for k, v in latents.items()}
    floor = rows["exact posterior (HMC), independent chains"]

    # diagnostics over the kept draws: every noise coordinate, and each image's mean outside the patch
    kept = chain.samples  # (B, S, C, D)
    with torch.no_grad():
        images = images_of(task, task.latents(kept.flatten(1, 2))).view(*kept.shape[:3], *data["trgt_obs"].shape[1:])
    outside = 1 - data["ctxt_obs"][:, None, None, 3:]
    statistic = (images * outside).sum((3, 4, 5)) / (3 * outside.sum((3, 4, 5)))  # (B, S, C)
    image_rhat = torch.stack([split_rhat(s) for s in statistic])
    image_ess = torch.stack([effective_sample_size(s) for s in statistic])
    diag = chain.summary()

    print("Command: `python " + " ".join(shlex.quote(a) for a in ["benchmarks/gan.py", *sys.argv[1:]]) + "`")
    print(f"{args.inputs} held-out faces, patches {task.cfg.patch_min}-{task.cfg.patch_max} px at {task.cfg.resolution}x"
          f"{task.cfg.resolution} with noise std {task.cfg.patch_noise}; generator {g.architecture} ({g.space}, psi {g.psi}); "
          f"{n} latents per patch and method; {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| method | posterior ratio, patch | posterior ratio, outside | patch PSNR (dB) | diversity outside | latent norm | s / sample |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['ed_patch'] / floor['ed_patch']:.2f} | {r['ed_outside'] / floor['ed_outside']:.2f} | "
              f"{r['patch_psnr']:.2f} | {r['diversity']:.3f} | {r['norm_mean']:.2f} ± {r['norm_std']:.2f} | "
              f"{seconds.get(name, float('nan')):.3f} |")
    print(f"\nReference: HMC, {args.chains} chains per patch from prior draws, {args.leapfrog} leapfrog steps, {args.warmup} warm-up + {args.mcmc_steps} "
          f"kept steps, {chain.samples.shape[1]} draws per chain kept; floor energy distances {floor['ed_patch']:.4g} (patch), "
          f"{floor['ed_outside']:.4g} (outside). Diagnostics: acceptance {diag['accept_rate']:.2f}; split-R-hat of the noise "
          f"coordinates max {diag['rhat_max']:.3f} (median over patches of each patch's max {chain.rhat.amax(1).median():.3f}), "
          f"ESS min {diag['ess_min']:.0f}; of the image statistic R-hat max {image_rhat.max():.3f}, ESS min {image_ess.min():.0f} "
          f"(of {kept.shape[1] * kept.shape[2]} draws per patch). s / sample of HMC: all steps of one chain.")

    shown = {k: v[:4] for k, v in data.items()}
    docs = Path(args.docs)
    for file, lat in (("gan_samples", latents[f"DFM, DDIM {args.steps} steps"][:4, :8]), ("gan_posterior", exact[:4, :8]),
                      ("gan_inversions", latents[optimised][:4, :8])):
        print(f"wrote {save_image(task.grid(shown['ctxt_obs'], lat, shown['latent'], None), docs / f'{file}.png')}")


if __name__ == "__main__":
    main()
