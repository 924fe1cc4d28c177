"""Values are checked where they enter: config values when the config is built, sampling options and
samples in DFM.sample, and `dfm data` arguments by argparse (dfm.config, dfm.model, dfm.cli)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

import dfm.runs
from dfm.cli import PRETRAINED, main
from dfm.config import ConfigError, build_config, builtin_configs, to_dict
from dfm.data.sprites import SpriteMotion
from dfm.data.sprites import write_dataset as write_sprites
from dfm.forward_models import LinearProjection
from dfm.model import DFM, SamplingError
from dfm.runs import make_task, task_from_config
from dfm.tasks.toy import ToyConfig
from dfm.training import TrainConfig

D, M = 3, 2  # signal and observation sizes of the tiny DFM


def config_error(config: str, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as err:
        task_from_config(config, overrides)
    return str(err.value)


# -- config values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, override, key",
    [
        ("toy_gmm", "model.width=0", "model.width"),
        ("toy_gmm", "model.prior_std=0", "model.prior_std"),
        ("toy_gmm", "train.ema_decay=2", "train.ema_decay"),
        ("toy_gmm", "train.ema_decay=1", "train.ema_decay"),
        ("toy_gmm", "train.lr=inf", "train.lr"),
        ("toy_gmm", "train.lr=0", "train.lr"),
        ("toy_gmm", "train.batch_size=0", "train.batch_size"),
        ("toy_gmm", "train.steps=-1", "train.steps"),
        ("toy_gmm", "train.grad_clip=nan", "train.grad_clip"),
        ("toy_gmm", "train.num_workers=-1", "train.num_workers"),
        ("toy_gmm", "sample.num_samples=0", "sample.num_samples"),
        ("toy_gmm", "sample.num_samples=-2", "sample.num_samples"),
        ("toy_gmm", "sample.steps=0", "sample.steps"),
        ("toy_gmm", "sample.guidance=nan", "sample.guidance"),
        ("toy_gmm", "sample.temperature=-0.5", "sample.temperature"),
        ("toy_gmm", "sample.eta=-1", "sample.eta"),
        ("toy_gmm", "dataset_size=0", "dataset_size"),
        ("toy_gmm", "objective.p_uncond=1.5", "objective.p_uncond"),
        ("toy_gmm", "objective.timestep_bias=-1", "objective.timestep_bias"),
        ("toy_gmm", "objective.diffusion_steps=1", "objective.diffusion_steps"),
        ("toy_gmm", "objective.loss_weights.novel=-1", "objective.loss_weights.novel"),
        ("toy_gmm", "objective.loss_weights.novel=.nan", "objective.loss_weights.novel"),
        ("gan_faces", "model.width=0", "model.width"),
        ("gan_faces", "generator.psi=-1", "generator.psi"),
        ("gan_faces", "inversion.lr=0", "inversion.lr"),
        ("gan_faces", "sample_inputs=0", "sample_inputs"),
        ("motion_sprites", "model.metric_range=0", "model.metric_range"),
        ("motion_sprites", "data.resolution=0", "data.resolution"),
        ("motion_sprites", "smoothness_edge_weight=-1", "smoothness_edge_weight"),
        ("scenes_synth3d", "model.encoder.width=0", "model.encoder.width"),
        ("scenes_synth3d", "model.field.width=0", "model.field.width"),
        ("scenes_synth3d", "model.field.mean_after=9", "model.field.mean_after"),
        ("scenes_synth3d", "data.far=1.0", "data.far"),
        ("scenes_synth3d", "data.views.max_gap=0", "data.views.max_gap"),
        ("scenes_synth3d", "model.render.background=[0,0,2]", "model.render.background"),
        ("scenes_co3d", "data.near=-1", "data.near"),
        ("scenes_synth3d", "model.render.coarse_samples=0", "model.render.coarse_samples"),
        ("scenes_synth3d", "model.latent_dim=-1", "model.latent_dim"),
        ("scenes_synth3d", "data.patch_size=0", "data.patch_size"),
        ("scenes_synth3d", "sample_view=-1", "sample_view"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(config, override, key):
    message = config_error(config, [override])
    assert f"{key} must be" in message, message


@pytest.mark.parametrize(
    "config, overrides",
    [
        ("toy_gmm", ["train.checkpoint_every=0", "train.preview_every=-1", "train.log_every=0", "train.grad_clip=0",
                     "train.mmap_threshold_kib=0", "train.seed=-5", "train.ema_decay=0", "train.warmup_steps=0",
                     "sample.guidance=-1", "sample.temperature=0", "sample.eta=0", "objective.p_uncond=1",
                     "objective.loss_weights.novel=0", "problem_seed=-1"]),
        ("scenes_synth3d", ["model.render.context_samples=0", "model.latent_dim=0", "model.render.fine_samples=0",
                            "model.render.context_resolution=null", "data.patch_size=null", "sample_view=null",
                            "model.field.features=0", "model.field.mean_after=0"]),
    ],
)
def test_values_that_mean_off_or_none_stay_valid(config, overrides):
    task_from_config(config, overrides)


def test_python_configs_are_checked_too():
    with pytest.raises(ValueError, match=re.escape("train.ema_decay must be in [0, 1), got 1.0")):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="train.lr must be finite"):
        TrainConfig(lr=float("nan"))


@pytest.mark.parametrize("name", builtin_configs())
def test_shipped_configs_validate(name):
    task_from_config(name)


@pytest.mark.parametrize("path", sorted(PRETRAINED.glob("*/config.json")), ids=lambda p: p.parent.name)
def test_shipped_checkpoint_configs_validate(path):
    make_task(json.loads(path.read_text())["run_config"], origin=str(path))


# -- YAML tags and resolvers -----------------------------------------------------------------------


def test_yaml_tag_in_override_is_a_config_error_naming_it():
    override = 'train.seed=!!python/object/apply:os.system ["echo hi"]'
    message = config_error("toy_gmm", [override])
    assert repr(override) in message and "python/object/apply" in message


@pytest.mark.parametrize(
    "override",
    ["out_dir=${oc.env:HOME}", "out_dir=runs/${oc.env:USER,someone}", "train.seed=${oc.decode:'3'}",
     "out_dir=${oc.env:${problem}}", "sample.steps=${oc.create:7}"],
)
def test_resolver_in_override_is_refused(override):
    message = config_error("toy_gmm", [override])
    assert repr(override) in message and "resolver" in message and "write the value itself" in message
    assert override.partition("=")[0] in message  # the key


def test_resolver_in_file_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: toy\nout_dir: runs/${oc.env:HOME}\n")
    with pytest.raises(ConfigError, match=r"out_dir=.*resolver 'oc.env'") as err:
        task_from_config(path)
    assert str(path) in str(err.value)
    with pytest.raises(ConfigError, match="resolver 'oc.env'"):  # a checkpoint's stored config too
        make_task({"task": "toy", "out_dir": "${oc.env:HOME}"})


def test_plain_interpolation_between_keys_stays(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: toy\nproblem: manifold\nout_dir: runs/${problem}\n")
    assert to_dict(task_from_config(path).cfg)["out_dir"] == "runs/manifold"  # stored resolved
    cfg = build_config(ToyConfig, {}, ["model.depth=${train.seed}", "train.seed=3", r"out_dir=\${oc.env:HOME}"])
    assert cfg.model.depth == 3
    assert cfg.out_dir == "${oc.env:HOME}"  # escaped: a literal string, nothing is resolved


# -- sampling --------------------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2 * M + 1, D)

    def forward(self, ctxt_obs, ctxt_params, noisy_obs, t, trgt_params):
        return self.lin(torch.cat([ctxt_obs, noisy_obs, t[:, None] / 1000], -1))


def tiny_sample(deterministic: bool = False, nan: bool = False, **options):
    torch.manual_seed(0)
    model = DFM(Tiny(), LinearProjection(), deterministic=deterministic)
    if nan:
        with torch.no_grad():
            model.denoiser.lin.weight.fill_(float("nan"))
    g = torch.Generator().manual_seed(0)
    ctxt, params = torch.randn(4, M, generator=g), torch.randn(4, M, D, generator=g)
    return model.sample(ctxt, params, params, (4, M), generator=g, **{"steps": 3, **options})


@pytest.mark.parametrize("deterministic", [False, True])
def test_non_finite_samples_raise_sampling_error(deterministic):
    assert torch.isfinite(tiny_sample(deterministic).observation).all()
    with pytest.raises(SamplingError, match=r"NaN or inf.*weights.*guidance"):
        tiny_sample(deterministic, nan=True)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"steps": 0}, "steps must be > 0"),
        ({"guidance": float("nan")}, "guidance must be finite"),
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"temperature": float("inf")}, "temperature must be finite"),
        ({"eta": -0.5}, "eta must be >= 0"),
        ({"eta": float("nan")}, "eta must be finite"),
    ],
)
def test_sampling_options_are_checked(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_sample(**options)


def test_cli_reports_non_finite_samples(tmp_path, monkeypatch, capsys):
    tiny = ["model.width=8", "model.depth=1", "sample.num_samples=4", "sample.steps=2", f"out_dir={tmp_path}"]
    task = task_from_config("toy_gmm", tiny)
    model = task.build_model()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    monkeypatch.setattr(dfm.runs, "load_trained", lambda checkpoint, overrides: (task, model))
    assert main(["sample", str(tmp_path), "--out", str(tmp_path / "samples")]) == 2
    assert "NaN or inf" in capsys.readouterr().err


# -- the command line ------------------------------------------------------------------------------


def test_train_refuses_bad_sample_options_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "toy_gmm", f"out_dir={out}", "sample.num_samples=0"]) == 2
    assert "sample.num_samples must be > 0" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "args, option",
    [
        (["motion", "--sequences", "-3"], "--sequences"),
        (["motion", "--res", "0"], "--res"),
        (["motion", "--sprites", "0"], "--sprites"),
        (["motion", "--directions", "0"], "--directions"),
        (["motion", "--speed", "0"], "--speed"),
        (["motion", "--min-radius", "-1"], "--min-radius"),
        (["motion", "--max-radius", "nan"], "--max-radius"),
        (["motion", "--test-fraction", "1.5"], "--test-fraction"),
        (["synth3d", "--scenes", "0"], "--scenes"),
        (["synth3d", "--views", "0"], "--views"),
        (["synth3d", "--res", "-1"], "--res"),
        (["synth3d", "--test-fraction", "-0.1"], "--test-fraction"),
    ],
)
def test_data_arguments_are_usage_errors(tmp_path, capsys, args, option):
    out = tmp_path / "data"
    with pytest.raises(SystemExit) as exit_:
        main(["data", *args, "--out", str(out)])
    assert exit_.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "args", [["motion", "--sequences", "1"], ["synth3d", "--scenes", "4", "--test-fraction", "1"]]
)
def test_data_split_without_train_or_test_items_is_refused_up_front(tmp_path, capsys, args):
    out = tmp_path / "data"
    assert main(["data", *args, "--out", str(out)]) == 2
    assert "both splits need at least one" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValueError, match="0 for training"):
        write_sprites(out, SpriteMotion(), sequences=4, test_fraction=0.9, progress=False)
    assert not out.exists()
