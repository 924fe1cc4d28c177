"""The 3-D task on the real datasets' layouts, end to end through the CLI: the procedural scenes written
as Co3D v2 and as RealEstate10k (both layouts), checked, trained with the tiny configs, and sampled
autoregressively; and `dfm data check` on a damaged copy."""

from __future__ import annotations

import json
import shutil

import pytest

from test_cli import run_dfm

LAYOUTS = {"co3d": ("scenes_co3d_tiny", "co3d", ["--category", "synth3d"]),
           "re10k-txt": ("scenes_re10k_tiny", "re10k", []), "re10k-torch": ("scenes_re10k_tiny", "re10k", [])}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def written(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param) / "data"
    proc = run_dfm("data", "synth3d", "--layout", request.param, "--out", str(root), "--scenes", "4", "--res", "16",
                   "--views", "8", "--test-fraction", "0.25", "--seed", "3", cwd=root.parent)
    assert proc.returncode == 0, proc.stderr
    return request.param, root


def test_check_reports_the_scenes_and_prints_one_as_loaded(written, tmp_path):
    layout, root = written
    _, source, options = LAYOUTS[layout]
    proc = run_dfm("data", "check", source, str(root), "--resolution", "16", *options, "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 scenes listed, 3 read with 24 views, 0 with problems" in proc.stdout
    assert (tmp_path / f"{source}_000001.png").stat().st_size > 0
    proc = run_dfm("data", "check", source, str(root), "--resolution", "16", *options, "--scene", "000002", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    scene = json.loads(proc.stdout)
    assert scene["scene"] == "000002" and scene["image_size"] == [16, 16] and len(scene["c2w"]) == len(scene["K"]) == 8
    assert scene["near"] < scene["far"]


def test_check_names_every_damaged_file(written, tmp_path):
    layout, root = written
    _, source, options = LAYOUTS[layout]
    copy = shutil.copytree(root, tmp_path / "copy")
    if layout == "co3d":
        damaged = next((copy / "synth3d" / "000002" / "images").iterdir())
        damaged.write_bytes(b"not an image")
    elif layout == "re10k-txt":
        damaged = next((copy / "train" / "000002").iterdir())
        damaged.write_bytes(b"not an image")
    else:
        damaged = sorted((copy / "train").glob("*.torch"))[-1]
        damaged.write_bytes(damaged.read_bytes()[:100])
    proc = run_dfm("data", "check", source, str(copy), "--resolution", "16", *options, "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode != 0 and str(damaged) in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


def test_tiny_config_trains_and_samples_autoregressively(written, tmp_path):
    layout, root = written
    config, *_ = LAYOUTS[layout]
    run = tmp_path / "run"
    proc = run_dfm("train", config, f"data.root={root}", f"out_dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "trained 4 steps" in proc.stdout
    files = {p.name for p in (run / "samples").iterdir()}
    assert {"input0.png", "input0.pt", "input0_sample0.gif", "input0_sample1.ply"} <= files
    proc = run_dfm("sample", str(run), "autoregressive_views=3", "--out", str(tmp_path / "again"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
