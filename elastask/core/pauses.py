"""Pauses: what elastask must not claim or push for now (everything, a task type, a Kibana node). Pure.

A pause is ``all``, ``type:<task type>`` (``prefix*`` covers every type it prefixes, as in
``task_types``) or ``node:<ownerId, URL or configured id>``. Pauses come from Redis (``elastask
pause``, held across every worker and restart), from ``paused:`` in elastask.yaml (always applied,
whatever Redis holds) and from Kibana's own execution pause where its nodes expose it (lifted in
Kibana). While something is paused nothing new is claimed or pushed for it: running
tasks finish, due tasks wait and keep their attempts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

SCOPES = ("all", "type", "node")


def parse_entry(text: str) -> tuple[str, str]:
    """``all``, ``type:X`` or ``node:Y`` as (scope, name); ValueError naming what is expected."""
    if text == "all":
        return "all", ""
    scope, _, name = text.partition(":")
    if scope in ("type", "node") and name:
        return scope, name
    raise ValueError(f"{text!r}: expected all, type:<task type> or node:<ownerId, URL or id>")


def entry(scope: str, name: str = "") -> str:
    """The text of a pause: ``all``, ``type:X``, ``node:Y``."""
    return "all" if scope == "all" else f"{scope}:{name}"


@dataclass(frozen=True)
class Pause:
    """One thing paused, since when (ms since the epoch; None for elastask.yaml's) and from where."""

    scope: str
    name: str
    since_ms: int | None
    source: str  # "redis" (elastask pause), "config" (elastask.yaml paused:) or "kibana" (Kibana's execution pause)

    @property
    def text(self) -> str:
        return entry(self.scope, self.name)


@dataclass(frozen=True)
class PauseSet:
    """Everything paused now; answers whether a task type or a node may get work."""

    pauses: tuple[Pause, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.pauses)

    @property
    def everything(self) -> bool:
        return any(p.scope == "all" for p in self.pauses)

    def types(self) -> set[str]:
        """The paused task types (and ``prefix*`` patterns), for the claim search to leave out."""
        return {p.name for p in self.pauses if p.scope == "type"}

    def type_paused(self, task_type: str) -> bool:
        return self.everything or any(_matches(name, task_type) for name in self.types())

    def node_paused(self, names: Iterable[str | None]) -> bool:
        """True when a node known by any of ``names`` (its ownerId, URL, configured id) is paused."""
        paused = {p.name for p in self.pauses if p.scope == "node"}
        return self.everything or any(name in paused for name in names if name)


def kibana_pauses(paused: bool, paused_types: Iterable[str], since_ms: int | None) -> tuple[Pause, ...]:
    """Kibana's execution pause as pauses: ``paused`` is everything, ``paused_task_types`` each a type."""
    everything = (Pause("all", "", since_ms, "kibana"),) if paused else ()
    return everything + tuple(Pause("type", t, since_ms, "kibana") for t in sorted(set(paused_types)))


def _matches(pattern: str, task_type: str) -> bool:
    return task_type.startswith(pattern[:-1]) if pattern.endswith("*") else task_type == pattern
