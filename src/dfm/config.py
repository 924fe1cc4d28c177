"""Run configs: YAML files validated against a task's dataclass, with ``key=value`` overrides.

A run config names its task (``task: toy``); the task's ``Config`` dataclass defines every valid
key with its default. Unknown keys are an error that lists the valid ones, so a typo never
silently trains the wrong model. Built-in configs (``src/dfm/configs/*.yaml``) can be named
without a path: ``dfm train toy_gmm``.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which and why."""


def builtin_configs() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("dfm.configs").iterdir() if p.name.endswith(".yaml"))


def read_yaml(source: str | Path) -> tuple[dict, str]:
    """The raw mapping of a config file or built-in config name, and where it came from."""
    path = Path(source)
    if not path.exists() and not str(source).endswith((".yaml", ".yml")):
        candidate = resources.files("dfm.configs") / f"{source}.yaml"
        if candidate.is_file():
            return yaml.safe_load(candidate.read_text()) or {}, f"built-in config {source!r}"
        raise ConfigError(f"no config file {str(source)!r} and no built-in config of that name; built-in: {builtin_configs()}")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return raw, f"config file {str(path)!r}"


def valid_keys(schema: Any, path: str) -> list[str]:
    """The valid keys at a dotted ``path`` of a dataclass schema."""
    node = schema
    for part in [p for p in path.split(".") if p]:
        node = getattr(node, part, None)
    if dataclasses.is_dataclass(node):
        return [f.name for f in dataclasses.fields(node)]
    return []


def build_config(schema_cls: type, raw: dict, overrides: Sequence[str] = (), origin: str = "config") -> Any:
    """Validate ``raw`` and ``overrides`` (``a.b=value``) against the dataclass ``schema_cls``;
    returns an instance of it (nested dataclasses, with their methods)."""
    schema = schema_cls()
    cfg = OmegaConf.structured(schema)
    for what, layer in ((origin, lambda: OmegaConf.create(raw)), ("overrides", lambda: OmegaConf.from_dotlist(list(overrides)))):
        try:
            cfg = OmegaConf.merge(cfg, layer())
        except (ConfigKeyError, ConfigAttributeError) as e:
            parent = (e.full_key or "").rpartition(".")[0]
            key = e.full_key or "?"
            raise ConfigError(
                f"{what}: unknown key {key!r}; valid keys{' under ' + repr(parent) if parent else ''}: {valid_keys(schema, parent)}"
            ) from None
        except OmegaConfBaseException as e:
            raise ConfigError(f"{what}: {e}") from None
    try:
        return OmegaConf.to_object(cfg)  # runs the dataclasses' own checks (__post_init__)
    except (ValueError, OmegaConfBaseException) as e:
        raise ConfigError(f"{origin} with overrides {list(overrides)}: {e}") from None


def to_dict(cfg: Any) -> dict:
    """A config dataclass as plain JSON-able data (what checkpoints store)."""
    return dataclasses.asdict(cfg)
