"""``elastask pause`` / ``resume``, and what status, /health and /metrics say of the pauses."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from elastask.core.intervals import format_date
from elastask.core.pauses import PauseSet, entry
from elastask.loops.cadence import Cadence
from elastask.parts.pauses import PauseStore
from elastask.runtime import Runtime


def entries(types: Sequence[str], nodes: Sequence[str]) -> list[str]:
    """The pauses a command names; none named: everything (``all``)."""
    return [entry("type", t) for t in types] + [entry("node", n) for n in nodes]


def pause(rt: Runtime, names: Sequence[str]) -> PauseSet:
    """Pause these (or everything), for every worker, from their next claim cycle and dispatch job."""
    store = PauseStore(rt.redis, rt.settings.paused)
    now_ms = rt.ledger.now_ms()
    store.pause(list(names) or ["all"], now_ms)
    return store.read(now_ms)


def resume(rt: Runtime, names: Sequence[str]) -> tuple[list[str], PauseSet]:
    """Resume these (or everything Redis holds); the claim loop looks again at once. Returns what was
    resumed and what stays paused (elastask.yaml's ``paused:`` stays until the file changes)."""
    store = PauseStore(rt.redis, rt.settings.paused)
    resumed = store.resume(list(names) or None)
    Cadence(rt.redis).wake()
    return resumed, store.read(rt.ledger.now_ms())


def described(rt: Runtime, now: datetime) -> dict[str, Any]:
    """What is paused, since when and from where, for status and /health; and a loss Redis had."""
    store = PauseStore(rt.redis, rt.settings.paused)
    pauses = store.read(int(now.timestamp() * 1000))
    restored = store.restored_at_ms()
    return {
        "paused": [
            {
                "pause": p.text,
                "source": p.source,
                "since": None if p.since_ms is None else format_date(datetime.fromtimestamp(p.since_ms / 1000, UTC)),
                "seconds": None if p.since_ms is None else round(now.timestamp() - p.since_ms / 1000, 1),
            }
            for p in pauses.pauses
        ],
        "pauses_restored_at": None if restored is None else format_date(datetime.fromtimestamp(restored / 1000, UTC)),
    }


def lines(pauses: PauseSet) -> list[str]:
    """One line per pause, for the terminal."""
    if not pauses:
        return ["nothing is paused"]
    return [
        f"paused: {p.text}" + (" (elastask.yaml paused:, lifted in the file)" if p.source == "config" else "")
        for p in pauses.pauses
    ]
