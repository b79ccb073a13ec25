"""Settings: elastask.yaml, validated at load, with ``ELASTASK_*`` environment overrides.

The file comes from ``--config`` or ``ELASTASK_CONFIG`` (default ``./elastask.yaml``; a missing
default file means "all defaults"). Any key can be overridden by one rule: ``ELASTASK_`` + the key
upper-cased with dots as underscores (``elasticsearch.host`` -> ``ELASTASK_ELASTICSEARCH_HOST``).
Secrets are held in :class:`Secret`, which never prints its value.

Longer than most modules on purpose: the schema, its coercions and the error messages that name the
file and key belong together, so a new key is added in one place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from elastask.core.intervals import parse_interval_ms
from elastask.errors import ConfigError
from elastask.task_types import (
    COSTS,
    RULE_KEYS,
    Catalogue,
    TaskTypeRule,
    TaskTypeSettings,
    effective_rule,
    load_catalogue,
    parse_rule,
)

DEFAULT_PATH = "elastask.yaml"
ENV_PREFIX = "ELASTASK_"

__all__ = ["COSTS", "TaskTypeSettings"]  # re-exported: the rules live in task_types.py


class Secret:
    """A password or API key: ``str()``, ``repr()`` and f-strings show ``********``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    def __str__(self) -> str:
        return "********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ElasticsearchSettings:
    """How to reach the search engine that holds the task index."""

    host: str = "http://localhost:9200"
    username: str | None = None
    password: Secret | None = None
    api_key: Secret | None = None
    ca_certs: str | None = None
    verify_certs: bool = True
    request_timeout_s: float = 30.0


@dataclass(frozen=True)
class KibanaNode:
    """One Kibana node that elastask pushes tasks to."""

    url: str
    username: str | None = None
    password: Secret | None = None
    api_key: Secret | None = None
    capacity: int | None = None  # None: the global kibana_capacity
    id: str | None = None  # the ownerId; None: "kibana:<uuid>" from GET /api/status


@dataclass(frozen=True)
class KibanaSettings:
    """The Kibana nodes and how to talk to them."""

    hosts: tuple[KibanaNode, ...] = (KibanaNode(url="http://localhost:5601"),)
    request_timeout_s: float = 10.0
    ca_certs: str | None = None
    verify_certs: bool = True


