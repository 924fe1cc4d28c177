"""The ``dfm`` command line, end to end: help, train, sample, resumption and failures.

Training runs in subprocesses (``python -m dfm``) with one intra-op thread: on a small shared machine
torch's default thread count can make these tiny runs many times slower.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import imageio.v3 as iio
import torch
from PIL import Image

from dfm.cli import main
from dfm.runs import load_trained
from dfm.training import latest_checkpoint, load_checkpoint
from dfm.training.lock import LOCK_FILE

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STEPS = 200
TINY = [
    "model.width=32", "model.depth=1", "dataset_size=4096", "sample.num_samples=50", "sample.steps=5",
    "train.batch_size=64", "train.preview_every=0", "train.progress=false", f"train.steps={STEPS}",
    "train.checkpoint_every=10",
]
SAMPLE_FILES = {"samples.png", "samples.pt", "trajectory.gif", "trajectory.mp4"}


def dfm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dfm", *args]


def run_dfm(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(dfm_cmd(*args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "toy_gmm", f"out_dir={out}", *TINY, *extra]


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime, but the run lock that each training rewrites: to show
    that nothing was written."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK_FILE
    }


def gif_durations(path: Path) -> list[int]:
    """Frame durations (ms) of a GIF; the writer merges identical consecutive frames into a longer one."""
    with Image.open(path) as im:
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
        return durations


def assert_trajectory(folder: Path, steps: int) -> None:
    """One frame per sampling step, the last one held for 12 more frames (merged into one in the GIF)."""
    durations = gif_durations(folder / "trajectory.gif")
    assert len(durations) == steps
    assert durations[-1] == pytest.approx(13 * durations[0], rel=0.05)
    frames = iio.imread(folder / "trajectory.mp4", plugin="FFMPEG")
    assert frames.shape[0] == steps + 12 and frames.shape[-1] == 3


@pytest.fixture
def one_thread():
    """In-process commands: one intra-op thread, as in the subprocesses."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished tiny run, trained through the CLI. Tests must not modify it (copy it instead)."""
    root = tmp_path_factory.mktemp("cli")
    out = root / "run"
    proc = run_dfm(*train_args(out), cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert f"trained {STEPS} steps" in proc.stdout
    return out


# -- help --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, needles",
    [
        ([], ["train", "sample", "demo", "data", "invert", "export", "built-in configs: gan_faces, motion_sprites, scenes_co3d, scenes_co3d_tiny, scenes_paper, scenes_re10k, scenes_re10k_tiny, scenes_synth3d, toy_gmm, toy_manifold", "train.steps=500"]),
        (["train"], ["key=value", "built-in", "--resume", "Unknown keys are an error", "tb/"]),
        (["sample"], ["checkpoint", "sample.steps=10", "--out", "EMA"]),
        (["demo"], ["--steps", "--out", "--config", "toy_gmm", "{toy,motion,gan,scenes}", "shipped checkpoint"]),
        (["data", "motion"], ["Vimeo90K", "--sequences", "--directions", "--frames {3,7}", "(default: 20000)"]),
        (["data", "synth3d"], ["posterior of that colour is uniform", "--scenes", "--colours", "cameras.json"]),
        (["invert"], ["inversion.steps", "Adam", "--out"]),
        (["export"], ["ema.safetensors", "config.json"]),
    ],
    ids=["dfm", "train", "sample", "demo", "data-motion", "data-synth3d", "invert", "export"],
)
def test_help_explains_each_command(capsys, argv, needles):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for needle in needles:
        assert needle in text, needle


