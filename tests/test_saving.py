"""A DFM built from the user's own classes saves its configuration with its weights and loads back by import path."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dfm import DFM, Configurable, LinearProjection, NoiseSchedule, TrainConfig, Trainer
from dfm.saving import spec
from dfm.training import CheckpointError

M, D = 2, 3  # observation and signal sizes
HERE = __name__  # this module's import name, as the saved class paths give it


def make_batch(n: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    signal = torch.randn(n, D, generator=g)
    a_c, a_t, a_n = (torch.randn(n, M, D, generator=g) for _ in range(3))
    obs = {k: torch.einsum("bmd,bd->bm", a, signal) for k, a in (("ctxt_obs", a_c), ("trgt_obs", a_t), ("novel_obs", a_n))}
    return obs | {"ctxt_params": a_c, "trgt_params": a_t, "novel_params": a_n}


class Encoder(Configurable, nn.Module):
    def __init__(self, width: int, scale: float = 1.0):
        super().__init__()
        self.lin, self.scale = nn.Linear(2 * M + 1, width), scale


class UserDenoiser(Configurable, nn.Module):
    """A denoiser with a nested Configurable part, keyword options and a default it did not pass."""

    def __init__(self, encoder: Encoder, out: int = 3, act: str = "silu", **extra):
        super().__init__()
        self.encoder, self.head, self.extra = encoder, nn.Linear(encoder.lin.out_features, out), extra

    def forward(self, ctxt_obs, ctxt_params, noisy_obs, t, trgt_params):
        h = self.encoder.lin(torch.cat([ctxt_obs, noisy_obs, t[:, None] / 1000], -1))
        return self.head(torch.nn.functional.silu(h) * self.encoder.scale)


class Wider(UserDenoiser):
    def __init__(self, width: int = 16):
        super().__init__(Encoder(width), act="gelu")


def make_model() -> DFM:
    torch.manual_seed(0)
    return DFM(UserDenoiser(Encoder(8, scale=0.5), tag="x"), LinearProjection(), NoiseSchedule(500), p_uncond=0.2, loss_weights={"novel": 0.5})


def test_a_python_built_model_round_trips_with_its_configuration_and_weights(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path / "mine")
    config = json.loads((tmp_path / "mine" / "config.json").read_text())["run_config"]["dfm"]
    assert config["denoiser"] == {
        "class": f"{HERE}:UserDenoiser",
        "args": {"encoder": {"__spec__": {"class": f"{HERE}:Encoder", "args": {"width": 8, "scale": 0.5}}}, "out": 3, "act": "silu", "tag": "x"},
    }
    loaded = DFM.from_pretrained(tmp_path / "mine")
    assert isinstance(loaded.denoiser, UserDenoiser) and loaded.denoiser.extra == {"tag": "x"} and loaded.denoiser.encoder.scale == 0.5
    assert loaded.schedule.num_steps == 500 and loaded.p_uncond == 0.2 and loaded.loss_weights["novel"] == 0.5
    batch = make_batch()
    a = model.sample(batch["ctxt_obs"], batch["ctxt_params"], batch["trgt_params"], (16, M), steps=3, generator=torch.Generator().manual_seed(0))
    b = loaded.sample(batch["ctxt_obs"], batch["ctxt_params"], batch["trgt_params"], (16, M), steps=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.signal, b.signal, rtol=0, atol=0)
    assert DFM.from_pretrained(tmp_path / "mine", p_uncond=0.0).p_uncond == 0.0  # overrides replace saved options


def test_only_the_most_derived_init_is_recorded():
    assert Wider(width=4).init_args == {"width": 4}
    assert spec(Wider(4)) == {"class": f"{HERE}:Wider", "args": {"width": 4}}


def test_a_trainers_checkpoints_load_without_a_task(tmp_path):
    model = make_model()
    config = TrainConfig(steps=4, batch_size=8, lr=1e-3, warmup_steps=1, progress=False, checkpoint_every=0, preview_every=0)
    dataset = [{k: v[i] for k, v in make_batch(n=32).items()} for i in range(32)]
    trainer = Trainer(model, dataset, config, tmp_path / "run")
    trainer.fit()
    loaded = DFM.from_pretrained(tmp_path / "run")
    for (k, v), w in zip(trainer.ema_model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(v, w, msg=k)


def test_what_cannot_be_saved_is_named_and_nothing_is_written(tmp_path):
    class Local(Configurable, nn.Module):
        def __init__(self, weights: torch.Tensor):
            super().__init__()

        def forward(self, *args):
            return args[2]

    with pytest.raises(TypeError, match=r"Local.weights: a Tensor cannot be saved"):
        DFM(Local(torch.zeros(2)), LinearProjection()).save_pretrained(tmp_path / "a")

    class Plain(nn.Module):
        def forward(self, *args):
            return args[2]

    with pytest.raises(TypeError, match="Plain does not record its constructor arguments: inherit dfm.Configurable"):
        DFM(Plain(), LinearProjection()).save_pretrained(tmp_path / "b")
    with pytest.raises(TypeError, match="cannot be imported by name"):
        DFM(make_model().denoiser, lambda s, p: s).save_pretrained(tmp_path / "c")
    assert not any(tmp_path.iterdir())
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty directory; nothing written"):
        make_model().save_pretrained(tmp_path / "d")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["notes.txt"]


def test_a_task_checkpoint_or_a_missing_class_gives_a_clear_error(tmp_path):
    make_model().save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    meta = json.loads(path.read_text())
    meta["run_config"]["dfm"]["denoiser"]["class"] = f"{HERE}:Gone"
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"cannot import {HERE}:Gone"):
        DFM.from_pretrained(tmp_path / "m")
    meta["run_config"] = {"task": "toy"}
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="has no model configuration.*dfm.runs.load_trained"):
        DFM.from_pretrained(tmp_path / "m")
