"""A small campaign against the guarantees of the README's reliability paragraph, as a user would break
things: ``kill -9`` at random moments (one of them certainly mid-save), two trainings started at once into
one run, a malicious pickle in every file the project loads, and NaN injected through the learning rate,
the weights and the sampling options.

Every command runs in a subprocess with one thread (``python -m dfm``), like the CLI tests.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dfm.cli import main
from dfm.config import ConfigError, read_yaml
from dfm.data.sprites import SpriteMotion
from dfm.data.sprites import write_dataset as write_sprites
from dfm.data.synth3d import Synth3D, Synth3DSource, read_cameras
from dfm.data.synth3d import write_dataset as write_synth3d
from dfm.data.vimeo import DatasetError, Vimeo90K
from dfm.generators import GeneratorError, load_generator
from dfm.networks.lpips import LPIPS, LPIPSWeightsError
from dfm.training import CheckpointError, latest_checkpoint, load_checkpoint
from dfm.training.checkpoint import step_dirs

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = [
    "model.width=256", "model.depth=2", "dataset_size=2048", "sample.num_samples=20", "sample.steps=3",
    "train.batch_size=64", "train.preview_every=0", "train.progress=false", "train.log_every=10",
]


def dfm(*args: str) -> list[str]:
    return [sys.executable, "-m", "dfm", *args]


def train_args(out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "toy_gmm", f"out_dir={out}", *TINY, f"train.steps={steps}", "--no-samples", *extra]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(dfm(*args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def every_checkpoint_loads(out: Path) -> list[int]:
    steps = []
    for step, path in step_dirs(out / "checkpoints"):
        ckpt = load_checkpoint(path)  # raises on anything incomplete, corrupt or non-finite
        assert ckpt.step == step
        steps.append(step)
    return steps


def wait_until(condition, proc: subprocess.Popen, timeout: float = 120, poll: float = 0.001) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll)


def saving(out: Path) -> bool:
    try:
        return any(name.startswith(".tmp-step-") for name in os.listdir(out / "checkpoints"))
    except FileNotFoundError:
        return False


def test_kill_9_at_random_moments_never_leaves_a_checkpoint_that_fails(tmp_path):
    """Four kills: two the moment a save has begun (its hidden directory exists), two after a random
    delay (during start-up, training or a save). After each, every checkpoint loads; --resume finishes."""
    out, steps, rng = tmp_path / "run", 150, random.Random(0)
    args = train_args(out, steps, "train.checkpoint_every=1", "--resume")
    mid_save = 0
    for attempt in range(4):
        proc = subprocess.Popen(dfm(*args), cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if attempt % 2 == 0:
            wait_until(lambda: saving(out), proc)
        else:
            time.sleep(rng.uniform(1.5, 4.0))
        mid_save += saving(out)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        every_checkpoint_loads(out)
    assert mid_save >= 2  # the hidden directory of a save in progress was there when the kill came
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert every_checkpoint_loads(out)[-1] == steps
    assert not saving(out)  # the leftovers of the killed saves were cleaned up


def test_two_trainings_started_at_once_into_one_run(tmp_path):
    """One trains; the other stops at once with a message naming the holder, and deletes nothing."""
    out = tmp_path / "run"
    procs = [
        subprocess.Popen(dfm(*train_args(out, 100_000, "train.checkpoint_every=50")), cwd=tmp_path, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    wait_until(lambda: any(p.poll() is not None for p in procs), procs[0], poll=0.05)
    loser = next(p for p in procs if p.poll() is not None)
    winner = next(p for p in procs if p is not loser)
    _, err = loser.communicate()
    assert loser.returncode == 2 and "Traceback" not in err
    assert f"{out} is in use by another training (pid {winner.pid} on" in err
    wait_until(lambda: latest_checkpoint(out) is not None, winner, poll=0.05)
    winner.send_signal(signal.SIGTERM)
    _, err = winner.communicate(timeout=120)
    assert winner.returncode == 130, err
    assert every_checkpoint_loads(out)


class Payload:
    """Unpickling this runs ``os.mkdir(marker)``: the evidence that a loader executed pickled code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("campaign") / "run"
    proc = run(*train_args(out, 20, "train.checkpoint_every=10"), cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_malicious_pickle_in_every_file_the_project_loads(trained, tmp_path):
    """Each loader gets the payload as a torch.save'd object, a raw pickle or a pickled .npy (whichever its
    file could hold), and fails with its own error without running it."""
    marker = tmp_path / "pwned"
    torch_pickle, raw_pickle = tmp_path / "torch.pt", tmp_path / "raw.pkl"
    torch.save(Payload(marker), torch_pickle)
    raw_pickle.write_bytes(pickle.dumps(Payload(marker)))
    evil = [torch_pickle.read_bytes(), raw_pickle.read_bytes()]

    ckpt = latest_checkpoint(trained)
    scenes = write_synth3d(tmp_path / "synth3d", Synth3D(resolution=8, views=3), scenes=2, test_fraction=0.5, progress=False)
    scene = scenes / "scenes" / "000001"
    sprites = write_sprites(tmp_path / "sprites", SpriteMotion(resolution=16), sequences=2, test_fraction=0.5, progress=False)
    frame = next((sprites / "sequences").rglob("im1.png"))
    files = {  # file -> (how it is loaded, the error it must raise)
        ckpt / "state.pt": (lambda: load_checkpoint(ckpt), CheckpointError),
        ckpt / "model.safetensors": (lambda: load_checkpoint(ckpt), CheckpointError),
        ckpt / "ema.safetensors": (lambda: load_checkpoint(ckpt, train_state=False), CheckpointError),
        ckpt / "config.json": (lambda: load_checkpoint(ckpt, train_state=False), CheckpointError),
        tmp_path / "generator.pt": (lambda: load_generator(tmp_path / "generator.pt"), GeneratorError),
        tmp_path / "vgg.pth": (lambda: LPIPS.from_files(tmp_path / "vgg.pth", tmp_path / "vgg.pth"), LPIPSWeightsError),
        scene / "cameras.json": (lambda: read_cameras(scene / "cameras.json"), DatasetError),
        scene / "depth.npy": (lambda: Synth3DSource(scenes).load(0), DatasetError),
        scene / "images" / "000.png": (lambda: Synth3DSource(scenes).load(0), DatasetError),
        frame: (lambda: Vimeo90K(sprites)[0], DatasetError),
    }
    for path, (load, error) in files.items():
        original = path.read_bytes() if path.exists() else None
        for payload in evil:
            path.write_bytes(payload)
            with pytest.raises(error):
                load()
            assert not marker.exists(), f"{path}: the payload ran"
        if original is not None:
            path.write_bytes(original)
    np.save(scene / "depth.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="depth.npy"):
        Synth3DSource(scenes).load(0)
    config = tmp_path / "evil.yaml"
    config.write_text(f"task: toy\ntrain:\n  seed: !!python/object/apply:os.mkdir ['{marker}']\n")
    with pytest.raises(ConfigError):
        read_yaml(config)
    assert main(["train", str(config), f"out_dir={tmp_path / 'x'}"]) == 2
    assert not marker.exists()


def test_nan_injection(trained, tmp_path, capsys):
    """A learning rate that overflows the weights, a NaN in the shipped weights, a NaN sampling option:
    each stops with a message and a non-zero exit, and nothing non-finite is written."""
    out = tmp_path / "overflow"
    proc = run(*train_args(out, 20, "train.lr=1e39", "train.warmup_steps=0", "train.checkpoint_every=1"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "non-finite weights after step 1" in proc.stderr and "Lower train.lr" in proc.stderr
    assert latest_checkpoint(out) is None

    run_copy = shutil.copytree(trained, tmp_path / "run")
    ema = latest_checkpoint(run_copy) / "ema.safetensors"
    weights = load_file(ema)
    name = next(iter(weights))
    weights[name].view(-1)[0] = float("nan")  # one flipped exponent is enough
    save_file(weights, ema)
    samples = tmp_path / "samples"
    assert main(["sample", str(ema.parent), "--out", str(samples)]) == 2
    err = capsys.readouterr().err
    assert str(ema) in err and "non-finite" in err and not samples.exists()

    assert main(["sample", str(run_copy), "sample.guidance=nan", "--out", str(samples)]) == 2
    assert "sample.guidance" in capsys.readouterr().err and not samples.exists()
