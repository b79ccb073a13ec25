"""Kibana's own pull claiming (the ``mget`` strategy), as the baseline the benchmarks compare against.

Each simulated node claims for itself as Kibana 8.18+/9.x does by default. Paths below are under
``x-pack/platform/plugins/shared/task_manager/server/``; the rules themselves are in kibana_rules.py.

1. search (``task_claimers/strategy_mget.ts``): full ``_source``, ``seq_no_primary_term``;
   ``bool.must`` with the claimable task types, ``type: task``, enabled, and (``idle`` and
   ``runAt <= now``) or (``running``/``claiming`` and ``retryAt <= now``), never ``unrecognized``,
   in the node's partitions (``lib/assign_pod_partitions.ts``: sorted node ids, two per partition;
   tasks without a partition are searched by all); two painless ``_script`` sorts, priority by task
   type (default 50) then ``retryAt`` if set else ``runAt``; size = available cost units x 4;
2. ``mget`` the hits, drop the stale (``_seq_no`` changed) and missing ones;
3. select by available capacity (cost 2 per normal task; stop at the first that does not fit);
4. one ``_bulk`` of partial updates with ``if_seq_no``/``if_primary_term`` (``markTaskAsRunning``
   fields; ``retryAt`` from ``lib/get_retry_at.ts``); a 409 is a lost race with another node;
5. ``bulkGet`` (``mget``) of the claimed tasks before any runs;
6. run them; the outcome goes through a buffered task store (``buffered_task_store.ts``: one
   ``_bulk`` per 50 ms or 100 operations): a recurring task is updated conditionally on its
   version with the next ``runAt`` (``lib/get_next_run_at.ts``), ``ownerId`` cleared; a one-shot
   task is removed (``bulkGet`` then ``_bulk`` delete). The slot is released when that write resolved.

Poll interval (``lib/create_managed_configuration.ts``): ``pull-kibana`` starts at 500 ms and every
10 s moves to 3000 ms while the mean utilisation of the last 15 s is under 25 % (back to 500 ms
when it rises); 429/5xx answers shrink capacity (x 0.8) and stretch the interval (x 1.2, up to
60 s). ``pull-<ms>`` polls at a fixed interval with none of that, for comparison. Each node also
runs Kibana's discovery (``kibana_discovery_service.ts``): every 10 s, an upsert of its
``background-task-node`` document and a search for the active nodes. Nodes start at a random
phase of their interval, as real nodes started at different moments do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from elastask.core.intervals import format_date, parse_date, parse_interval_ms
from elastask_bed.simulator.kibana_rules import (
    ADJUST_THROUGHPUT_INTERVAL_MS,
    DISCOVERY_INTERVAL_MS,
    ManagedConfiguration,
    assigned_partitions,
    claim_retry_at,
    next_run_at,
)
from elastask_bed.simulator.node import SimulatedNode
from elastask_bed.simulator.outcomes import EngineBusy, post_bulk, post_json, recurring_interval_ms, rescheduled_fields

log = logging.getLogger(__name__)

NORMAL_COST = 2
SEARCH_SIZE_MULTIPLIER = 4  # strategy_mget: search for 4x the available capacity
DEFAULT_PRIORITY = 50

_PRIORITY_SCRIPT = (
    "String taskType = doc['task.taskType'].value; "
    "if (params.priority_map.containsKey(taskType)) { return params.priority_map[taskType]; } "
    "else { return params.default_priority; }"
)
_RUN_AT = (
    "if (doc['task.retryAt'].size() != 0) { return doc['task.retryAt'].value.toInstant().toEpochMilli(); } "
    "if (doc['task.runAt'].size() != 0) { return doc['task.runAt'].value.toInstant().toEpochMilli(); } "
    "return 0;"
)


class PullClaimer:
    """One node's poll loop, with Kibana's managed configuration when ``adaptive``."""

    def __init__(
        self,
        node: SimulatedNode,
        *,
        poll_interval_ms: int,
        timeout_ms: int,
        pods: Sequence[str],
        adaptive: bool = False,
        task_types: Sequence[str] = (),
        priorities: Mapping[str, int] | None = None,
    ) -> None:
        self.node = node
        self.timeout_ms = timeout_ms
        self.adaptive = adaptive
        self.config = ManagedConfiguration(starting_capacity=node.capacity, starting_poll_interval_ms=poll_interval_ms)
        self.partitions = assigned_partitions(node.owner_id, list(pods))
        self.task_types = sorted(task_types)
        #: Task type -> priority (Kibana's task definitions; the claim search sorts by it).
        self.priorities = dict(priorities or {})
        self.store = node.outcomes  # the node's one buffered task store (outcomes.py)
        self.index_url = f"{node.shared.engine_url}/{quote(node.shared.index, safe='')}"

    @property
    def poll_interval_ms(self) -> int:
        return self.config.poll_interval_ms

    async def loop(self) -> None:
        """Poll until cancelled; a failed cycle is logged and the next one runs on time."""
        await asyncio.sleep(self.node.shared.rng.uniform(0, self.poll_interval_ms / 1000))
        next_adjust = time.monotonic() + ADJUST_THROUGHPUT_INTERVAL_MS / 1000
        while True:
            started = time.monotonic()
            self.node.poll_interval_ms = self.poll_interval_ms
            try:
                await self.claim_cycle()
            except asyncio.CancelledError:
                raise
            except EngineBusy:
                self.config.record_error()
            except Exception:
                log.exception("%s: pull claim cycle failed", self.node.name)
            if self.adaptive and time.monotonic() >= next_adjust:
                self.config.adjust()
                next_adjust = time.monotonic() + ADJUST_THROUGHPUT_INTERVAL_MS / 1000
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.poll_interval_ms / 1000 - elapsed))

    async def discovery_loop(self) -> None:
        """Kibana's discovery service: every 10 s, upsert this node's heartbeat and find the active nodes."""
        await asyncio.sleep(self.node.shared.rng.uniform(0, DISCOVERY_INTERVAL_MS / 1000))
        doc_id = quote(f"background-task-node:{self.node.uuid}", safe="")
        while True:
            now = format_date(datetime.now(UTC))
            heartbeat = {"doc": {"type": "background-task-node", "background-task-node": {"id": self.node.uuid,
                        "last_seen": now}}, "doc_as_upsert": True}  # fmt: skip
            active = {
                "size": 10000,
                "query": {"bool": {"filter": [{"term": {"type": "background-task-node"}}]}},
            }
            try:
                await self._post(f"{self.index_url}/_update/{doc_id}", heartbeat)
                await self._post(f"{self.index_url}/_search", active)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("%s: discovery failed: %s", self.node.name, e)
            await asyncio.sleep(DISCOVERY_INTERVAL_MS / 1000)

    # ---- one claim cycle -------------------------------------------------------------------------

    async def claim_cycle(self) -> None:
        node = self.node
        node.last_poll = datetime.now(UTC)
        capacity_units = self.config.capacity * NORMAL_COST
        available = capacity_units - node.stats.current_units
        if available <= 0 or node.mode in ("refuse", "hang"):
            # polling_lifecycle.ts getCapacity: no capacity, no claim; the load is reported as it is.
            self._record_utilization(left_unclaimed=False)
            return
        started = time.monotonic()
        now = datetime.now(UTC)
        shared = node.shared
        limited = sorted(shared.limits)
        body = self.search_body(now, available, exclude=limited)
        hits = (await self._post(f"{self.index_url}/_search", body))["hits"]["hits"]
        # strategy_mget.ts: each limited type (or shared group) is searched apart, sized to its room.
        room = self._group_room()
        for group, types in self._groups().items():
            if room.get(group, 0) > 0:
                group_body = self.search_body(now, available, only=types, size=room[group])
                hits += (await self._post(f"{self.index_url}/_search", group_body))["hits"]["hits"]
        if not hits:
            node.stats.claim_cycles_ms.append((time.monotonic() - started) * 1000)
            self._record_utilization(left_unclaimed=False)
            return
        fresh = await self._fresh(hits)
        selected = []
        for doc in fresh:
            task_type = str(doc["_source"]["task"].get("taskType"))
            cost = shared.cost_of(task_type)
            limited_group = shared.limits[task_type][0] if task_type in shared.limits else None
            if limited_group is not None:
                if room.get(limited_group, 0) <= 0 or cost > available:
                    continue  # its own limit, apart from the others (task_selector_by_capacity.ts)
                room[limited_group] -= 1
            elif cost > available:
                break  # Kibana stops at the first task that does not fit
            available -= cost
            selected.append(doc)
        if not selected:
            node.stats.claim_cycles_ms.append((time.monotonic() - started) * 1000)
            self._record_utilization(left_unclaimed=len(fresh) > 0)
            return
        claimed = await self._claim(selected, now)
        node.stats.claim_cycles_ms.append((time.monotonic() - started) * 1000)
        if claimed:
            node.stats.busy_claim_cycles_ms.append(node.stats.claim_cycles_ms[-1])
        for doc in claimed:
            task = doc["_source"]["task"]
            body = {
                "id": doc["_id"],
                "taskType": task.get("taskType"),
                "schedule": task.get("schedule"),
                "state": task.get("state"),
                "runAt": task.get("runAt"),
                "startedAt": task.get("startedAt"),
                "_seq_no": doc["_seq_no"],
                "_primary_term": doc["_primary_term"],
            }
            node.stats.self_claimed += 1
            node.start_run(body, now, self.write_outcome)
        self._record_utilization(left_unclaimed=len(fresh) > len(selected))

    def _record_utilization(self, *, left_unclaimed: bool) -> None:
        """polling_lifecycle.ts: the pool's used capacity at the end of a polling cycle, 100 % when due
        tasks were left unclaimed (the load the interval rule reads)."""
        used = 100.0 * self.node.stats.current / max(1, self.config.capacity)
        self.config.record_utilization(time.monotonic() * 1000, 100.0 if left_unclaimed else min(100.0, used))

    def _groups(self) -> dict[str, list[str]]:
        """Concurrency group -> its task types (a limited type alone is its own group)."""
        groups: dict[str, list[str]] = {}
        for task_type, (group, _limit) in sorted(self.node.shared.limits.items()):
            groups.setdefault(group, []).append(task_type)
        return groups

    def _group_room(self) -> dict[str, int]:
        """Per group: how many more of its tasks this node may run now."""
        limits = {group: limit for group, limit in self.node.shared.limits.values()}
        current = self.node.stats.current_by_type
        return {group: max(0, limit - current.get(group, 0)) for group, limit in limits.items()}

    def search_body(
        self,
        now: datetime,
        available_units: int,
        *,
        exclude: Sequence[str] = (),
        only: Sequence[str] = (),
        size: int | None = None,
    ) -> dict[str, Any]:
        """strategy_mget.ts: the claim search (``exclude``: limited types, searched apart with ``only``)."""
        due = {
            "bool": {
                "should": [
                    {
                        "bool": {
                            "must": [
                                {"term": {"task.status": "idle"}},
                                {"range": {"task.runAt": {"lte": format_date(now)}}},
                            ]
                        }
                    },
                    {
                        "bool": {
                            "must": [
                                {"terms": {"task.status": ["running", "claiming"]}},
                                {"range": {"task.retryAt": {"lte": format_date(now)}}},
                            ]
                        }
                    },
                ],
                "minimum_should_match": 1,
            }
        }
        must: list[dict[str, Any]] = [{"term": {"type": "task"}}, due]
        if self.task_types:
            must.append({"terms": {"task.taskType": self.task_types}})
        if only:
            must.append({"terms": {"task.taskType": sorted(only)}})
        must_not: list[dict[str, Any]] = [{"term": {"task.enabled": False}}, {"term": {"task.status": "unrecognized"}}]
        if exclude:
            must_not.append({"terms": {"task.taskType": sorted(exclude)}})
        return {
            "query": {
                "bool": {
                    "must": must,
                    "must_not": must_not,
                    "should": [
                        {"terms": {"task.partition": self.partitions}},
                        {"bool": {"must_not": [{"exists": {"field": "task.partition"}}]}},
                    ],
                    "minimum_should_match": 1,
                }
            },
            "sort": [
                {
                    "_script": {
                        "type": "number",
                        "order": "desc",
                        "script": {
                            "lang": "painless",
                            "source": _PRIORITY_SCRIPT,
                            "params": {"priority_map": self.priorities, "default_priority": DEFAULT_PRIORITY},
                        },
                    }
                },
                {
                    "_script": {
                        "type": "number",
                        "order": "asc",
                        "script": {"lang": "painless", "source": _RUN_AT},
                    }
                },
            ],
            "size": size if size is not None else available_units * SEARCH_SIZE_MULTIPLIER,
            "seq_no_primary_term": True,
        }

    async def _fresh(self, hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """mget the hits; drop the stale and the missing ones."""
        stats = self.node.stats
        docs = {
            d["_id"]: d
            for d in (await self._post(f"{self.index_url}/_mget", {"ids": [h["_id"] for h in hits]}))["docs"]
        }
        fresh = []
        for hit in hits:
            doc = docs.get(hit["_id"])
            if not doc or not doc.get("found"):
                stats.claim_missing += 1
            elif (doc["_seq_no"], doc["_primary_term"]) != (hit["_seq_no"], hit["_primary_term"]):
                stats.claim_stale += 1
            else:
                fresh.append(doc)
        return fresh

    async def _claim(self, selected: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        """The conditional ``_bulk`` claim, then ``bulkGet`` of what was won (the documents to run)."""
        lines = []
        for doc in selected:
            meta = {"_id": doc["_id"], "if_seq_no": doc["_seq_no"], "if_primary_term": doc["_primary_term"]}
            lines.append(json.dumps({"update": meta}))
            lines.append(json.dumps({"doc": {"task": self.claim_fields(doc["_source"]["task"], now)}}))
        items = (await post_bulk(self.node.shared.session, f"{self.index_url}/_bulk", lines))["items"]
        won = []
        for item in items:
            result = item["update"]
            if result.get("status") == 409:
                self.node.stats.claim_conflicts += 1
            elif 200 <= result.get("status", 500) < 300:
                won.append(result["_id"])
        if not won:
            return []
        docs = (await self._post(f"{self.index_url}/_mget", {"ids": won}))["docs"]
        return [d for d in docs if d.get("found")]

    def claim_fields(self, task: dict[str, Any], now: datetime) -> dict[str, Any]:
        """markTaskAsRunning: the fields Kibana's claimer writes."""
        interval = (task.get("schedule") or {}).get("interval")
        interval_ms = parse_interval_ms(interval) if isinstance(interval, str) else None
        attempts = int(task.get("attempts", 0)) + 1
        return {
            "status": "running",
            "ownerId": self.node.owner_id,
            "startedAt": format_date(now),
            "retryAt": format_date(claim_retry_at(now, attempts, self.timeout_ms, interval_ms)),
            "scheduledAt": format_date(parse_date(task.get("retryAt") or task["runAt"])),
            "attempts": attempts,
        }

    # ---- outcomes (task_runner.ts through the buffered task store) --------------------------------

    async def write_outcome(self, body: dict[str, Any]) -> None:
        """A finished run: reschedule (recurring, conditional) or remove (one-shot)."""
        interval_ms = recurring_interval_ms(body)
        if interval_ms is None:
            await self.store.submit({"remove": body["id"]})
            return
        run_at, started_at = parse_date(body["runAt"]), parse_date(body.get("startedAt") or body["runAt"])
        next_at = next_run_at(run_at, started_at, interval_ms, datetime.now(UTC), self.poll_interval_ms)
        fields = {**rescheduled_fields(body, next_at), "ownerId": None}
        await self.store.submit(
            {"update": body["id"], "seq_no": body["_seq_no"], "primary_term": body["_primary_term"], "fields": fields}
        )

    # ---- engine calls ----------------------------------------------------------------------------

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        return await post_json(self.node.shared.session, url, body)


def fixed_or_kibana(mode: str) -> tuple[int, bool]:
    """``kibana`` -> (500 ms, adaptive, as Kibana ships); a number of ms -> (that, fixed)."""
    if mode == "kibana":
        return 500, True
    return int(mode), False
