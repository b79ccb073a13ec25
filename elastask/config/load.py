"""Reading elastask.yaml and the environment into Settings; every check that spans keys.

The keys, their kinds and defaults come from the declarations in config/settings.py. Any key is
overridden by one rule: ``ELASTASK_`` + the key upper-cased with dots as underscores.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from elastask.config.settings import Key, KibanaNode, Settings, declared_keys
from elastask.config.values import ENV_PREFIX, Secret, coerce, env_name, from_env, kind_of
from elastask.errors import ConfigError
from elastask.task_types import COSTS, TaskTypeRule, load_catalogue, parse_rule

DEFAULT_PATH = "elastask.yaml"


def _schema() -> dict[str, Key]:
    """Every key of elastask.yaml (with the ``<key>_file`` of each secret readable from a file), in order."""
    keys: dict[str, Key] = {}
    for _, key in declared_keys(Settings):
        keys[key.name] = key
        if key.from_file:
            keys[key.name + "_file"] = Key(key.name + "_file", "str?", None, "")
    return keys


#: Every key of elastask.yaml, in the order elastask.yaml lists them.
SCHEMA = _schema()
#: Which Settings field (dotted through sections) holds each key.
_FIELDS = {key.name: name for name, key in declared_keys(Settings)}


def known_env_names() -> set[str]:
    """Every ELASTASK_* variable elastask reads (ELASTASK_CONFIG and one per key)."""
    return {ENV_PREFIX + "CONFIG"} | {env_name(name) for name, key in SCHEMA.items() if key.kind != "task_types"}


def load_settings(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read, override and validate the settings; raises ConfigError naming the file and key."""
    env = os.environ if env is None else env
    explicit = path is not None or bool(env.get(ENV_PREFIX + "CONFIG"))
    chosen = Path(path if path is not None else env.get(ENV_PREFIX + "CONFIG") or DEFAULT_PATH)
    source = str(chosen)
    raw: Any = {}
    if chosen.exists():
        try:
            raw = yaml.safe_load(chosen.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark is not None else "(whole file)"
            raise ConfigError(source, where, f"not valid YAML ({getattr(e, 'problem', e)})") from e
        except OSError as e:
            raise ConfigError(source, "(file)", f"cannot be read: {e.strerror}") from e
    elif explicit:
        raise ConfigError(source, "(file)", "does not exist; pass an existing file to --config or ELASTASK_CONFIG")
    else:
        source = "<defaults>"
    if not isinstance(raw, dict):
        raise ConfigError(source, "(top level)", "expected a mapping of keys to values")
    return replace(parse_settings(raw, source=source, env=env), catalogue=load_catalogue())


def parse_settings(raw: Mapping[str, Any], *, source: str, env: Mapping[str, str]) -> Settings:
    """Validate a parsed YAML mapping plus environment overrides into Settings."""
    flat = _flatten(raw, source)
    values: dict[str, Any] = {}
    for name, key in SCHEMA.items():
        variable = env_name(name)
        if variable in env and key.kind != "task_types":
            values[name] = coerce(key.kind, from_env(key.kind, env[variable]), f"{variable} (environment)", name)
        elif name in flat:
            values[name] = coerce(key.kind, flat[name], source, name)
        else:
            values[name] = coerce(key.kind, key.default, "<defaults>", name)
    _read_secret_files(values, source)
    _check_sentinel(values, source)
    values["kibana.hosts"] = _nodes(values, source)
    task_types = {name: parse_rule(entry, f"task_types.{name}", source) for name, entry in values["task_types"].items()}
    _check_costs_fit(task_types, values["kibana.hosts"], values["kibana_capacity"], source)
    values["task_types"] = task_types
    settings: Settings = _build(Settings, values, prefix="", source=source)
    return settings


def _build(cls: type, values: dict[str, Any], *, prefix: str, source: str) -> Any:
    """An instance of ``cls`` (Settings or one of its sections) from the values by key."""
    by_field = {field: name for name, field in _FIELDS.items()}
    arguments: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            arguments[f.name] = _build(f.metadata["section"], values, prefix=f"{prefix}{f.name}.", source=source)
        elif "key" in f.metadata:
            arguments[f.name] = values[by_field[prefix + f.name]]
    if cls is Settings:
        arguments["source"] = source
    return cls(**arguments)


def _read_secret_files(values: dict[str, Any], source: str) -> None:
    """``<key>_file`` names a file holding the secret (Docker and Kubernetes secrets); the key wins if both."""
    for key in [k for k in values if k.endswith("_file")]:
        path, target = values.pop(key), key.removesuffix("_file")
        if path is None or values.get(target) is not None:
            continue
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(source, key, f"cannot read {path}: {e.strerror}") from None
        if not text:
            raise ConfigError(source, key, f"{path} is empty")
        values[target] = Secret(text)


def _flatten(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Dotted keys for known sections; an unknown key is an error naming it."""
    flat: dict[str, Any] = {}
    sections = {key.split(".")[0] for key in SCHEMA if "." in key}
    for top, value in raw.items():
        if not isinstance(top, str):
            raise ConfigError(source, repr(top), "keys must be strings")
        if top in sections and top not in SCHEMA:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(source, top, f"expected a mapping, got {kind_of(value)}")
            for sub, subvalue in value.items():
                key = f"{top}.{sub}"
                if key not in SCHEMA:
                    known = ", ".join(k.split(".", 1)[1] for k in SCHEMA if k.startswith(top + "."))
                    raise ConfigError(source, key, f"unknown key; known keys of {top}: {known}")
                flat[key] = subvalue
        elif top in SCHEMA:
            flat[top] = value
        else:
            known = ", ".join(sorted({k.split(".")[0] for k in SCHEMA}))
            raise ConfigError(source, top, f"unknown key; known top-level keys: {known}")
    return flat


def _check_sentinel(values: dict[str, Any], source: str) -> None:
    if values["redis.url"].reveal().startswith("sentinel://") and not values["redis.master_name"]:
        raise ConfigError(
            source,
            "redis.master_name",
            "must be set when redis.url lists sentinels: the name of `sentinel monitor <name> ...` "
            "(ELASTASK_REDIS_MASTER_NAME)",
        )


def _nodes(values: dict[str, Any], source: str) -> tuple[KibanaNode, ...]:
    """``kibana.hosts`` as nodes; kibana.username/password/api_key apply to every node without its own."""
    nodes = []
    for index, entry in enumerate(values["kibana.hosts"]):
        key = f"kibana.hosts[{index}]"
        capacity = entry.get("capacity")
        node = KibanaNode(
            url=entry["url"],
            username=coerce("str?", entry.get("username"), source, key + ".username"),
            password=coerce("secret?", entry.get("password"), source, key + ".password"),
            api_key=coerce("secret?", entry.get("api_key"), source, key + ".api_key"),
            capacity=None if capacity is None else coerce("posint", capacity, source, key + ".capacity"),
            id=coerce("str?", entry.get("id"), source, key + ".id"),
        )
        if not (node.username or node.api_key):
            node = replace(
                node,
                username=values["kibana.username"],
                password=values["kibana.password"],
                api_key=values["kibana.api_key"],
            )
        nodes.append(node)
    urls = [node.url for node in nodes]
    if len(set(urls)) != len(urls):
        raise ConfigError(source, "kibana.hosts", "lists the same URL twice")
    return tuple(nodes)


def _check_costs_fit(
    task_types: dict[str, TaskTypeRule], nodes: tuple[KibanaNode, ...], kibana_capacity: int, source: str
) -> None:
    """A task type that costs more than the biggest node holds could never run: say so at load."""
    biggest = max([kibana_capacity, *(n.capacity for n in nodes if n.capacity is not None)]) * COSTS["normal"]
    for name, rule in task_types.items():
        if rule.cost is not None and rule.cost > biggest:
            raise ConfigError(
                source,
                f"task_types.{name}.cost",
                f"{rule.cost} units, more than any Kibana node holds ({biggest} units: a capacity of "
                f"{biggest // COSTS['normal']} normal tasks); its tasks could never run. Raise kibana_capacity "
                "(or one node's capacity) or choose a smaller cost",
            )