@dataclass(frozen=True)
class Settings:
    """Everything elastask reads from elastask.yaml and the environment."""

    source: str = "<defaults>"
    elasticsearch: ElasticsearchSettings = ElasticsearchSettings()
    index: str = ".kibana_task_manager"
    redis_url: Secret = Secret("redis://localhost:6379/0")  # noqa: RUF009 - immutable
    #: The CA that signed Redis's certificate (rediss://); None: the system's CAs. Always verified.
    redis_ca_certs: str | None = None
    #: Redis Sentinel: the monitored master's name (redis.url lists the sentinels: sentinel://h:26379;...).
    redis_master_name: str | None = None
    redis_sentinel_password: Secret | None = None
    polling_interval_ms: int = 500
    idle_polling_interval_ms: int = 3000
    busy_polling_interval_ms: int = 250
    retry_interval_ms: int = 5000
    kibana_capacity: int = 10
    kibana: KibanaSettings = KibanaSettings()
    max_attempts: int = 3
    task_timeout_ms: int = 300_000
    claim_batch_size: int = 1000
    retry_delay_ms: int = 30_000
    max_retry_delay_ms: int = 3_600_000
    node_failure_threshold: int = 3
    node_probe_interval_ms: int = 5000
    log_format: str = "text"
    #: ``task_types.<type>`` of elastask.yaml, as written there (task_types.py merges them).
    task_types: Mapping[str, TaskTypeRule] = field(default_factory=dict)
    #: Kibana's own task types (the shipped catalogue; empty in bare Settings(), as in unit tests).
    catalogue: Catalogue = field(default_factory=Catalogue)
    _rules: dict[str, TaskTypeSettings] = field(default_factory=dict, compare=False, repr=False)

    def for_type(self, task_type: str) -> TaskTypeSettings:
        """The effective rule of one task type: elastask.yaml over the catalogue over the defaults."""
        rule = self._rules.get(task_type)
        if rule is None:
            rule = self._rules[task_type] = effective_rule(
                task_type,
                self.task_types,
                self.catalogue,
                timeout_ms=self.task_timeout_ms,
                max_attempts=self.max_attempts,
            )
        return rule

    def known_types(self) -> list[str]:
        """Every task type (or ``prefix*`` pattern) elastask.yaml or the catalogue sets a rule for."""
        return sorted({*self.task_types, *self.catalogue.rules})

    def priority_by_type(self) -> dict[str, int]:
        """Per known type (or pattern) with a priority of its own: it (for the claim search's order)."""
        rules = {name: self.for_type(name).priority for name in self.known_types()}
        return {name: priority for name, priority in rules.items() if priority is not None}

    def concurrency_groups(self) -> dict[str, tuple[int, tuple[str, ...]]]:
        """Per concurrency group (types with a maxConcurrency, or sharing one): its limit per Kibana node
        (the smallest of its types') and its types."""
        groups: dict[str, tuple[int, tuple[str, ...]]] = {}
        for name in self.known_types():
            rule = self.for_type(name)
            if rule.max_concurrency is None or rule.concurrency_group is None:
                continue
            limit, types = groups.get(rule.concurrency_group, (rule.max_concurrency, ()))
            groups[rule.concurrency_group] = (min(limit, rule.max_concurrency), (*types, name))
        return groups

    def max_attempts_by_type(self) -> dict[str, int]:
        """Per known type (or pattern), its effective maximum attempts (for the claim search)."""
        return {name: self.for_type(name).max_attempts for name in self.known_types()}

    def redis_sentinels(self) -> list[tuple[str, int]]:
        """The sentinels' (host, port) when ``redis.url`` is ``sentinel://...``, else an empty list."""
        if not self.redis_url.reveal().startswith("sentinel://"):
            return []
        return [_host_port(part) for part in self.redis_url.reveal().split(";") if part.strip()]

    def redis_master_password(self) -> str | None:
        """The Redis master's password, from the (first) sentinel URL's ``:password@``."""
        return urlsplit(self.redis_url.reveal().split(";")[0]).password

    def redis_tls(self) -> dict[str, Any]:
        """redis-py's TLS options for ``rediss://``: the certificate is always verified (against ca_certs)."""
        if not self.redis_url.reveal().startswith("rediss://"):
            return {}
        options: dict[str, Any] = {"ssl_cert_reqs": "required"}
        if self.redis_ca_certs:
            options["ssl_ca_certs"] = self.redis_ca_certs
        return options

    def capacity_units(self, node: KibanaNode) -> int:
        """A node's capacity in Kibana cost units (a normal task costs 2)."""
        return (node.capacity if node.capacity is not None else self.kibana_capacity) * COSTS["normal"]


# ---- the schema: key -> (kind, default). Every leaf key has one env variable. -------------------

_SCHEMA: dict[str, tuple[str, Any]] = {
    "elasticsearch.host": ("url", "http://localhost:9200"),
    "elasticsearch.username": ("str?", None),
    "elasticsearch.password": ("secret?", None),
    "elasticsearch.api_key": ("secret?", None),
    "elasticsearch.password_file": ("str?", None),
    "elasticsearch.api_key_file": ("str?", None),
    "elasticsearch.ca_certs": ("str?", None),
    "elasticsearch.verify_certs": ("bool", True),
    "elasticsearch.request_timeout_s": ("posfloat", 30.0),
    "index": ("str", ".kibana_task_manager"),
    "redis.url": ("redis_url", "redis://localhost:6379/0"),
    "redis.ca_certs": ("str?", None),
    "redis.master_name": ("str?", None),
    "redis.sentinel_password": ("secret?", None),
    "polling_interval": ("posint", 500),
    "idle_polling_interval": ("posint", 3000),
    "busy_polling_interval": ("posint", 250),
    "retry_interval": ("posint", 5000),
    "kibana_capacity": ("posint", 10),
    "kibana.hosts": ("hosts", ["http://localhost:5601"]),
    "kibana.username": ("str?", None),
    "kibana.password": ("secret?", None),
    "kibana.api_key": ("secret?", None),
    "kibana.password_file": ("str?", None),
    "kibana.api_key_file": ("str?", None),
    "kibana.request_timeout_s": ("posfloat", 10.0),
    "kibana.ca_certs": ("str?", None),
    "kibana.verify_certs": ("bool", True),
    "max_attempts": ("posint", 3),
    "task_timeout": ("interval", "5m"),
    "claim_batch_size": ("posint", 1000),
    "retry_delay": ("interval", "30s"),
    "max_retry_delay": ("interval", "1h"),
    "node_failure_threshold": ("posint", 3),
    "node_probe_interval": ("posint", 5000),
    "log_format": ("log_format", "text"),
    "task_types": ("task_types", {}),
}

