"""``elastask pause`` / ``resume``, and what status, /health and /metrics say of the pauses."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from elastask.core.clock import epoch_ms
from elastask.core.intervals import format_date
from elastask.core.pauses import PauseSet, entry
from elastask.parts.cadence import Cadence
from elastask.parts.pauses import KibanaPauseState, PauseStore
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
    pauses = store.read(epoch_ms(now))
    restored = store.restored_at_ms()
    kibana = store.kibana_state()
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
        "kibana_execution_pause": None if kibana is None else kibana_described(kibana, now),
    }


def kibana_described(state: KibanaPauseState, now: datetime) -> dict[str, Any]:
    """Kibana's execution pause as last read: from which node, how long ago, and what it said."""
    return {
        "read_from": state.node_url,
        "seconds_ago": round(now.timestamp() - state.read_ms / 1000, 1),
        "answer": "read" if state.readable else state.detail,
        "paused": state.paused,
        "paused_task_types": list(state.paused_types),
        "updated_at": state.updated_at,
        "updated_by": state.updated_by,
    }


def lines(pauses: PauseSet) -> list[str]:
    """One line per pause, for the terminal."""
    if not pauses:
        return ["nothing is paused"]
    return [f"paused: {p.text}{_NOTES.get(p.source, '')}" for p in pauses.pauses]


#: Where a pause that ``elastask resume`` does not lift is lifted.
_NOTES = {
    "config": " (elastask.yaml paused:, lifted in the file)",
    "kibana": " (Kibana's execution pause, lifted in Kibana: POST /internal/task_manager/execution/_resume)",
}
