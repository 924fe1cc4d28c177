"""The motion and GAN applications through the command line, end to end, on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfm.generators import bundled_weights_path
from test_cli import run_dfm

MOTION_TINY = ["model.size=T", "model.width=32", "model.depth=1", "train.batch_size=8", "train.steps=6",
               "train.checkpoint_every=3", "train.preview_every=0", "train.progress=false",
               "sample.steps=3", "sample.num_samples=2", "sample_inputs=2"]
GAN_TINY = ["model.size=T", "model.width=32", "model.depth=1", "model.patch_size=4", "resolution=16",
            "patch_min=2", "patch_max=8", "train.batch_size=8", "train.steps=4", "train.preview_every=0",
            "train.progress=false", "sample.steps=3", "sample.num_samples=2", "sample_inputs=2"]


def test_motion_data_train_sample_export(tmp_path):
    data = tmp_path / "sprites"
    proc = run_dfm("data", "motion", "--out", str(data), "--sequences", "12", "--res", "16", "--max-radius", "5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((data / "generator.json").read_text())["resolution"] == 16
    assert len((data / "tri_trainlist.txt").read_text().split()) == 11  # 10% (at least one) held out

    run = tmp_path / "run"
    proc = run_dfm("train", "motion_sprites", f"data.root={data}", f"out_dir={run}", *MOTION_TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    samples = run / "samples"
    names = {p.name for p in samples.iterdir()}
    assert {"motions.png", "samples.pt"} <= names
    assert {f"input{i}_sample{j}.{ext}" for i in range(2) for j in range(2) for ext in ("gif", "mp4")} <= names

    exported = tmp_path / "exported"
    proc = run_dfm("export", str(run), str(exported), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in exported.iterdir()} == {"ema.safetensors", "config.json"}
    proc = run_dfm("sample", str(exported), "sample.num_samples=1", "--out", str(tmp_path / "again"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "again" / "motions.png").is_file()


def test_motion_without_data_says_how_to_make_it(tmp_path):
    proc = run_dfm("train", "motion_sprites", "data.root=nowhere", f"out_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "nowhere does not exist" in proc.stderr and "dfm data motion --out nowhere" in proc.stderr


def test_motion_data_with_a_missing_frame_names_it(tmp_path):
    data = tmp_path / "sprites"
    assert run_dfm("data", "motion", "--out", str(data), "--sequences", "6", "--res", "16", "--max-radius", "5", cwd=tmp_path).returncode == 0
    (data / "sequences" / "00001" / "0002" / "im2.png").unlink()
    proc = run_dfm("train", "motion_sprites", f"data.root={data}", f"out_dir={tmp_path / 'run'}", *MOTION_TINY, "train.batch_size=4", cwd=tmp_path)
    assert proc.returncode == 2
    assert "00001/0002/im2.png does not exist" in proc.stderr


def _have_weights() -> bool:
    try:
        return bundled_weights_path().is_file()
    except Exception:  # noqa: BLE001 - any failure means the package is absent
        return False


needs_weights = pytest.mark.skipif(not _have_weights(), reason="pip install --no-deps gan-face-generate")


@needs_weights
def test_gan_train_sample_and_invert(tmp_path):
    run = tmp_path / "run"
    proc = run_dfm("train", "gan_faces", f"out_dir={run}", *GAN_TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (run / "samples").iterdir()} == {"samples.png", "samples_native.png", "samples.pt"}

    proc = run_dfm("invert", "gan_faces", *GAN_TINY, "inversion.steps=3", "--out", str(tmp_path / "inv"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (tmp_path / "inv").iterdir()} == {"inversions.png", "inversions_native.png", "inversions.pt"}


def test_gan_with_a_missing_generator_file_names_it(tmp_path):
    proc = run_dfm("train", "gan_faces", "generator.path=missing.pt", f"out_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "generator weights not found: missing.pt" in proc.stderr


def test_invert_needs_a_task_with_a_baseline(tmp_path):
    proc = run_dfm("invert", "toy_gmm", cwd=tmp_path)
    assert proc.returncode == 2 and "no optimisation baseline" in proc.stderr


def test_synth3d_data_is_read_back(tmp_path):
    from dfm.data.synth3d import Synth3DSource

    proc = run_dfm("data", "synth3d", "--out", str(tmp_path / "s"), "--scenes", "4", "--res", "16", "--views", "4", "--colours", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    scenes = Synth3DSource(tmp_path / "s", "train")
    assert len(scenes) == 3 and scenes.load(0).images.shape == (4, 3, 16, 16)
    assert len(json.loads((tmp_path / "s" / "generator.json").read_text())["palette"]) == 3
    proc = run_dfm("data", "synth3d", "--out", str(tmp_path / "t"), "--colours", "9", cwd=tmp_path)
    assert proc.returncode == 2 and "--colours must be between 2 and 4" in proc.stderr


@pytest.mark.parametrize("application, files", [
    ("motion", {"motions.png", "samples.pt", "input0_sample0.gif", "input0_sample0.mp4"}),
    pytest.param("gan", {"samples.png", "samples_native.png", "samples.pt"}, marks=needs_weights),
    ("scenes", {"input0.png", "input0.pt", "input0_sample0.gif", "input0_sample0.mp4", "input0_sample1.ply"}),
])
def test_demo_samples_with_the_shipped_checkpoint(tmp_path, application, files):
    out = tmp_path / "demo"
    proc = run_dfm("demo", application, "--out", str(out), "sample.steps=3", "sample.num_samples=2", "sample_inputs=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert files <= {p.name for p in (out / "samples").iterdir()}