_HOST_KEYS = {"url", "username", "password", "api_key", "capacity", "id"}
_TASK_TYPE_KEYS = RULE_KEYS


def env_name(key: str) -> str:
    """The environment variable that overrides a key: ``ELASTASK_`` + KEY with dots as underscores."""
    return ENV_PREFIX + key.upper().replace(".", "_")


def known_env_names() -> set[str]:
    """Every ELASTASK_* variable elastask reads (ELASTASK_CONFIG and one per key)."""
    return {ENV_PREFIX + "CONFIG"} | {env_name(key) for key, (kind, _) in _SCHEMA.items() if kind != "task_types"}


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
    for key, (kind, default) in _SCHEMA.items():
        name = env_name(key)
        if name in env and kind != "task_types":
            values[key] = _coerce(kind, _from_env(kind, env[name]), f"{name} (environment)", key)
        elif key in flat:
            values[key] = _coerce(kind, flat[key], source, key)
        else:
            values[key] = _coerce(kind, default, "<defaults>", key)
    _read_secret_files(values, source)
    return _build(values, source)


def _read_secret_files(values: dict[str, Any], source: str) -> None:
    """``<key>_file`` names a file holding the secret (Docker and Kubernetes secrets); the key wins if both."""
    for key in [k for k in values if k.endswith("_file")]:
        path, target = values[key], key.removesuffix("_file")
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
    sections = {key.split(".")[0] for key in _SCHEMA if "." in key}
    for top, value in raw.items():
        if not isinstance(top, str):
            raise ConfigError(source, repr(top), "keys must be strings")
        if top in sections and top not in _SCHEMA:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(source, top, f"expected a mapping, got {_kind_of(value)}")
            for sub, subvalue in value.items():
                key = f"{top}.{sub}"
                if key not in _SCHEMA:
                    raise ConfigError(source, key, f"unknown key; known keys of {top}: {_known(top)}")
                flat[key] = subvalue
        elif top in _SCHEMA:
            flat[top] = value
        else:
            known = ", ".join(sorted({k.split(".")[0] for k in _SCHEMA}))
            raise ConfigError(source, top, f"unknown key; known top-level keys: {known}")
    return flat


def _known(section: str) -> str:
    return ", ".join(k.split(".", 1)[1] for k in _SCHEMA if k.startswith(section + "."))


def _kind_of(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _from_env(kind: str, text: str) -> Any:
    """Environment values are strings; hosts are comma-separated URLs."""
    if kind == "hosts":
        return [part.strip() for part in text.split(",") if part.strip()]
    if kind.endswith("?") and text == "":
        return None
    return text


def _coerce(kind: str, value: Any, source: str, key: str) -> Any:
    optional = kind.endswith("?")
    base = kind.rstrip("?")
    if value is None:
        if optional:
            return None
        raise ConfigError(source, key, f"must be set ({_EXPECTED[base]})")
    try:
        return _COERCERS[base](value)
    except _Credentials as e:
        prefix = key.split(".")[0]
        raise ConfigError(
            source,
            key,
            f"has a user name and password in the URL ({e}); give them as {prefix}.username and "
            f"{prefix}.password (or {env_name(prefix + '.password')}, or {prefix}.password_file) instead",
        ) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(source, key, f"expected {_EXPECTED[base]}, got {_shown(key, value)}{_why(e)}") from None


class _Bad(ValueError):
    """A value error whose message is worth showing to the person who wrote the value."""


def _why(e: Exception) -> str:
    return f" ({e})" if isinstance(e, _Bad) and str(e) else ""


def _shown(key: str, value: Any) -> str:
    # Never echo a secret back, whatever its shape.
    if any(word in key for word in ("password", "api_key", "redis.url")):
        return _kind_of(value)
    return repr(value)


def _as_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("")
    return value


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "1", "yes", "on", "false", "0", "no", "off"}:
        return value.lower() in {"true", "1", "yes", "on"}
    raise TypeError("")


