"""Run configs: YAML files validated against a task's dataclass, with ``key=value`` overrides.

A run config names its task (``task: toy``); the task's ``Config`` dataclass defines every valid
key with its default. Unknown keys are an error that lists the valid ones, so a typo never
silently trains the wrong model. Built-in configs (``src/dfm/configs/*.yaml``) can be named
without a path: ``dfm train toy_gmm``.

Values are checked when the config is built (each dataclass's ``__post_init__`` calls
:func:`check_values`), so ``sample.num_samples=0`` fails before training, not after it.

Interpolation between keys (``${data.resolution}``) is allowed; resolver calls (``${oc.env:HOME}``,
``${oc.decode:...}``, any ``${name:...}``) are refused in files and overrides alike: they read the
environment or run code when the config is resolved, and the resolved value would be stored in
every checkpoint's ``config.json``, so a shared config file could copy a user's environment into
the checkpoints they share. Write the value itself instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import OmegaConf, grammar_parser
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, GrammarParseError, OmegaConfBaseException
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which and why."""


RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "positive": ("> 0", lambda v: v > 0),
    "non_negative": (">= 0", lambda v: v >= 0),
    "probability": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "decay": ("in [0, 1)", lambda v: 0 <= v < 1),
}


def check_values(
    cfg: Any, section: str, *, positive: Iterable[str] = (), non_negative: Iterable[str] = (),
    probability: Iterable[str] = (), decay: Iterable[str] = (),
) -> None:
    """Raise ValueError naming the dotted key (``section.name``; ``name`` for ``section=""``) of the
    first value of ``cfg`` (a dataclass, or a mapping such as ``objective.loss_weights``) that breaks
    its rule, so that a bad value fails when the config is built, not after hours of training.

    Every float of ``cfg`` must be finite, whatever its rule (NaN passes no comparison, and an
    infinite learning rate or guidance weight only ever yields NaN); None (an unset option) passes."""
    values = cfg if isinstance(cfg, Mapping) else {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    prefix = f"{section}." if section else ""
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{prefix}{name} must be finite, got {value!r}")
    for rule, names in (("positive", positive), ("non_negative", non_negative), ("probability", probability), ("decay", decay)):
        text, holds = RULES[rule]
        for name in names:
            if values[name] is not None and not holds(values[name]):
                raise ValueError(f"{prefix}{name} must be {text}, got {values[name]!r}")


def resolver_calls(text: str) -> list[str]:
    """The names of the resolvers that ``text`` calls when OmegaConf resolves it (``${oc.env:HOME}``
    calls ``oc.env``; ``${data.resolution}`` calls none). Parsed with OmegaConf's own grammar, so that
    nested (``${oc.env:${key}}``), escaped (``\\${...}``) and computed (``${${key}:x}``) forms count
    exactly as OmegaConf would resolve them; text it cannot parse fails later, when it is resolved."""
    if "${" not in text:
        return []
    try:
        tree = grammar_parser.parse(text)
    except GrammarParseError:
        return []
    names, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
            names.append(node.resolverName().getText())
        stack.extend(getattr(node, "children", None) or [])
    return names


def refuse_resolvers(node: Any, what: str, key: str = "") -> None:
    """ConfigError if a string in ``node`` (plain data of a file or override) calls a resolver (see
    the module docstring for why)."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            refuse_resolvers(v, what, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            refuse_resolvers(v, what, f"{key}[{i}]")
    elif isinstance(node, str) and (names := resolver_calls(node)):
        raise ConfigError(
            f"{what}: {key}={node!r} calls the resolver {names[0]!r}: resolvers are refused, since they read the "
            "environment or run code and the result would be stored in every checkpoint's config.json; write "
            "the value itself (interpolating another key, e.g. ${data.resolution}, is allowed)"
        )


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
    layers = [(origin, lambda: OmegaConf.create(raw))]
    layers += [(f"override {o!r}", lambda o=o: OmegaConf.from_dotlist([o])) for o in overrides]
    for what, make_layer in layers:
        try:
            layer = make_layer()
            refuse_resolvers(OmegaConf.to_container(layer, resolve=False), what)
            cfg = OmegaConf.merge(cfg, layer)
        except yaml.YAMLError as e:  # e.g. a tag such as !!python/object/apply:... in an override
            raise ConfigError(f"{what}: not a plain YAML value: {getattr(e, 'problem', None) or e}") from None
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
