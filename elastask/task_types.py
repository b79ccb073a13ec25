"""Task type rules: what Kibana's task definitions say of each type, and where each rule came from.

A rule (timeout, max attempts, cost, priority, concurrency limit) is taken from ``task_types.<type>``
in elastask.yaml, else from the catalogue of Kibana's own task types shipped with elastask
(``elastask/catalogue/kibana_task_types.yaml``, each entry citing the Kibana file it was read from),
else from the global defaults (``task_timeout``, ``max_attempts``, cost ``normal``, the document's own
priority). A catalogue key ending in ``*`` covers every type it prefixes (``alerting:*``: one type per
rule type); an exact key wins over a pattern, the longest pattern over a shorter one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any

import yaml

from elastask.core.intervals import parse_interval_ms
from elastask.errors import ConfigError

#: Kibana's capacity cost units (task_manager's TaskCost): a node of capacity 10 has 20 units.
COSTS = {"tiny": 1, "normal": 2, "large": 4, "extra-large": 10}
#: Kibana's TaskPriority, by elastask's names and Kibana's own; a number is taken as it is.
PRIORITIES = {
    "low": 1,
    "normal_long_running": 40,
    "normal": 50,
    "Low": 1,
    "NormalLongRunning": 40,
    "Normal": 50,
}
#: The keys a rule may set (elastask.yaml ``task_types.<type>`` and the catalogue alike).
RULE_KEYS = frozenset({"timeout", "max_attempts", "cost", "priority", "max_concurrency", "concurrency_group"})
CATALOGUE_FILE = "kibana_task_types.yaml"
#: What the catalogue says of where an entry was read (never a rule): the file, its commit, how names form.
CITATION_KEYS = frozenset({"source", "source_commit", "note", "names"})


@dataclass(frozen=True)
class TaskTypeRule:
    """What one place (elastask.yaml or the catalogue) says of one task type; None: not said there."""

    timeout_ms: int | None = None
    max_attempts: int | None = None
    cost: int | None = None
    priority: int | None = None
    max_concurrency: int | None = None
    concurrency_group: str | None = None
    source: str = ""


@dataclass(frozen=True)
class TaskTypeSettings:
    """The effective rule of one task type, every field filled in."""

    timeout_ms: int
    max_attempts: int
    cost: int
    #: Claim order when the document has no ``task.priority`` (None: Kibana's default, 50).
    priority: int | None = None
    #: At most this many of the type's tasks (or its group's) run at once on one Kibana node.
    max_concurrency: int | None = None
    #: Types sharing one limit (Kibana's SHARED_CONCURRENCY_TASKS); the type's own name when unset.
    concurrency_group: str | None = None
    #: Per field, where its value came from: "elastask.yaml", "catalogue: <Kibana file>" or "default".
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def limited(self) -> bool:
        return self.max_concurrency is not None


@dataclass(frozen=True)
class Catalogue:
    """Kibana's own task types, as read from its source: rules by type (or ``prefix*``), and removed types."""

    rules: Mapping[str, TaskTypeRule] = field(default_factory=dict)
    removed: frozenset[str] = frozenset()
    kibana_version: str = ""

    def rule_for(self, task_type: str) -> TaskTypeRule | None:
        """The exact entry, else the longest pattern that covers the type."""
        exact = self.rules.get(task_type)
        if exact is not None:
            return exact
        patterns = [k for k in self.rules if k.endswith("*") and task_type.startswith(k[:-1])]
        return self.rules[max(patterns, key=len)] if patterns else None


def parse_rule(entry: Any, where: str, source: str) -> TaskTypeRule:
    """One rule from a mapping with RULE_KEYS; raises ConfigError naming ``source`` and the key."""
    if not isinstance(entry, Mapping) or set(entry) - RULE_KEYS - CITATION_KEYS:
        raise ConfigError(source, where, f"expected a mapping with keys {sorted(RULE_KEYS)}")
    cost = entry.get("cost")
    if cost is not None and cost not in COSTS:
        raise ConfigError(source, where + ".cost", f"expected one of {', '.join(COSTS)}, got {cost!r}")
    return TaskTypeRule(
        timeout_ms=_interval(entry.get("timeout"), where + ".timeout", source),
        max_attempts=_positive(entry.get("max_attempts"), where + ".max_attempts", source),
        cost=None if cost is None else COSTS[cost],
        priority=_priority(entry.get("priority"), where + ".priority", source),
        max_concurrency=_positive(entry.get("max_concurrency"), where + ".max_concurrency", source),
        concurrency_group=_group(entry.get("concurrency_group"), where + ".concurrency_group", source),
        source=str(entry.get("source") or ""),
    )


def effective_rule(
    task_type: str,
    configured: Mapping[str, TaskTypeRule],
    catalogue: Catalogue,
    *,
    timeout_ms: int,
    max_attempts: int,
) -> TaskTypeSettings:
    """elastask.yaml over the catalogue over the defaults, field by field, with where each came from."""
    layers: list[tuple[str, TaskTypeRule]] = []
    if (mine := configured.get(task_type)) is not None:
        layers.append(("elastask.yaml", mine))
    if (kibana := catalogue.rule_for(task_type)) is not None:
        layers.append((f"catalogue: {kibana.source or 'Kibana'}", kibana))
    defaults = {"timeout_ms": timeout_ms, "max_attempts": max_attempts, "cost": COSTS["normal"]}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in ("timeout_ms", "max_attempts", "cost", "priority", "max_concurrency", "concurrency_group"):
        for origin, rule in layers:
            value = getattr(rule, name)
            if value is not None:
                values[name], sources[name] = value, origin
                break
        else:
            values[name], sources[name] = defaults.get(name), "default"
    if values["max_concurrency"] is not None and values["concurrency_group"] is None:
        values["concurrency_group"] = task_type
    return TaskTypeSettings(**values, sources=sources)


@cache
def load_catalogue() -> Catalogue:
    """The catalogue shipped with elastask (read once per process)."""
    path = files("elastask") / "catalogue" / CATALOGUE_FILE
    source = f"elastask/catalogue/{CATALOGUE_FILE}"
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return parse_catalogue(raw, source)


def parse_catalogue(raw: Any, source: str) -> Catalogue:
    """A catalogue from its YAML form (``task_types``, ``removed_types``, ``kibana_version``)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(source, "(top level)", "expected a mapping")
    entries = raw.get("task_types") or {}
    if not isinstance(entries, Mapping):
        raise ConfigError(source, "task_types", "expected a mapping of task type to its rule")
    rules = {str(name): parse_rule(entry, f"task_types.{name}", source) for name, entry in entries.items()}
    removed = raw.get("removed_types") or {}
    types = removed.get("types", []) if isinstance(removed, Mapping) else removed
    if not isinstance(types, list):
        raise ConfigError(source, "removed_types", "expected a list of task types")
    return Catalogue(rules, frozenset(str(t) for t in types), str(raw.get("kibana_version") or ""))


def _interval(value: Any, where: str, source: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_interval_ms(str(value))
    except ValueError as e:
        raise ConfigError(source, where, f"expected an interval such as 30s, 5m or 1h, got {value!r}") from e


def _positive(value: Any, where: str, source: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(source, where, f"expected a positive integer, got {value!r}")
    return value


def _priority(value: Any, where: str, source: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value in PRIORITIES:
        return PRIORITIES[value]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(source, where, f"expected low, normal_long_running, normal or a number, got {value!r}")


def _group(value: Any, where: str, source: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(source, where, f"expected a non-empty string, got {value!r}")
    return value
