"""`dfm eval`: the unseen region from depths against Synth3D's exact hidden side, and the command end to end
on the shipped checkpoint (synth3d protocol) and on the Co3D / RealEstate10k fixtures (tiny runs)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dfm.cli import PRETRAINED
from dfm.data.synth3d import Synth3D, Synth3DSource, render, write_dataset
from dfm.metrics import InceptionFeatures
from dfm.tasks.scenes.evaluation import unseen_region
from test_cli import run_dfm


def test_unseen_region_from_depths_is_the_hidden_side(tmp_path):
    """For a convex object seen from view 0, what view V/2 sees and view 0 does not is exactly the side
    facing away from view 0: Synth3D's hidden mask."""
    root = write_dataset(tmp_path, Synth3D(resolution=48, views=8), scenes=3, test_fraction=0.34, progress=False)
    source = Synth3DSource(root, "train")
    for i in range(len(source)):
        scene, meta = source.load(i), source.meta(i)
        unseen = unseen_region(scene, 4)
        hidden = render(meta, scene.c2w[4:5], scene.K[4:5], 48, 48).hidden_mask[0]
        iou = (unseen & hidden).sum() / (unseen | hidden).sum()
        assert iou > 0.9, float(iou)
    no_depth = source.load(0)
    no_depth.depths = None
    assert unseen_region(no_depth, 4) is None


def test_eval_on_the_shipped_checkpoint_resumes_and_reports(tmp_path):
    data = write_dataset(tmp_path / "data", Synth3D(resolution=32), scenes=4, test_fraction=0.5, progress=False)
    out = tmp_path / "eval"
    args = ["eval", str(PRETRAINED / "scenes_synth3d"), "--protocol", "synth3d", "--scenes", "2", "--samples", "2",
            "--steps", "2", "--out", str(out), f"data.root={data}"]
    proc = run_dfm(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "metrics.json").read_text())
    assert {"target_psnr", "target_ssim", "best_psnr", "context_psnr", "novel_psnr", "diversity", "on_palette"} <= set(report["metrics"])
    assert report["metrics"]["best_psnr"] >= report["metrics"]["target_psnr"] and report["scenes"] == 2
    md = (out / "metrics.md").read_text()
    assert "dfm eval" in md and "--protocol synth3d" in md and "FID and KID left out" in md and "Machine:" in md
    assert (out / "samples.png").is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()}
    assert len(stamps) == 2
    again = run_dfm(*args, cwd=tmp_path)  # resumes: nothing is sampled again, the same numbers come out
    assert again.returncode == 0, again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()} == stamps
    assert json.loads((out / "metrics.json").read_text())["metrics"] == report["metrics"]
    # FID and KID with an Inception weight file (random weights saved in the file's layout: this checks the
    # path, not the values); the samples on disk are reused
    weights = tmp_path / "inception.pth"
    torch.save(InceptionFeatures().state_dict(), weights)
    proc = run_dfm(*args, "--inception", str(weights), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    scored = json.loads((out / "metrics.json").read_text())["metrics"]
    assert scored["fid"] >= 0 and math.isfinite(scored["kid"]) and scored["target_psnr"] == report["metrics"]["target_psnr"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()} == stamps
    wrong = run_dfm("eval", str(PRETRAINED / "scenes_synth3d"), "--protocol", "co3d", f"data.root={data}", cwd=tmp_path)
    assert wrong.returncode == 2 and "reads co3d data" in wrong.stderr


@pytest.mark.parametrize("layout, config, protocol, options", [
    ("co3d", "scenes_co3d_tiny", "co3d-masked", []),
    ("re10k-torch", "scenes_re10k_tiny", "re10k", []),
])
def test_eval_on_the_real_layouts(tmp_path, layout, config, protocol, options):
    data = tmp_path / "data"
    proc = run_dfm("data", "synth3d", "--layout", layout, "--out", str(data), "--scenes", "4", "--res", "16", "--views", "8",
                   "--test-fraction", "0.5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    proc = run_dfm("train", config, f"data.root={data}", f"out_dir={run}", "train.steps=2", "--no-samples", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_dfm("eval", str(run), "--protocol", protocol, "--scenes", "2", "--samples", "2", "--steps", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((run / f"eval-{protocol}" / "metrics.json").read_text())
    assert {"target_psnr", "context_psnr", "diversity"} <= set(report["metrics"]) and report["quoted"]
    assert all(torch.isfinite(torch.tensor(v)) for v in report["metrics"].values())
    assert ("diversity_unseen" in report["metrics"]) == (layout == "co3d")  # depths only in Co3D
    assert "[quoted]" in (run / f"eval-{protocol}" / "metrics.md").read_text()
