"""Mixed precision: what runs in bf16, what stays fp32, and bf16 training/sampling against fp32."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_trainer import CONFIG, Items, Regression, states_equal

from dfm.precision import autocast, check_precision, full_precision, to_fp32
from dfm.rendering import composite
from dfm.runs import task_from_config, train
from dfm.tasks.base import SampleConfig
from dfm.tasks.toy import held_out, sample_signals
from dfm.training import TrainConfig, Trainer, load_checkpoint


def test_full_precision_runs_in_fp32_under_autocast():
    @full_precision
    def f(x, y=None):
        return x @ x.T, y

    x = torch.randn(4, 4).bfloat16()
    with autocast("bf16", "cpu"):
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.bfloat16  # autocast is on ...
        out, y = f(x, y=x)
    assert out.dtype == y.dtype == torch.float32  # ... but not inside, and half inputs arrive as fp32
    torch.testing.assert_close(out, x.float() @ x.float().T)


def test_to_fp32_reaches_every_tensor_of_a_signal():
    from dataclasses import dataclass
    from functools import partial
    from typing import NamedTuple

    class Pair(NamedTuple):
        a: torch.Tensor
        b: list

    @dataclass
    class Box:
        x: torch.Tensor
        name: str = "box"

    half = torch.ones(2, dtype=torch.bfloat16)
    signal = Pair(half, [half, {"k": half, "i": torch.ones(2, dtype=torch.long)}])
    out = to_fp32((signal, Box(half), partial(torch.add, half, other=half), torch.ones(1, dtype=torch.float64)))
    (pair, box, bound, double) = out
    assert isinstance(pair, Pair) and pair.a.dtype == pair.b[0].dtype == pair.b[1]["k"].dtype == torch.float32
    assert pair.b[1]["i"].dtype == torch.long and double.dtype == torch.float64  # only half types change
    assert isinstance(box, Box) and box.x.dtype == torch.float32 and box.name == "box"
    assert bound().dtype == torch.float32 and bound.keywords["other"].dtype == torch.float32


def test_compositing_stays_fp32_under_bf16():
    """Transmittance over 64 samples of a thin medium: in bf16 it would be off by ~1e-2."""
    g = torch.Generator().manual_seed(0)
    density = (torch.rand(8, 64, 1, generator=g) * 0.5).bfloat16()
    rgb = torch.rand(8, 64, 3, generator=g).bfloat16()
    t = torch.linspace(1, 5, 64).expand(8, 64)[..., None]
    deltas = torch.full_like(t, 4 / 64)
    with autocast("bf16", "cpu"):
        out = composite(density, {"rgb": rgb}, deltas, t)
    exact = composite(density.float(), {"rgb": rgb.float()}, deltas, t)
    for name in ("rgb", "transmittance", "depth"):
        assert out[name].dtype == torch.float32
        torch.testing.assert_close(out[name], exact[name])


def test_fp16_needs_cuda_and_unknown_precisions_are_refused(tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        check_precision("fp16", "cpu", "train.precision")
    with pytest.raises(ValueError, match="train.precision must be one of"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="sample.precision must be one of"):
        SampleConfig(precision="half")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        Trainer(Regression(), Items(), replace(CONFIG, precision="fp16"), tmp_path / "run")
    task = task_from_config("toy_gmm", ["model.width=16", "model.depth=1"])
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        sample_signals(task.build_model(training=False), held_out(task.problem, 2, 4), steps=2, precision="fp16")


def test_a_bf16_run_checkpoints_and_resumes_exactly(tmp_path):
    cfg = replace(CONFIG, precision="bf16")
    Trainer(Regression(), Items(), cfg, tmp_path / "straight").fit()
    Trainer(Regression(), Items(), replace(cfg, steps=20), tmp_path / "split").fit()
    Trainer(Regression(), Items(), cfg, tmp_path / "split").fit(resume=True)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert a.step == b.step == cfg.steps
    assert states_equal(a.model_state, b.model_state) and states_equal(a.ema_state, b.ema_state)
    assert a.train_state["train_config"]["precision"] == "bf16"


def toy_run(tmp_path, precision: str):
    task = task_from_config("toy_gmm", [
        f"out_dir={tmp_path / precision}", "model.width=64", "model.depth=2", "train.steps=300", "train.batch_size=128",
        "train.warmup_steps=20", "train.checkpoint_every=0", "train.log_every=100", f"train.precision={precision}",
    ])
    trainer, stats = train(task, progress=False)
    return stats["loss"], task, trainer.ema_model.eval()


def test_bf16_toy_training_and_sampling_follow_fp32(tmp_path):
    """Stated tolerances: over 300 steps the last 100 steps' mean loss within 5% of fp32's, and samples
    of the same seed within 0.05 of fp32's (mean absolute difference; the signal has scale ~1)."""
    loss32, task, model32 = toy_run(tmp_path, "fp32")
    loss16, _, _ = toy_run(tmp_path, "bf16")
    assert abs(loss16 - loss32) <= 0.05 * loss32, (loss16, loss32)
    data = held_out(task.problem, contexts=4, samples=100)
    s32 = sample_signals(model32, data, seed=0, steps=20)
    s16 = sample_signals(model32, data, seed=0, steps=20, precision="bf16")
    assert s16.dtype == s32.dtype == torch.float32
    assert 0 < (s16 - s32).abs().mean() < 0.05
