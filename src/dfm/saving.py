"""A DFM built in Python, saved with its configuration and loaded back without a task registry.

Tasks rebuild their models from their own configs (``dfm.runs.load_trained``). A model made from a
user's own classes has no such config, so its parts record how they were made: a class that inherits
:class:`Configurable` remembers the arguments its ``__init__`` was called with, and the model is saved
as the import path of each part's class with those arguments, next to the weights::

    class MyDenoiser(Configurable, nn.Module):
        def __init__(self, width: int = 64): ...

    model = DFM(MyDenoiser(width=128), MyForwardModel())
    model.save_pretrained("models/mine")            # config.json + ema.safetensors
    model = DFM.from_pretrained("models/mine")      # MyDenoiser(width=128), weights loaded strictly

``Trainer`` stores the same configuration in every checkpoint of such a model, so
``DFM.from_pretrained("runs/mine")`` loads a training run's newest checkpoint (its EMA weights).
Arguments must be JSON values or other ``Configurable`` objects; regularisers are training-time
callables and are not saved (pass them again to ``from_pretrained``).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from dfm.configurable import Configurable, init_owner
from dfm.training.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, load_weights

KEY = "dfm"  # where a checkpoint's run config keeps the model's configuration
OPTIONS = ("p_uncond", "deterministic", "timestep_bias", "self_condition")  # DFM's own arguments, saved as they are


def spec(obj: Configurable | Any) -> dict[str, Any]:
    """``{"class": "module:QualName", "args": {...}}`` for a Configurable object, ``{"function": "module:name"}``
    for a plain function (a forward model can be one); raises TypeError naming what cannot be saved."""
    if inspect.isfunction(obj):
        if "<" in obj.__qualname__:  # a lambda or a function defined inside another
            raise TypeError(f"{obj.__qualname__} cannot be imported by name: define it at a module's top level to save it")
        return {"function": f"{obj.__module__}:{obj.__qualname__}"}
    cls = type(obj)
    if not isinstance(obj, Configurable):
        raise TypeError(f"{cls.__qualname__} does not record its constructor arguments: inherit dfm.Configurable to save it")
    args = getattr(obj, "init_args", None)
    if args is None:  # no __init__ of a Configurable class ran: fine only if the one that did takes no arguments
        named = [p for p in inspect.signature(init_owner(cls).__init__).parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if len(named) > 1:  # more than self (nn.Module.__init__ takes only *args, **kwargs)
            raise TypeError(f"{cls.__qualname__}: its __init__ comes from {init_owner(cls).__qualname__}, which does not record its arguments")
        args = {}
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "args": {k: _value(v, f"{cls.__qualname__}.{k}") for k, v in args.items()}}


def _value(v: Any, where: str) -> Any:
    if isinstance(v, Configurable):
        return {"__spec__": spec(v)}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_value(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {k: _value(x, f"{where}.{k}") for k, x in v.items()}
    raise TypeError(f"{where}: a {type(v).__name__} cannot be saved as configuration (JSON values or Configurable objects only)")


def build(s: dict[str, Any]) -> Any:
    """The object that :func:`spec` described, its class (or function) imported by path."""
    module, _, name = s.get("class", s.get("function", "")).partition(":")
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        hint = " (a class defined in a script's __main__ can only be loaded by that script)" if module == "__main__" else ""
        raise CheckpointError(f"cannot import {module}:{name}{hint}: {e}") from e
    return obj if "function" in s else obj(**{k: _built(v) for k, v in s["args"].items()})


def _built(v: Any) -> Any:
    if isinstance(v, dict):
        return build(v["__spec__"]) if set(v) == {"__spec__"} else {k: _built(x) for k, x in v.items()}
    return [_built(x) for x in v] if isinstance(v, list) else v


def model_spec(model) -> dict[str, Any]:
    """The configuration of a DFM: its parts and options (regularisers are not part of it)."""
    weights = {k: v for k, v in model.loss_weights.items() if k in ("target", "novel")}
    return {
        "denoiser": spec(model.denoiser), "forward_model": spec(model.forward_model), "schedule": spec(model.schedule),
        "loss_weights": weights, **{k: getattr(model, k) for k in OPTIONS},
    }


def save_pretrained(model, directory: str | os.PathLike) -> Path:
    """Write the model's configuration and weights to ``directory`` (new or empty), atomically: a directory
    with ``config.json`` and ``ema.safetensors``, the layout of an exported checkpoint."""
    target = Path(directory)
    config = {"format_version": FORMAT_VERSION, "step": 0, "run_config": {KEY: model_spec(model)}}  # fails before writing
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target}: exists and is not an empty directory; nothing written")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{secrets.token_hex(6)}"
    try:
        tmp.mkdir()
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / "ema.safetensors")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        os.replace(tmp, target)  # an empty target directory is replaced whole
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def from_pretrained(path: str | os.PathLike, **overrides):
    """A DFM rebuilt from :func:`save_pretrained`'s directory, or from a checkpoint or run that ``Trainer``
    wrote for a model of Configurable parts, with its (EMA) weights; ``overrides`` are DFM arguments
    (``regularizers=...``, ``p_uncond=...``) that replace the saved ones."""
    from dfm.model import DFM

    ckpt = load_checkpoint(path, train_state=False)
    if KEY not in ckpt.config:
        raise CheckpointError(
            f"{ckpt.path}: has no model configuration ('{KEY}' in config.json): a task's checkpoint (load it with "
            "dfm.runs.load_trained), or a model whose parts are not Configurable"
        )
    s = ckpt.config[KEY]
    model = DFM(build(s["denoiser"]), build(s["forward_model"]), build(s["schedule"]),
                **{"loss_weights": s["loss_weights"], **{k: s[k] for k in OPTIONS}, **overrides})
    load_weights(model, ckpt.ema_state, source=str(ckpt.path / "ema.safetensors"))
    return model.eval()
