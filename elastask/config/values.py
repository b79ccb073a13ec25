"""How each kind of setting is read from YAML or the environment, and what a bad value is told.

A *kind* names one rule (``posint``, ``interval``, ``url`` ...); ``kind?`` is the same rule where
``null`` (or an empty environment variable) means unset. :func:`coerce` applies one and raises a
ConfigError naming the file and key, never echoing a secret.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from elastask.core.intervals import parse_interval_ms
from elastask.core.pauses import parse_entry
from elastask.errors import ConfigError
from elastask.task_types import RULE_KEYS

ENV_PREFIX = "ELASTASK_"
#: The keys of one entry of ``kibana.hosts``.
HOST_KEYS = frozenset({"url", "username", "password", "api_key", "capacity", "id"})


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


def env_name(key: str) -> str:
    """The environment variable that overrides a key: ``ELASTASK_`` + KEY with dots as underscores."""
    return ENV_PREFIX + key.upper().replace(".", "_")


def from_env(kind: str, text: str) -> Any:
    """Environment values are strings; hosts are comma-separated URLs."""
    if kind in ("hosts", "pause_list"):
        return [part.strip() for part in text.split(",") if part.strip()]
    if kind.endswith("?") and text == "":
        return None
    return text


def coerce(kind: str, value: Any, source: str, key: str) -> Any:
    """``value`` read by the rule ``kind``; a ConfigError naming ``source`` and ``key`` if it is bad."""
    optional = kind.endswith("?")
    base = kind.rstrip("?")
    if value is None:
        if optional:
            return None
        raise ConfigError(source, key, f"must be set ({EXPECTED[base]})")
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
        raise ConfigError(source, key, f"expected {EXPECTED[base]}, got {_shown(key, value)}{_why(e)}") from None


def kind_of(value: Any) -> str:
    """How a person would call the YAML value's type ("a mapping", "a list" ...)."""
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def host_port(url: str) -> tuple[str, int]:
    """A sentinel URL's (host, port); the port defaults to Sentinel's 26379."""
    parts = urlsplit(url.strip())
    if not parts.hostname:
        raise _Bad(f"{parts.scheme}:// without a host")
    return parts.hostname, parts.port or 26379


class _Bad(ValueError):
    """A value error whose message is worth showing to the person who wrote the value."""


class _Credentials(ValueError):
    """A URL with user:password in it; the message is the URL without them."""


def _why(e: Exception) -> str:
    return f" ({e})" if isinstance(e, _Bad) and str(e) else ""


def _shown(key: str, value: Any) -> str:
    # Never echo a secret back, whatever its shape.
    if any(word in key for word in ("password", "api_key", "redis.url")):
        return kind_of(value)
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


def _as_secret(value: Any) -> Secret:
    return Secret(_as_str(value))


def _as_redis_url(value: Any) -> Secret:
    text = _as_str(value)
    if text.startswith("sentinel://"):
        # kombu's form: sentinel://[:password@]host:port;sentinel://host2:port ...
        for part in text.split(";"):
            if part.strip():
                host_port(_as_url(part.strip(), ("sentinel",)))
        return Secret(text)
    return Secret(_as_url(text, ("redis", "rediss", "unix")))


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
            raise _Bad(f"entry {index} is {kind_of(entry)}")
        unknown = set(entry) - HOST_KEYS
        if unknown:
            raise _Bad(f"entry {index} has unknown keys {sorted(unknown)}; known: {sorted(HOST_KEYS)}")
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
        if not isinstance(entry, dict) or set(entry) - RULE_KEYS:
            raise _Bad(f"{name}: expected a mapping with keys {sorted(RULE_KEYS)}")
        result[str(name)] = entry
    return result


def _as_pause_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError("")
    for item in value:
        try:
            parse_entry(item)
        except ValueError as e:
            raise _Bad(str(e)) from None
    return tuple(value)


def _as_log_format(value: Any) -> str:
    if value not in ("text", "json"):
        raise ValueError("")
    return str(value)


_COERCERS: dict[str, Callable[[Any], Any]] = {
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
    "pause_list": _as_pause_list,
}

#: What each kind expects, as a bad value's message says it.
EXPECTED = {
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
    "pause_list": "a list of all, type:<task type> or node:<ownerId, URL or id>",
    "task_types": "a mapping of task type to its rule: "
    "{timeout, max_attempts, cost, priority, max_concurrency, concurrency_group}",
}
