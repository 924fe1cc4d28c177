"""Run configs: built-ins, typed overrides, and errors that name the problem (dfm.config, dfm.runs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dfm.config import ConfigError, build_config, builtin_configs, read_yaml, to_dict
from dfm.runs import make_task, task_from_config
from dfm.tasks.base import ObjectiveConfig, SampleConfig
from dfm.tasks.toy import ToyConfig, ToyTask
from dfm.training import TrainConfig

TOP_KEYS = ["task", "out_dir", "problem", "problem_seed", "dataset_size", "data_seed", "model", "objective", "train", "sample"]


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, problem", [("toy_gmm", "gmm"), ("toy_manifold", "manifold")])
def test_builtin_configs_load(name, problem):
    assert name in builtin_configs()
    raw, origin = read_yaml(name)
    assert raw["task"] == "toy" and name in origin
    task = task_from_config(name)
    assert isinstance(task, ToyTask) and isinstance(task.cfg, ToyConfig)
    assert task.cfg.problem == problem and task.cfg.out_dir == f"runs/{name}"
    # values from the YAML win over the dataclass defaults, the rest keep their defaults
    assert task.cfg.train.steps == raw["train"]["steps"] != TrainConfig().steps
    assert task.cfg.train.batch_size == raw["train"]["batch_size"] != TrainConfig().batch_size
    assert task.cfg.objective.p_uncond == raw["objective"]["p_uncond"] != ObjectiveConfig().p_uncond
    assert task.cfg.train.weight_decay == TrainConfig().weight_decay and task.cfg.sample.eta == SampleConfig().eta
    to_dict(task.cfg)  # JSON-able plain data


def test_overrides_apply_with_types(tmp_path):
    task = task_from_config(
        "toy_gmm",
        ["train.steps=5", "train.lr=3e-4", "model.precondition=false", "sample.sampler=dpmpp_2m",
         "objective.loss_weights.novel=0", f"out_dir={tmp_path}"],
    )
    cfg = task.cfg
    assert cfg.train.steps == 5 and type(cfg.train.steps) is int
    assert cfg.train.lr == pytest.approx(3e-4) and type(cfg.train.lr) is float
    assert cfg.model.precondition is False
    assert cfg.sample.sampler == "dpmpp_2m"
    assert cfg.objective.loss_weights == {"novel": 0.0}
    assert cfg.out_dir == str(tmp_path)
    assert cfg.model.width == 256  # untouched keys keep the file's value
    # the override reaches the model that the task builds
    assert task.build_model().loss_weights["novel"] == 0.0


def test_yaml_file_with_overrides(tmp_path):
    path = write(tmp_path, "task: toy\nproblem: manifold\ntrain:\n  steps: 7\n")
    task = task_from_config(str(path), ["train.steps=9"])
    assert task.cfg.problem == "manifold" and task.cfg.train.steps == 9
    assert task.cfg.model.width == ToyConfig().model.width  # default


def _valid_keys_in(message: str) -> list[str]:
    listed = re.search(r"\[(.*)\]", message)
    assert listed, message
    return [k.strip().strip("'\"") for k in listed.group(1).split(",")]


@pytest.mark.parametrize(
    "override, key, valid",
    [
        ("trian.steps=5", "trian", TOP_KEYS),
        ("stepz=5", "stepz", TOP_KEYS),
        ("train.stpes=5", "train.stpes", None),
        ("model.widht=4", "model.widht", ["width", "depth", "precondition", "prior_std"]),
    ],
)
def test_unknown_override_key_names_it_and_lists_valid_keys(override, key, valid):
    with pytest.raises(ConfigError) as err:
        task_from_config("toy_gmm", [override])
    message = str(err.value)
    assert repr(key) in message and f"override {override!r}" in message  # names the override it came from
    listed = _valid_keys_in(message)
    if valid is None:  # train.*: every TrainConfig field
        assert {"steps", "batch_size", "lr", "checkpoint_every"} <= set(listed) and "stpes" not in listed
    else:
        assert listed == valid


@pytest.mark.parametrize(
    "text, key, valid",
    [
        ("task: toy\nmodle:\n  width: 3\n", "modle", TOP_KEYS),
        ("task: toy\nmodel:\n  widht: 3\n", "model.widht", ["width", "depth", "precondition", "prior_std"]),
        ("task: toy\nsample:\n  sampler: ddim\n  stpes: 3\n", "sample.stpes", None),
    ],
)
def test_unknown_yaml_key_names_it_and_lists_valid_keys(tmp_path, text, key, valid):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        task_from_config(path)
    message = str(err.value)
    assert repr(key) in message and str(path) in message  # says which file
    listed = _valid_keys_in(message)
    if valid is None:
        assert {"steps", "sampler", "guidance", "temperature"} <= set(listed)
    else:
        assert listed == valid


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["train.steps=abc"], "train.steps"),
        (["model.width=1.5"], "model.width"),
        (["objective.loss_weights.novel=abc"], "objective.loss_weights.novel"),
        (["model.precondition=maybe"], "model.precondition"),
    ],
)
def test_type_errors_raise_config_error(overrides, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        task_from_config("toy_gmm", overrides)


def test_type_error_in_yaml(tmp_path):
    path = write(tmp_path, "task: toy\ntrain:\n  steps: lots\n")
    with pytest.raises(ConfigError, match="train.steps"):
        task_from_config(path)
    path = write(tmp_path, "task: toy\nmodel: 3\n", "scalar.yaml")
    with pytest.raises(ConfigError, match="scalar.yaml"):
        task_from_config(path)


def test_missing_files_raise_config_error_naming_them(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        task_from_config(missing)
    with pytest.raises(ConfigError) as err:
        task_from_config("no_such_builtin")
    assert "no_such_builtin" in str(err.value) and "toy_gmm" in str(err.value)  # lists the built-ins


def test_invalid_yaml_raises_config_error_naming_the_file(tmp_path):
    path = write(tmp_path, "task: toy\ntrain: [steps: 3\n  oops: {\n", "broken.yaml")
    with pytest.raises(ConfigError, match=re.escape(str(path))) as err:
        read_yaml(path)
    assert "YAML" in str(err.value)
    path = write(tmp_path, "- a\n- b\n", "list.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        read_yaml(path)


def test_empty_file_is_empty_mapping(tmp_path):
    raw, origin = read_yaml(write(tmp_path, ""))
    assert raw == {} and "run.yaml" in origin


def test_config_without_task_or_with_unknown_task(tmp_path):
    path = write(tmp_path, "problem: gmm\n")
    with pytest.raises(ValueError, match="no 'task' key") as err:
        task_from_config(path)
    assert str(path) in str(err.value)  # names the file
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*toy"):
        task_from_config(write(tmp_path, "task: nope\n", "other.yaml"))
    with pytest.raises(ValueError, match="unknown toy problem 'zzz'"):
        make_task({"task": "toy", "problem": "zzz"})


def test_build_config_rejects_unknown_keys_directly():
    cfg = build_config(ToyConfig, {"train": {"steps": 3}}, ["sample.steps=4"])
    assert isinstance(cfg, ToyConfig) and cfg.train.steps == 3 and cfg.sample.steps == 4
    assert cfg.sample.sampler_kwargs()["steps"] == 4  # a real dataclass instance, with its methods
    with pytest.raises(ConfigError, match="valid keys under 'sample'"):
        build_config(ToyConfig, {}, ["sample.nope=1"])