def test_module_entry_point_help(tmp_path):
    proc = run_dfm("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "usage: dfm" in proc.stdout and "toy_gmm" in proc.stdout


def test_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2 and "COMMAND" in capsys.readouterr().err


# -- train and sample --------------------------------------------------------------------------------


def test_train_writes_checkpoints_tensorboard_and_samples(trained):
    ckpts = trained / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", f"step-{STEPS - 10:06d}", f"step-{STEPS:06d}"]
    ckpt = load_checkpoint(trained)
    assert ckpt.step == STEPS
    cfg = ckpt.config
    assert cfg["task"] == "toy" and cfg["model"]["width"] == 32 and cfg["train"]["steps"] == STEPS
    assert any(p.name.startswith("events.out.tfevents") for p in (trained / "tb").iterdir())

    samples = trained / "samples"
    assert {p.name for p in samples.iterdir()} == SAMPLE_FILES
    assert all((samples / name).stat().st_size > 0 for name in SAMPLE_FILES)
    data = torch.load(samples / "samples.pt")
    assert data["samples"].shape == (4, 50, 4) and data["exact"].shape == (4, 50, 4)
    assert torch.isfinite(data["samples"]).all() and data["ratio_signal"] > 0
    assert_trajectory(samples, 5)  # sample.steps=5
    with Image.open(samples / "samples.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100
    task, model = load_trained(trained)  # the checkpoint rebuilds its model
    assert task.cfg.model.width == 32 and not model.training


def test_sample_from_run_dir_with_overrides(trained, tmp_path, capsys, one_thread):
    before = listing(trained)
    out = tmp_path / "samples"
    assert main(["sample", str(trained), "sample.steps=3", "sample.num_samples=20", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == SAMPLE_FILES
    for name in SAMPLE_FILES:
        assert f"wrote {out / name}" in printed
    assert_trajectory(out, 3)  # the override reached the sampler
    assert torch.load(out / "samples.pt")["samples"].shape == (4, 20, 4)
    assert listing(trained) == before  # the run itself is untouched


def test_sample_missing_path(tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    assert main(["sample", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and err.startswith("dfm sample: error:")


def test_sample_truncated_weights(trained, tmp_path, capsys):
    import shutil

    ckpt = tmp_path / "step-000200"
    shutil.copytree(trained / "checkpoints" / f"step-{STEPS:06d}", ckpt)
    ema = ckpt / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[: ema.stat().st_size // 2])
    assert main(["sample", str(ckpt), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(ema) in err and "truncated" in err
    assert not (tmp_path / "out").exists()


def test_export_refuses_to_replace_what_it_did_not_write(trained, tmp_path, capsys, monkeypatch):
    """`dfm export RUN RUN` used to wipe the run; `dfm export RUN .` failed half-way. Now: a run, a non-empty
    folder or an earlier export without --force are refused with nothing changed; an empty cwd works."""
    before = listing(trained)
    assert main(["export", str(trained), str(trained)]) == 2
    assert "overlaps the checkpoint" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    assert main(["export", str(trained), "."]) == 0
    assert main(["export", str(trained), "."]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["export", str(trained), ".", "--force"]) == 0
    assert load_checkpoint(tmp_path / "empty", train_state=False).step == STEPS
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["config.json", "ema.safetensors"]
    assert main(["export", str(tmp_path / "empty"), str(trained), "--force"]) == 2
    assert "is a training run" in capsys.readouterr().err
    assert listing(trained) == before


def test_resume_from_a_checkpoint_of_another_run(trained, tmp_path):
    """--resume-from branches a new run from a checkpoint; training on to the same step reproduces it."""
    start = trained / "checkpoints" / f"step-{STEPS - 10:06d}"
    proc = run_dfm(*train_args(tmp_path / "branch", "--resume-from", str(start), "--no-samples"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    branched, original = load_checkpoint(tmp_path / "branch"), load_checkpoint(trained)
    assert branched.step == STEPS and all(torch.equal(branched.model_state[k], v) for k, v in original.model_state.items())


def test_train_zero_steps_says_nothing_was_written(tmp_path):
    proc = run_dfm(*train_args(tmp_path / "run", "train.steps=0"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "nothing trained, no checkpoint written" in proc.stdout and "checkpoints in" not in proc.stdout
    assert latest_checkpoint(tmp_path / "run") is None


def test_train_unknown_key_lists_valid_keys(tmp_path):
    proc = run_dfm(*train_args(tmp_path / "run", "train.stpes=5"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown key 'train.stpes'" in proc.stderr and "valid keys under 'train'" in proc.stderr
    assert "'steps'" in proc.stderr and "'batch_size'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_train_unknown_config_lists_builtins(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert main(["train", "toy_gmn"]) == 2
    assert "toy_gmm" in capsys.readouterr().err


def test_train_into_existing_run_refuses(trained, tmp_path):
    before = listing(trained)
    proc = run_dfm(*train_args(trained), cwd=tmp_path)
    assert proc.returncode != 0
    assert "already has checkpoints" in proc.stderr
    assert listing(trained) == before  # nothing overwritten, no samples rewritten
    assert proc.returncode == 2 and "--resume" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_finished_run_does_nothing(trained, tmp_path):
    before = listing(trained)
    proc = run_dfm(*train_args(trained, "--resume", "--no-samples"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"trained {STEPS} steps" in proc.stdout
    assert listing(trained) == before


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, after: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = latest_checkpoint(out)
        step = int(found.name.split("-")[1]) if found else 0
        if step > after:
            return step
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no checkpoint after step {after} within {timeout} s")


def test_interrupted_runs_resume_to_the_uninterrupted_result(trained, tmp_path):
    """SIGTERM stops with a checkpoint; SIGKILL leaves the last checkpoint; --resume then finishes and ends
    bit-identical to the run that was never interrupted."""
    out = tmp_path / "run"
    args = train_args(out, "--no-samples")

    # 1. SIGTERM: a clean stop with a checkpoint of the current step
    proc = subprocess.Popen(dfm_cmd(*args), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(proc, out, after=0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "stopped by SIGTERM at step" in err
    stopped = load_checkpoint(out).step
    assert 0 < stopped < STEPS and f"at step {stopped};" in err
    assert proc.returncode == 130 and "Traceback" not in err and "--resume" in err

    # 2. resumed, then SIGKILL after its next checkpoint
    proc = subprocess.Popen(dfm_cmd(*args, "--resume"), cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_after = wait_for_checkpoint(proc, out, after=stopped)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert killed_after < STEPS, "the run finished before it could be killed; raise STEPS"
    assert load_checkpoint(out).step >= killed_after  # whatever it got to is an intact checkpoint

    # 3. resumed to the end
    done = run_dfm(*args, "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"trained {STEPS} steps" in done.stdout
    final, reference = load_checkpoint(out), load_checkpoint(trained)
    assert final.step == STEPS
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    for name in ("model_state", "ema_state"):
        ours, ref = getattr(final, name), getattr(reference, name)
        assert ours.keys() == ref.keys()
        assert all(torch.equal(ours[k], ref[k]) for k in ref), name
    load_trained(out)


def test_same_config_trains_the_same_model(tmp_path, one_thread):
    for name in ("a", "b", "c"):
        seed = "train.seed=1" if name == "c" else "train.seed=0"
        assert main(train_args(tmp_path / name, "train.steps=3", seed, "--no-samples")) == 0
    a, b, c = (load_checkpoint(tmp_path / n).model_state for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    """A learning rate of 1e30 makes the second step's loss infinite; the first step's checkpoint stays."""
    out = tmp_path / "run"
    proc = run_dfm(*train_args(out, "train.lr=1e30", "train.checkpoint_every=1", "train.steps=10"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "non-finite values at step 2" in proc.stderr and "last checkpoint: step 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")] == ["step-000001"]
    ckpt = load_checkpoint(out)
    assert ckpt.step == 1
    assert all(torch.isfinite(t).all() for t in [*ckpt.model_state.values(), *ckpt.ema_state.values()])
    load_trained(out)
    assert not (out / "samples").exists()


def test_torchrun_two_processes_train_one_model(tmp_path):
    """The README's multi-process command with the default device="auto": one distributed run (gloo on
    a CPU-only machine), not two independent runs racing for the same checkpoints."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "dfm",
           *train_args(out, "train.steps=20", "--no-samples")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained 20 steps") == 1  # only the main process reports (and writes)
    assert load_checkpoint(out).train_state["data"]["processes"] == 2
