"""examples/custom_forward_model.py: its pieces, and the whole script finding both posterior modes."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dfm import DFM
from dfm.training import load_checkpoint

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_forward_model.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("custom_forward_model", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the training itself is under `if __name__ == "__main__"`
    return module


def test_forward_model_renders_a_bump_where_the_point_projects(example):
    points = torch.tensor([[0.6, 0.8], [0.6, -0.8], [0.0, 1.0]])
    obs = example.render(points, torch.zeros(3))  # camera at theta=0 sees x
    assert obs.shape == (3, 16) and obs.min() >= -1 and obs.max() <= 1
    peak = example.PIXELS[obs.argmax(dim=1)]
    assert torch.allclose(peak, points[:, 0], atol=0.1)
    # the ambiguity the example is about: theta=0 cannot tell y = +0.8 from y = -0.8
    assert torch.equal(obs[0], obs[1])
    side = example.render(points, torch.full((3,), math.pi / 2))  # the camera along y can
    assert not torch.allclose(side[0], side[1])


def test_dataset_views_are_renders_of_one_hidden_point(example):
    data = example.RingViews(size=16, seed=3)
    item = data[5]
    assert set(item) == {"ctxt_obs", "trgt_obs", "novel_obs", "ctxt_params", "trgt_params", "novel_params"}
    point = data.points[5:6]
    assert torch.allclose(point.norm(), torch.tensor(1.0))
    for view in ("ctxt", "trgt", "novel"):
        torch.testing.assert_close(item[f"{view}_obs"], example.render(point, item[f"{view}_params"][None])[0])


def test_denoiser_and_dfm_wire_together(example):
    torch.manual_seed(0)
    data = example.RingViews(size=32)
    batch = torch.utils.data.default_collate([data[i] for i in range(32)])
    model = DFM(example.Denoiser(width=16), example.render, p_uncond=0.0)
    losses = model(batch, generator=torch.Generator().manual_seed(0))
    assert {"target", "novel", "loss"} == set(losses) and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    out = model.sample(batch["ctxt_obs"], batch["ctxt_params"], batch["trgt_params"], (32, 16), steps=3,
                       generator=torch.Generator().manual_seed(0))
    assert out.signal.shape == (32, 2) and out.observation.shape == (32, 16)
    torch.testing.assert_close(out.observation, example.render(out.signal, batch["trgt_params"]))


def test_example_script_finds_both_modes(tmp_path):
    """The whole script (1500 training steps; about 50 s on 2 CPU cores with one intra-op thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLE)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"within 0\.2 of \(0\.6, 0\.8\): ([\d.]+), of \(0\.6, -0\.8\): ([\d.]+)", proc.stdout)
    assert found, proc.stdout
    upper, lower = float(found.group(1)), float(found.group(2))
    # both modes, in roughly equal measure, and nearly every sample on one of them
    assert 0.25 < upper < 0.75 and 0.25 < lower < 0.75 and upper + lower > 0.8, (upper, lower)
    assert load_checkpoint(tmp_path / "outputs" / "example_ring").step == 1500
