"""The search hits a claim cycle may claim, read again in real time (the search is near-real-time)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from elastask.loops.claim.summary import ClaimSummary
from elastask.runtime import Runtime

#: More hits read than the room takes, for those found stale, as a share of the room, and in hits.
STALE_SHARE = 4
STALE_HITS = 2


def read_limit(
    hits: Sequence[dict[str, Any]],
    leased: Collection[str],
    room_units: int,
    cost_of: Callable[[str], int],
    cheapest: int,
) -> int:
    """How many hits not leased a cycle reads in real time: those whose costs fill the room and a quarter
    more, plus STALE_HITS (for stale hits, and tasks that fit nowhere). A hit's cost is its type's, from the
    search's doc values or its source; a hit without either counts as the cheapest type (read more, never
    fewer). Reading every hit the room could take were each the cheapest read twice the documents needed
    when the tasks cost 2 units and a 1-unit type is known."""
    budget = room_units + room_units // STALE_SHARE
    count = 0
    for hit in hits:
        if budget <= 0:
            break
        if str(hit["_id"]) in leased:
            continue
        task_type = _task_type(hit)
        budget -= cheapest if task_type is None else max(cheapest, cost_of(task_type))
        count += 1
    return count + STALE_HITS


def _task_type(hit: dict[str, Any]) -> str | None:
    values = hit.get("fields", {}).get("task.taskType")
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0]
    task = hit.get("_source", {}).get("task") if isinstance(hit.get("_source"), dict) else None
    found = task.get("taskType") if isinstance(task, dict) else None
    return found if isinstance(found, str) else None


def fresh_hits(
    rt: Runtime,
    hits: Sequence[dict[str, Any]],
    leased: set[str],
    summary: ClaimSummary,
    limit: int,
    seen: set[str] | None = None,
) -> list[dict[str, Any]]:
    """The documents of the search hits that are still as the search saw them, read in real time.

    As Kibana's mget claimer does: the search is near-real-time, ``mget`` is not. A hit is stale
    when this ledger already holds it (we claimed it moments ago), or when its real-time version
    differs (Kibana wrote an outcome, another claim won) or it is gone. Only the first ``limit``
    other hits are read: the most this cycle can claim, plus a margin, so the engine does not read
    documents that would be left unclaimed anyway. Returns the documents, in search order.

    A hit that carries its source (a refill session's search right after a claim, at most
    UNREAD_HITS_MAX_AGE_MS old) is not read again: the claim write is conditional on the version the
    search saw, so a hit gone stale since is a lost race (409) or a missing document, its slot given
    back -- never a claim over a newer write. This saves the engine round trip between a freed slot
    and its claim; hits without their source (every other search) are read as above.
    """
    candidates: list[dict[str, Any]] = []
    for hit in hits:
        if str(hit["_id"]) in leased:
            summary.stale += 1
        elif len(candidates) < limit:
            candidates.append(hit)
        else:
            continue
        if seen is not None:
            seen.add(str(hit["_id"]))
    current = rt.store.mget_sources([str(hit["_id"]) for hit in candidates if "_source" not in hit])
    fresh = []
    for hit in candidates:
        if "_source" in hit:
            fresh.append(hit)
            continue
        if str(hit["_id"]) not in current:
            summary.stale += 1  # its real-time read failed: not claimed this cycle
            continue
        now_hit = current[str(hit["_id"])]
        if now_hit is None:
            summary.missing += 1
        elif (now_hit.get("_seq_no"), now_hit.get("_primary_term")) != (hit.get("_seq_no"), hit.get("_primary_term")):
            summary.stale += 1
        else:
            fresh.append(now_hit)
    return fresh
