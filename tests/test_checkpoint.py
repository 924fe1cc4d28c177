"""Checkpoint layout, atomicity, and clear errors for every way a checkpoint can be broken."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dfm.training import (
    CheckpointError,
    export_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
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
    with pytest.raises(CheckpointError, match=r"could not write checkpoint step-000020 in .*No space left .*MiB free"):
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


def test_checkpoints_are_created_with_the_umask_not_0700(tmp_path):
    old = os.umask(0o022)
    try:
        path, *_ = save(tmp_path, 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert stat.S_IMODE((path / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((path.parent / "latest").stat().st_mode) == 0o644


def test_steps_that_disagree_are_refused(tmp_path):
    path, *_ = save(tmp_path, 3)
    torch.save({"step": 7, "optimizer": {}}, path / "state.pt")
    with pytest.raises(CheckpointError, match=r"state.pt: holds step 7, but .*config.json step 3"):
        load_checkpoint(path)
    assert load_checkpoint(path, train_state=False).step == 3  # sampling does not read state.pt
    path, *_ = save(tmp_path / "b", 3)
    renamed = path.rename(path.with_name("step-000009"))
    with pytest.raises(CheckpointError, match="records step 3, but its folder is step-000009"):
        load_checkpoint(tmp_path / "b")
    assert renamed.exists()


def test_nonfinite_weights_are_refused(tmp_path):
    path, _, ema, _ = save(tmp_path, 3)
    ema["w"][1, 2] = float("nan")
    ema["b"][0] = float("inf")
    save_file(ema, path / "ema.safetensors")
    with pytest.raises(CheckpointError, match=r"ema.safetensors: non-finite values in 2 of 2 tensors \((w, b|b, w)\)"):
        load_checkpoint(path, train_state=False)


def test_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    save(tmp_path, 1)
    newest, *_ = save(tmp_path, 2)
    truncate(newest / "ema.safetensors")
    with caplog.at_level(logging.WARNING, logger="dfm.training.checkpoint"):
        assert load_checkpoint(tmp_path).step == 1
    assert "ema.safetensors: corrupt or truncated" in caplog.text and "falling back" in caplog.text
    with pytest.raises(CheckpointError):  # a checkpoint named explicitly never falls back
        load_checkpoint(newest)
    truncate(tmp_path / "checkpoints" / "step-000001" / "state.pt")
    with pytest.raises(CheckpointError, match=r"no checkpoint loads: .*step-000002.*ema.safetensors.*; .*step-000001.*state.pt"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("big", ["model_state", "train_state"])
def test_a_real_write_failure_names_the_directory_and_keeps_the_last_checkpoint(tmp_path, big):
    """A file-size limit (RLIMIT_FSIZE) makes the kernel refuse writes as a full disk would, through the real
    writers (safetensors, torch.save): the error names the directory, the earlier checkpoint stays."""
    save(tmp_path, 1)
    before = entries(tmp_path)
    script = f"""
import resource, signal, sys, torch
from dfm.training import CheckpointError, save_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
small, big = {{"w": torch.zeros(4)}}, {{"w": torch.zeros(64, 64)}}  # 16 KiB: over the limit
states = dict(model_state=small, ema_state=small, train_state={{"step": 2}}) | {{{big!r}: big}}
try:
    save_checkpoint({str(tmp_path)!r}, 2, **states)
except CheckpointError as e:
    print(e)
    sys.exit(3)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert f"could not write checkpoint step-000002 in {tmp_path / 'checkpoints'}" in proc.stdout
    assert "earlier checkpoints there are intact" in proc.stdout
    assert entries(tmp_path) == before
    assert load_checkpoint(tmp_path).step == 1


@pytest.fixture
def run_dir(tmp_path):
    save(tmp_path / "run", 1)
    save(tmp_path / "run", 2)
    return tmp_path / "run"


def tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_writes_a_new_or_empty_directory(run_dir, tmp_path, monkeypatch):
    out = export_checkpoint(run_dir, tmp_path / "new" / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "ema.safetensors"]
    assert load_checkpoint(out, train_state=False).step == 2
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    assert export_checkpoint(run_dir, ".") == Path(".")  # the current directory, when it is empty
    assert load_checkpoint(tmp_path / "empty", train_state=False).step == 2
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["config.json", "ema.safetensors"]


def test_export_never_deletes_what_it_did_not_write(run_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    export_checkpoint(run_dir, tmp_path / "export")
    before = {d: tree(d) for d in (run_dir, other, tmp_path / "export")}
    step = run_dir / "checkpoints" / "step-000002"
    refusals = [
        (run_dir, run_dir, "overlaps the checkpoint"),
        (run_dir, run_dir / "checkpoints", "overlaps the checkpoint"),
        (step, step / "sub", "overlaps the checkpoint"),
        (tmp_path / "export", run_dir, "is a training run"),
        (run_dir, other, "not empty and not an earlier export"),
        (run_dir, other / "notes.txt", "not a directory"),
        (run_dir, tmp_path / "export", "holds an earlier export; pass --force"),
    ]
    for source, target, problem in refusals:
        with pytest.raises(CheckpointError, match=problem):
            export_checkpoint(source, target)
    for source, target, problem in refusals[:-1]:  # --force replaces an earlier export, nothing else
        with pytest.raises(CheckpointError, match=problem):
            export_checkpoint(source, target, force=True)
    assert {d: tree(d) for d in before} == before
    assert not (step / "sub").exists()
    save(tmp_path / "run2", 7)
    export_checkpoint(tmp_path / "run2", tmp_path / "export", force=True)
    assert load_checkpoint(tmp_path / "export", train_state=False).step == 7
