"""How a simulated Kibana node writes run outcomes: Kibana's buffered task store (``buffered_task_store.ts``).

Every run a Kibana node finishes -- claimed by its own poller or pushed to ``_run_now`` -- ends in
its task runner, which writes the outcome through one ``BufferedTaskStore``: updates and removals
are buffered for up to 50 ms or 100 operations (``lib/bulk_operation_buffer.ts``) and written with
one ``_bulk``; removals go through the saved-objects ``bulkDelete``, which reads the documents
first (``bulkGet``). The run's caller waits until its own operation was written.

So both benchmark modes share one outcome path and differ only in how runs are claimed. (Until
0.4 the push path wrote each outcome with a request of its own: a ``DELETE`` per task, which cost
the engine 2-5 ms of CPU each in two runs of ``bench/engine_costs.py`` -- 10-20 times a document
in a ``_bulk`` -- a third of this 2-core machine at 300 tasks/s.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp

from elastask.core.intervals import format_date, parse_interval_ms

log = logging.getLogger(__name__)

#: Kibana's buffer: flushed after this long, or at this many operations.
BUFFER_MAX_DURATION_S = 0.05
BUFFER_MAX_OPERATIONS = 100


class EngineBusy(Exception):
    """The engine answered 429 or 5xx: backpressure (the pull model's managed configuration counts it)."""


#: One operation: ``{"remove": id}``, or ``{"update": id, "fields": {...}}`` with ``seq_no`` and
#: ``primary_term`` when the write is conditional on the version (Kibana's poller) or without them
#: (the ``_run_now`` contract: no version check).
Operation = dict[str, Any]

#: A recurring task without a usable ``schedule.interval`` runs again after this long.
DEFAULT_INTERVAL_MS = 60_000


def recurring_interval_ms(task: dict[str, Any]) -> int | None:
    """A finished run's interval: None for a one-shot task (removed), else its schedule's interval."""
    schedule = task.get("schedule")
    if not isinstance(schedule, dict):
        return None
    interval = schedule.get("interval")
    return parse_interval_ms(interval) if isinstance(interval, str) else DEFAULT_INTERVAL_MS


def rescheduled_fields(task: dict[str, Any], run_at: datetime) -> dict[str, Any]:
    """A recurring task's fields after a run, as Kibana's task runner writes them: idle, next
    ``runAt``, attempts reset, lease cleared; the simulated task's state counts its runs."""
    state = task.get("state")
    if isinstance(state, str):
        state = json.loads(state or "{}")
    return {
        "state": json.dumps({**(state or {}), "runs": int((state or {}).get("runs", 0)) + 1}),
        "status": "idle",
        "runAt": format_date(run_at),
        "attempts": 0,
        "startedAt": None,
        "retryAt": None,
    }


class BufferedTaskStore:
    """Outcome writes of one node, buffered into one ``_bulk`` per 50 ms (``max_duration_s``) or 100 operations."""

    def __init__(
        self,
        write: Callable[[list[Operation]], Awaitable[None]],
        failed: Callable[[int, Exception], None],
        *,
        max_duration_s: float = BUFFER_MAX_DURATION_S,
    ) -> None:
        self.write = write
        self.failed = failed
        self.max_duration_s = max_duration_s
        self.pending: list[tuple[Operation, asyncio.Future[None]]] = []
        self.flusher: asyncio.Task[None] | None = None

    async def submit(self, operation: Operation) -> None:
        """Queue one operation; wait until it was written (or its batch failed)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((operation, future))
        if len(self.pending) >= BUFFER_MAX_OPERATIONS:
            await self.flush()
        elif self.flusher is None:
            self.flusher = asyncio.get_running_loop().create_task(self._flush_later())
        await future

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.max_duration_s)
        self.flusher = None
        await self.flush()

    async def flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        try:
            await self.write([op for op, _ in batch])
        except Exception as e:  # Kibana logs a failed outcome write; the lease brings the task back
            self.failed(len(batch), e)
        for _, future in batch:
            if not future.done():
                future.set_result(None)


async def write_outcomes(session: aiohttp.ClientSession, index_url: str, operations: list[Operation]) -> list[bool]:
    """One buffered batch: removals (``bulkGet`` then delete) and updates in one ``_bulk``.

    Returns, for every operation in order, whether the engine acknowledged it (a removal of a
    document already gone is not acknowledged, as saved objects' ``bulkDelete`` reports it not found).
    """
    removals = [op["remove"] for op in operations if "remove" in op]
    present = set()
    if removals:
        docs = (await post_json(session, f"{index_url}/_mget", {"ids": removals}))["docs"]
        present = {d["_id"] for d in docs if d.get("found")}
    lines: list[str] = []
    written: list[int] = []  # positions of the operations sent in the _bulk
    for position, op in enumerate(operations):
        if "remove" in op and op["remove"] in present:
            lines.append(json.dumps({"delete": {"_id": op["remove"]}}))
            written.append(position)
        elif "update" in op:
            meta: dict[str, Any] = {"_id": op["update"]}
            if "seq_no" in op:
                meta.update(if_seq_no=op["seq_no"], if_primary_term=op["primary_term"])
            lines.append(json.dumps({"update": meta}))
            lines.append(json.dumps({"doc": {"task": op["fields"]}}))
            written.append(position)
    ok = [False] * len(operations)
    if lines:
        answer = await post_bulk(session, f"{index_url}/_bulk", lines)
        for position, item in zip(written, answer["items"], strict=True):
            ok[position] = all(200 <= result.get("status", 500) < 300 for result in item.values())
    return ok


async def post_json(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post(url, json=body) as answer:
        if answer.status == 429 or answer.status >= 500:
            raise EngineBusy(f"{url} answered {answer.status}")
        data: dict[str, Any] = await answer.json()
        return data


async def post_bulk(session: aiohttp.ClientSession, url: str, lines: list[str]) -> dict[str, Any]:
    headers = {"Content-Type": "application/x-ndjson"}
    async with session.post(url, data="\n".join(lines) + "\n", headers=headers) as answer:
        if answer.status == 429 or answer.status >= 500:
            raise EngineBusy(f"{url} answered {answer.status}")
        data: dict[str, Any] = await answer.json()
        return data
