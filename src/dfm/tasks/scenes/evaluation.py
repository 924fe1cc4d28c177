"""``dfm eval``: score a trained 3-D run the way the paper reports it, with the measures it lacks.

A *protocol* fixes the data and the views. For each of ``scenes`` test scenes the run samples ``samples``
scenes one-shot from the context (view 0, the first frame of a test sequence), diffusing the task's
one-shot view (Synth3D: the view opposite the context, which shows the hidden side; Co3D and
RealEstate10k: ``data.views.max_gap`` frames on, as far as the sequence goes; the paper's supplement
does not list its exact frames, so this choice is ours), and renders every sample at that view and at
the context camera. Scored, per protocol:

- ``target`` PSNR / SSIM / LPIPS of the sampled view against the true one (mean over samples and
  scenes), and best-of-k PSNR (the best of a scene's samples: an oracle, as Liao et al. 2025 report);
- ``context`` PSNR: the sampled scene re-rendered at the context camera (does it keep the input?);
- FID / KID between the sampled views and the true ones (every sample against every true view), with
  the Inception network of :mod:`dfm.metrics.inception` from the user's weight file;
- diversity: the mean pairwise distance between a scene's samples (LPIPS with its weights, else the
  mean absolute pixel difference), on the whole view and on the region the context does not see
  (Synth3D: the hidden side, exactly; sources with depth: target pixels whose surface point, from the
  true depth, projects outside the context view or behind its depth; without depth: not reported);
- Synth3D only, where the posterior is known: on-palette rate and the total variation distance of the
  palette colours to uniform (see ``benchmarks/scenes.py``), and novel PSNR at the views next to the context.

``co3d-masked`` scores only the object: true and sampled views are multiplied by the true mask (black
elsewhere), as Liao et al. 2025 evaluated the published model. Images are compared in [0, 1].

Samples are kept in ``OUT/samples/<scene>.pt``, so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import platform
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from dfm import metrics
from dfm.cameras import depth_points, project
from dfm.data.multiview import MultiViewScene
from dfm.model import DFM
from dfm.networks.lpips import load_lpips
from dfm.tasks.scenes import ScenesTask, render_views, sample_scene, scene_grid
from dfm.visualize import save_image

PALETTE_TOLERANCE = 0.1  # max RGB difference in [0, 1] for a hidden-side pixel to match a palette colour
ON_PALETTE = 0.8  # share of hidden-side pixels that must match


@dataclass(frozen=True)
class Protocol:
    source: str  # the data source the run must read
    scenes: int  # the paper's number of test scenes (the default of --scenes)
    masked: bool = False  # score only the object, under the true mask
    quoted: dict[str, dict[str, float]] = field(default_factory=dict)  # the paper's numbers, as quoted


PROTOCOLS = {
    "synth3d": Protocol("synth3d", 50),
    "co3d": Protocol("co3d", 50, quoted={
        "DFM (paper, 128x128)": {"target_psnr": 17.47, "target_lpips": 0.42, "fid": 84.63, "kid": 0.05},
        "pixelNeRF (as quoted by the paper)": {"target_psnr": 17.93, "target_lpips": 0.54, "fid": 180.2, "kid": 0.14},
    }),
    "co3d-masked": Protocol("co3d", 50, masked=True, quoted={
        "DFM (published model, Liao et al. 2025)": {"target_psnr": 23.37, "target_lpips": 0.133, "fid": 60.1, "kid": 0.029},
    }),
    "re10k": Protocol("re10k", 100, quoted={
        "DFM (paper, 128x128)": {"fid": 42.84, "kid": 0.01},
        "pixelNeRF (as quoted by the paper)": {"fid": 195.4, "kid": 0.14},
        "SparseFusion (as quoted by the paper)": {"fid": 99.44, "kid": 0.04},
    }),
}
COLUMNS = {  # key -> (heading, format)
    "target_psnr": ("PSNR", ".2f"), "target_ssim": ("SSIM", ".3f"), "target_lpips": ("LPIPS", ".3f"),
    "best_psnr": ("best-of-k PSNR", ".2f"), "context_psnr": ("context PSNR", ".2f"), "novel_psnr": ("novel PSNR", ".2f"),
    "fid": ("FID", ".2f"), "kid": ("KID", ".4f"), "diversity": ("diversity", ".4f"),
    "diversity_unseen": ("diversity, unseen", ".4f"), "on_palette": ("on-palette", ".2f"), "palette_tv": ("TV to uniform", ".3f"),
    "median_share": ("median share", ".2f"),
}


def unseen_region(scene: MultiViewScene, target: int, context: int = 0, tolerance: float = 0.02) -> Tensor | None:
    """``(1, H, W)`` bool: target pixels whose surface point (from the true depth) the context view does
    not see: outside its image, or behind its own depth there; None without depths."""
    if scene.depths is None:
        return None
    h, w = scene.images.shape[-2:]
    z = scene.depths[target].flatten()
    points = depth_points(scene.depths[target, 0], scene.c2w[target], scene.K[target])  # (h w, 3)
    uv, depth = project(points, scene.c2w[context], scene.K[context])  # normalised coordinates, z-depth
    inside = (uv >= 0).all(-1) & (uv < 1).all(-1) & (depth > 0)
    col, row = (uv[:, 0] * w).long().clamp(0, w - 1), (uv[:, 1] * h).long().clamp(0, h - 1)
    seen_depth = scene.depths[context, 0, row, col]
    visible = inside & (seen_depth > 0) & (depth <= seen_depth * (1 + tolerance))
    return ((z > 0) & ~visible).view(1, h, w)


def palette_match(samples: Tensor, meta: dict, c2w: Tensor, K: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """Synth3D: for each sampled view ``(N, 3, H, W)``: the palette colour whose recoloured render matches
    the most hidden-side pixels, that share ``(N,)``, and the hidden-side mask; None without a hidden side."""
    from dfm.data.synth3d import render

    h, w = samples.shape[-2:]
    renders = [render(meta, c2w[None], K[None], h, w, hidden_colour=k) for k in range(len(meta["palette"]))]
    hidden = renders[0].hidden_mask[0, 0]
    if hidden.sum() < 10:
        return None
    shares = torch.stack([
        (((samples - r.images[0]).abs().amax(1) / 2 <= PALETTE_TOLERANCE) & hidden).sum((1, 2)) / hidden.sum() for r in renders
    ], 1)  # (N, K)
    best = shares.max(1)
    return best.indices, best.values, hidden[None]


def sample_or_resume(
    model: DFM, task: ScenesTask, scene: MultiViewScene, views: list[int], path: Path, samples: int, seed: int, sampler: dict,
) -> Tensor:
    """The scene's samples (one-shot at :meth:`ScenesTask.one_shot_view`) rendered at ``views``
    ``(K, len(views), 3, H, W)``, from ``path`` when an earlier run with the same settings wrote it."""
    settings = {"samples": samples, "seed": seed, "views": views, **{k: v for k, v in sampler.items() if k != "progress"}}
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved["settings"] == settings:
            return saved["rendered"]
    sample = sample_scene(model, *task.context_of(scene), task.target_camera(scene), samples, seed=seed, **sampler)
    rendered = render_views(model, sample, scene.c2w[views], scene.K[views], scene.images.shape[-1])["rgb"]
    out = {"settings": settings, "rendered": rendered}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(out, tmp)
    tmp.replace(path)  # a killed evaluation never leaves a half-written sample file
    return rendered


def evaluate(
    model: DFM, task: ScenesTask, protocol: str, out: Path, scenes: int | None = None, samples: int = 8, seed: int = 0,
    sampler: dict | None = None, inception: str | None = None, progress: bool = True,
) -> dict:
    """Score ``model`` under ``protocol`` (``PROTOCOLS``); returns the metrics (means) and notes on what was left out."""
    p = PROTOCOLS[protocol]
    if task.cfg.data.source != p.source:
        raise ValueError(f"protocol {protocol!r} reads {p.source} data; this run's data.source is {task.cfg.data.source!r}")
    if p.masked and task.cfg.data.source != "co3d":
        raise ValueError("the masked protocol needs Co3D's object masks")
    source = task.source("test")
    count = min(scenes or p.scenes, len(source))
    sampler = dict(sampler or {})
    lp = task.cfg.lpips
    lpips = load_lpips(lp.backbone_path, lp.linear_path, lp.backbone) if lp.backbone_path and lp.linear_path else None
    notes = []
    if lpips is None:
        notes.append("LPIPS left out (no lpips.backbone_path / lpips.linear_path); diversity is the mean absolute pixel difference")
    scores: dict[str, list] = {k: [] for k in ("target_psnr", "target_ssim", "target_lpips", "best_psnr", "context_psnr",
                                               "novel_psnr", "diversity", "diversity_unseen")}
    fake, real, palette, grid = [], [], [], []
    for i in tqdm(range(count), desc=f"eval {protocol}", disable=not progress):
        scene = source.load(i)
        target = task.one_shot_view(scene)
        novel = [v for v in (1, len(scene.c2w) - 1) if v not in (0, target)] if p.source == "synth3d" else []
        views = sorted({0, target, *novel})  # rendered: the context, the target and (Synth3D) its neighbours
        path = out / "samples" / f"{scene.scene_id}.pt"
        rendered = sample_or_resume(model, task, scene, views, path, samples, seed + i, sampler)  # (K, v, 3, H, W)
        pred, truth = rendered[:, views.index(target)], scene.images[target]
        if p.masked:
            mask = scene.masks[target].float()
            pred, truth = (pred + 1) * mask - 1, (truth + 1) * mask - 1
        psnr = metrics.psnr(pred, truth.expand_as(pred))
        scores["target_psnr"].append(psnr.mean())
        scores["best_psnr"].append(metrics.best_of_k(pred, truth, metrics.psnr))
        scores["target_ssim"].append(metrics.ssim(pred, truth.expand_as(pred)).mean())
        if lpips is not None:
            scores["target_lpips"].append(metrics.lpips_distance(lpips, pred, truth.expand_as(pred)).mean())
        scores["context_psnr"].append(metrics.psnr(rendered[:, views.index(0)], scene.images[0].expand_as(pred)).mean())
        distance = (lambda a, b: metrics.lpips_distance(lpips, a, b)) if lpips is not None else None
        if len(pred) > 1:
            scores["diversity"].append(metrics.pairwise_diversity(pred, distance))
        unseen = None
        if p.source == "synth3d":
            meta = source.meta(i)
            found = palette_match(pred, meta, scene.c2w[target], scene.K[target])
            if found is not None:
                palette.append(found[:2])
                unseen = found[2]
            for v in novel:
                scores["novel_psnr"].append(metrics.psnr(rendered[:, views.index(v)], scene.images[v].expand_as(pred)).mean())
        else:
            unseen = unseen_region(scene, target)
        if unseen is not None and unseen.any() and len(pred) > 1:
            scores["diversity_unseen"].append(metrics.pairwise_diversity(pred, None, mask=unseen))
        fake.append(pred)
        real.append(truth[None])
        if i < 3:
            grid.append(scene_grid(scene.images[[0, target]], rendered[:8, [views.index(0), views.index(target)]]))
    result = {k: float(torch.stack([torch.as_tensor(x, dtype=torch.float64) for x in v]).mean()) for k, v in scores.items() if v}
    if palette:
        colours, shares = torch.cat([c for c, _ in palette]), torch.cat([s for _, s in palette])
        on = shares >= ON_PALETTE
        k = len(source.meta(0)["palette"])
        result["on_palette"] = on.double().mean().item()
        result["median_share"] = shares.median().item()  # a diagnostic: how close the typical sample comes
        if on.any():
            freq = torch.bincount(colours[on], minlength=k).double() / on.sum()
            result["palette_tv"] = 0.5 * (freq - 1 / k).abs().sum().item()
    if inception is None:
        notes.append("FID and KID left out (no --inception weight file: pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")
    else:
        extractor = metrics.InceptionFeatures.from_file(inception).to(next(model.parameters()).device)
        a, b = metrics.image_features(extractor, torch.cat(real)), metrics.image_features(extractor, torch.cat(fake))
        result["fid"] = metrics.fid_from_features(a, b)  # equal to torchmetrics' on the same features (tested)
        result["kid"] = metrics.kid_from_features(a, b)[0]
    if grid:
        save_image(np.concatenate(grid, 0), out / "samples.png")
    return {"metrics": result, "notes": notes, "scenes": count, "samples": samples}


def machine() -> str:
    device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine()
    return f"{device}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, {platform.platform()}"


def write_report(report: dict, protocol: str, run: str, out: Path, argv: list[str]) -> list[Path]:
    """``metrics.json`` and ``metrics.md``: the run's row beside the paper's quoted rows, with the command and the machine."""
    command = "dfm " + " ".join(shlex.quote(a) for a in argv)
    rows = {f"this run ({run})": report["metrics"], **{f"{name} [quoted]": v for name, v in PROTOCOLS[protocol].quoted.items()}}
    keys = [k for k in COLUMNS if any(k in r for r in rows.values())]
    lines = [
        f"# `dfm eval` — protocol {protocol}", "",
        f"{report['scenes']} test scenes, {report['samples']} samples each; command: `{command}`", "",
        f"Machine: {machine()}", "",
        "| model | " + " | ".join(COLUMNS[k][0] for k in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for name, r in rows.items():
        cells = [format(r[k], COLUMNS[k][1]) if k in r and math.isfinite(r[k]) else "" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Rows marked [quoted] are numbers quoted from the papers, not measured here.", *[f"- {n}" for n in report["notes"]]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.md").write_text("\n".join(lines) + "\n")
    (out / "metrics.json").write_text(json.dumps({**report, "protocol": protocol, "run": run, "command": command,
                                                  "machine": machine(), "quoted": PROTOCOLS[protocol].quoted}, indent=2) + "\n")
    return [out / "metrics.md", out / "metrics.json"]