def _as_posint(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("")
    number = int(value) if isinstance(value, str) else value
    if not isinstance(number, int) or number <= 0:
        raise ValueError("")
    return number


def _as_posfloat(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("")
    number = float(value) if isinstance(value, (str, int, float)) else None
    if number is None or number <= 0:
        raise ValueError("")
    return number


def _as_url(value: Any, schemes: tuple[str, ...] = ("http", "https")) -> str:
    text = _as_str(value)
    parts = urlsplit(text)
    if parts.scheme not in schemes or not (parts.hostname or parts.scheme == "unix"):
        raise ValueError("")
    return text.rstrip("/")


def _as_http_url(value: Any) -> str:
    """An http(s) URL without credentials: they would show in logs, /metrics labels and ``config show``."""
    text = _as_url(value)
    parts = urlsplit(text)
    if parts.username is not None or parts.password is not None:
        raise _Credentials(f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}")
    return text


class _Credentials(ValueError):
    """A URL with user:password in it; the message is the URL without them."""


def _as_secret(value: Any) -> Secret:
    return Secret(_as_str(value))


def _as_redis_url(value: Any) -> Secret:
    text = _as_str(value)
    if text.startswith("sentinel://"):
        # kombu's form: sentinel://[:password@]host:port;sentinel://host2:port ...
        for part in text.split(";"):
            if part.strip():
                _host_port(_as_url(part.strip(), ("sentinel",)))
        return Secret(text)
    return Secret(_as_url(text, ("redis", "rediss", "unix")))


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url.strip())
    if not parts.hostname:
        raise _Bad(f"{parts.scheme}:// without a host")
    return parts.hostname, parts.port or 26379


def _as_interval(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value * 1000  # a bare number is seconds
    return parse_interval_ms(_as_str(value))


def _as_hosts(value: Any) -> tuple[dict[str, Any], ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not value:
        raise TypeError("")
    hosts = []
    for index, entry in enumerate(value):
        if isinstance(entry, str):
            entry = {"url": entry}
        if not isinstance(entry, dict):
            raise _Bad(f"entry {index} is {_kind_of(entry)}")
        unknown = set(entry) - _HOST_KEYS
        if unknown:
            raise _Bad(f"entry {index} has unknown keys {sorted(unknown)}; known: {sorted(_HOST_KEYS)}")
        try:
            url = _as_http_url(entry.get("url"))
        except _Credentials as e:
            raise _Credentials(f"entry {index}: {e}") from None
        except (TypeError, ValueError):
            raise _Bad(f"entry {index}: url must be an http(s) URL") from None
        hosts.append({**entry, "url": url})
    return tuple(hosts)


def _as_task_types(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise TypeError("")
    result = {}
    for name, entry in value.items():
        if not isinstance(entry, dict) or set(entry) - _TASK_TYPE_KEYS:
            raise _Bad(f"{name}: expected a mapping with keys {sorted(_TASK_TYPE_KEYS)}")
        result[str(name)] = entry
    return result


def _as_log_format(value: Any) -> str:
    if value not in ("text", "json"):
        raise ValueError("")
    return str(value)


_COERCERS: dict[str, Any] = {
    "log_format": _as_log_format,
    "str": _as_str,
    "bool": _as_bool,
    "posint": _as_posint,
    "posfloat": _as_posfloat,
    "url": _as_http_url,
    "secret": _as_secret,
    "redis_url": _as_redis_url,
    "interval": _as_interval,
    "hosts": _as_hosts,
    "task_types": _as_task_types,
}

_EXPECTED = {
    "log_format": "text or json",
    "str": "a non-empty string",
    "bool": "true or false",
    "posint": "a positive integer",
    "posfloat": "a positive number",
    "url": "an http:// or https:// URL",
    "secret": "a non-empty string",
    "redis_url": "a redis://, rediss:// or unix:// URL, or sentinel://host:26379;sentinel://host2:26379",
    "interval": "an interval such as 30s, 5m or 1h",
    "hosts": "a list of Kibana URLs (or mappings with url, username, password, api_key, capacity, id)",
    "task_types": "a mapping of task type to its rule: "
    "{timeout, max_attempts, cost, priority, max_concurrency, concurrency_group}",
}


def _build(values: dict[str, Any], source: str) -> Settings:
    nodes = []
    for index, entry in enumerate(values["kibana.hosts"]):
        key = f"kibana.hosts[{index}]"
        capacity = entry.get("capacity")
        nodes.append(
            KibanaNode(
                url=entry["url"],
                username=_coerce("str?", entry.get("username"), source, key + ".username"),
                password=_coerce("secret?", entry.get("password"), source, key + ".password"),
                api_key=_coerce("secret?", entry.get("api_key"), source, key + ".api_key"),
                capacity=None if capacity is None else _coerce("posint", capacity, source, key + ".capacity"),
                id=_coerce("str?", entry.get("id"), source, key + ".id"),
            )
        )
    if values["redis.url"].reveal().startswith("sentinel://") and not values["redis.master_name"]:
        raise ConfigError(
            source,
            "redis.master_name",
            "must be set when redis.url lists sentinels: the name of `sentinel monitor <name> ...` "
            "(ELASTASK_REDIS_MASTER_NAME)",
        )
    urls = [node.url for node in nodes]
    if len(set(urls)) != len(urls):
        raise ConfigError(source, "kibana.hosts", "lists the same URL twice")
    task_types = {name: parse_rule(entry, f"task_types.{name}", source) for name, entry in values["task_types"].items()}
    _check_costs_fit(task_types, nodes, values["kibana_capacity"], source)
    return Settings(
        source=source,
        elasticsearch=ElasticsearchSettings(
            host=values["elasticsearch.host"],
            username=values["elasticsearch.username"],
            password=values["elasticsearch.password"],
            api_key=values["elasticsearch.api_key"],
            ca_certs=values["elasticsearch.ca_certs"],
            verify_certs=values["elasticsearch.verify_certs"],
            request_timeout_s=values["elasticsearch.request_timeout_s"],
        ),
        index=values["index"],
        redis_url=values["redis.url"],
        redis_ca_certs=values["redis.ca_certs"],
        redis_master_name=values["redis.master_name"],
        redis_sentinel_password=values["redis.sentinel_password"],
        polling_interval_ms=values["polling_interval"],
        idle_polling_interval_ms=values["idle_polling_interval"],
        busy_polling_interval_ms=values["busy_polling_interval"],
        retry_interval_ms=values["retry_interval"],
        kibana_capacity=values["kibana_capacity"],
        kibana=KibanaSettings(
            hosts=tuple(_with_shared_auth(node, values) for node in nodes),
            request_timeout_s=values["kibana.request_timeout_s"],
            ca_certs=values["kibana.ca_certs"],
            verify_certs=values["kibana.verify_certs"],
        ),
        max_attempts=values["max_attempts"],
        task_timeout_ms=values["task_timeout"],
        claim_batch_size=values["claim_batch_size"],
        retry_delay_ms=values["retry_delay"],
        max_retry_delay_ms=values["max_retry_delay"],
        node_failure_threshold=values["node_failure_threshold"],
        node_probe_interval_ms=values["node_probe_interval"],
        log_format=values["log_format"],
        task_types=task_types,
    )


def _check_costs_fit(
    task_types: dict[str, TaskTypeRule], nodes: list[KibanaNode], kibana_capacity: int, source: str
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


def _with_shared_auth(node: KibanaNode, values: dict[str, Any]) -> KibanaNode:
    """kibana.username/password/api_key apply to every node that does not set its own."""
    if node.username or node.api_key:
        return node
    return KibanaNode(
        url=node.url,
        username=values["kibana.username"],
        password=values["kibana.password"],
        api_key=values["kibana.api_key"],
        capacity=node.capacity,
        id=node.id,
    )
