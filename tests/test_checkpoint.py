"""Checkpoint layout, atomicity, and clear errors for every way a checkpoint can be broken."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dfm.training import CheckpointError, latest_checkpoint, load_checkpoint, load_weights, save_checkpoint
from dfm.training.checkpoint import FILES


def save(out, step, keep=2, **run_config):
    g = torch.Generator().manual_seed(step)
    model = {"w": torch.randn(3, 4, generator=g), "b": torch.zeros(3)}
    ema = {"w": torch.randn(3, 4, generator=g), "b": torch.ones(3)}
    state = {"step": step, "optimizer": {"m": torch.randn(5, generator=g)}}
    path = save_checkpoint(
        out, step, model_state=model, ema_state=ema, train_state=state, run_config=run_config, keep=keep
    )
    return path, model, ema, state


def entries(out):
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_roundtrip_layout_and_pruning(tmp_path):
    for step in (1, 2, 3):
        path, model, ema, state = save(tmp_path, step, task="toy")
    assert path == tmp_path / "checkpoints" / "step-000003"
    assert entries(tmp_path) == ["latest", "step-000002", "step-000003"]  # keep=2, no temp dirs left
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-000003"
    assert sorted(p.name for p in path.iterdir()) == sorted(FILES)
    meta = json.loads((path / "config.json").read_text())
    assert meta == {"format_version": 1, "step": 3, "run_config": {"task": "toy"}}

    for where in (tmp_path, path, path / "ema.safetensors"):  # run dir, checkpoint dir, or a file in it
        ckpt = load_checkpoint(where)
        assert ckpt.path == path and ckpt.step == 3 and ckpt.config == {"task": "toy"}
        assert all(torch.equal(ckpt.model_state[k], model[k]) and torch.equal(ckpt.ema_state[k], ema[k]) for k in model)
        assert torch.equal(ckpt.train_state["optimizer"]["m"], state["optimizer"]["m"])
    assert load_checkpoint(tmp_path / "checkpoints" / "step-000002").step == 2
    assert load_checkpoint(path, train_state=False).train_state is None


def test_keep_one_and_resave_same_step(tmp_path):
    save(tmp_path, 5, keep=1)
    save(tmp_path, 6, keep=1)
    assert entries(tmp_path) == ["latest", "step-000006"]
    _, model, _, _ = save(tmp_path, 6, keep=1)  # same step again (different tensors): replaced in place
    assert entries(tmp_path) == ["latest", "step-000006"]
    assert torch.equal(load_checkpoint(tmp_path).model_state["w"], model["w"])


def test_latest_checkpoint_ignores_temp_dirs_and_stale_pointer(tmp_path):
    assert latest_checkpoint(tmp_path / "nothing") is None
    save(tmp_path, 10)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-000020-x").mkdir()  # a save killed before its rename
    (root / ".tmp-step-000020-x" / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path) == root / "step-000010"
    save(tmp_path, 20)
    (root / "latest").write_text("step-000010\n")  # killed between the rename and the pointer update
    assert latest_checkpoint(tmp_path) == root / "step-000020"
    save(tmp_path, 30)
    assert not [n for n in entries(tmp_path) if n.startswith(".")]  # leftovers cleaned by the next save


def test_failed_save_leaves_previous_checkpoint_untouched(tmp_path, monkeypatch):
    save(tmp_path, 10)
    before = entries(tmp_path)

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save(tmp_path, 20)
    assert entries(tmp_path) == before
    assert load_checkpoint(tmp_path).step == 10


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "name, damage, problem",
    [
        ("model.safetensors", lambda p: p.unlink(), "missing"),
        ("ema.safetensors", lambda p: p.unlink(), "missing"),
        ("config.json", lambda p: p.unlink(), "missing"),
        ("state.pt", lambda p: p.unlink(), "missing"),
        ("model.safetensors", truncate, "corrupt or truncated safetensors"),
        ("ema.safetensors", lambda p: p.write_bytes(b"\x00garbage" * 8), "corrupt or truncated safetensors"),
        ("config.json", truncate, "corrupt or truncated JSON"),
        ("config.json", lambda p: p.write_text('{"step": 3}'), "not a dfm checkpoint config"),
        ("config.json", lambda p: p.write_text('{"format_version": 9, "step": 3, "run_config": {}}'), "version 9 is"),
        ("state.pt", truncate, "corrupt or truncated training state"),
    ],
)
def test_broken_checkpoint_raises_naming_the_file(tmp_path, name, damage, problem):
    path, *_ = save(tmp_path, 3)
    damage(path / name)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path)
    assert str(path / name) in str(err.value) and problem in str(err.value)


def test_missing_run_or_no_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="no checkpoints found"):
        load_checkpoint(tmp_path)


def test_load_weights_lists_every_mismatch():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    load_weights(model, state)  # a match loads silently
    del state["1.bias"]
    state["0.weight"] = torch.zeros(5, 2)
    state["extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_weights(model, state, source="ckpt/model.safetensors")
    message = str(err.value)
    assert message.startswith("ckpt/model.safetensors does not fit Sequential")
    assert "missing keys: 1.bias" in message and "unexpected keys: extra" in message
    assert "0.weight (checkpoint (5, 2), model (3, 2))" in message
