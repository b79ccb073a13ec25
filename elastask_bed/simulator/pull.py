"""Kibana's own pull claiming (the ``mget`` strategy), as the baseline the benchmarks compare against.

Each simulated node polls on its own, exactly as Kibana 8.18+ does by default
(x-pack/platform/plugins/shared/task_manager/server/task_claimers/strategy_mget.ts, summarised in
shared/reference/kibana-task-manager.md):

1. search the task index (``seq_no_primary_term: true``, no ``_source``) for claimable tasks:
   ``type: task``, enabled, and (``idle`` and ``runAt <= now``) or (``running``/``claiming`` and
   ``retryAt <= now``), never ``unrecognized``, in one of the node's partitions (8.16+: 256
   partitions, each assigned to ``DEFAULT_KIBANAS_PER_PARTITION`` = 2 nodes, so nodes mostly
   search disjoint tasks; tasks without a partition are searched by all); sorted by priority desc,
   then runAt asc (Kibana sorts by ``retryAt ?? runAt`` with a script; runAt is the same order for
   idle tasks); size = available capacity in cost units x 4;
2. ``mget`` the hits and drop the stale (``_seq_no`` changed since the search) and missing ones;
3. select by available capacity (task costs summed; stop at the first that does not fit);
4. one ``_bulk`` of partial updates with ``if_seq_no``/``if_primary_term`` setting
   ``status: running``, ``startedAt``, ``attempts + 1``, ``retryAt``, ``scheduledAt``, ``ownerId``;
   a 409 is a lost race with another node;
5. run what was claimed and write the outcome (same code path as ``_run_now``).

The poll interval is fixed per run (Kibana uses 500 ms under load and 3000 ms when utilisation
stays under 25 %; the benchmarks run both), and each node starts at a random phase of it, as real
nodes started at different moments do. Capacity: 10 normal tasks = 20 units per node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from elastask.core.intervals import format_date, parse_date, parse_interval_ms
from elastask_bed.simulator.node import SimulatedNode

log = logging.getLogger(__name__)

NORMAL_COST = 2
SEARCH_SIZE_MULTIPLIER = 4  # strategy_mget: search for 4x the available capacity
PARTITIONS = 256  # task_partitioner: task.partition is 0..255
KIBANAS_PER_PARTITION = 2  # config: DEFAULT_KIBANAS_PER_PARTITION


def assigned_partitions(node_index: int, node_count: int) -> list[int]:
    """The partitions a node searches: each partition goes to KIBANAS_PER_PARTITION consecutive nodes."""
    owners = min(KIBANAS_PER_PARTITION, node_count)
    return [p for p in range(PARTITIONS) if (p - node_index) % node_count < owners]


class PullClaimer:
    """One node's poll loop."""

    def __init__(self, node: SimulatedNode, *, poll_interval_ms: int, timeout_ms: int, node_count: int) -> None:
        self.node = node
        self.poll_interval_ms = poll_interval_ms
        self.timeout_ms = timeout_ms
        self.capacity_units = node.capacity * NORMAL_COST
        self.partitions = assigned_partitions(node.index, node_count)

    async def loop(self) -> None:
        """Poll until cancelled; a failed cycle is logged and the next one runs on time."""
        await asyncio.sleep(self.node.shared.rng.uniform(0, self.poll_interval_ms / 1000))
        while True:
            started = time.monotonic()
            try:
                await self.claim_cycle()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: pull claim cycle failed", self.node.name)
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.poll_interval_ms / 1000 - elapsed))

    async def claim_cycle(self) -> None:
        node, shared = self.node, self.node.shared
        node.last_poll = datetime.now(UTC)
        available = self.capacity_units - node.stats.current * NORMAL_COST
        if available <= 0 or node.mode in ("refuse", "hang"):
            return
        started = time.monotonic()
        now = datetime.now(UTC)
        index = quote(shared.index, safe="")
        # 1. search
        search = {
            "query": {
                "bool": {
                    "filter": [
                        {"term": {"type": "task"}},
                        {
                            "bool": {
                                "should": [
                                    {
                                        "bool": {
                                            "filter": [
                                                {"term": {"task.status": "idle"}},
                                                {"range": {"task.runAt": {"lte": format_date(now)}}},
                                            ]
                                        }
                                    },
                                    {
                                        "bool": {
                                            "filter": [
                                                {"terms": {"task.status": ["running", "claiming"]}},
                                                {"range": {"task.retryAt": {"lte": format_date(now)}}},
                                            ]
                                        }
                                    },
                                ],
                                "minimum_should_match": 1,
                            }
                        },
                    ],
                    "must_not": [{"term": {"task.enabled": False}}, {"term": {"task.status": "unrecognized"}}],
                    "should": [
                        {"terms": {"task.partition": self.partitions}},
                        {"bool": {"must_not": [{"exists": {"field": "task.partition"}}]}},
                    ],
                    "minimum_should_match": 1,
                }
            },
            "sort": [
                {"task.priority": {"order": "desc", "missing": 50, "unmapped_type": "integer"}},
                {"task.runAt": {"order": "asc"}},
            ],
            "size": available * SEARCH_SIZE_MULTIPLIER,
            "seq_no_primary_term": True,
            "_source": False,
        }
        async with shared.session.post(f"{shared.engine_url}/{index}/_search", json=search) as answer:
            hits = (await answer.json())["hits"]["hits"]
        if not hits:
            node.stats.claim_cycles_ms.append((time.monotonic() - started) * 1000)
            return
        # 2. mget, drop stale and missing
        async with shared.session.post(
            f"{shared.engine_url}/{index}/_mget", json={"ids": [h["_id"] for h in hits]}
        ) as answer:
            docs = {d["_id"]: d for d in (await answer.json())["docs"]}
        fresh = []
        for hit in hits:
            doc = docs.get(hit["_id"])
            if not doc or not doc.get("found"):
                node.stats.claim_missing += 1
            elif (doc["_seq_no"], doc["_primary_term"]) != (hit["_seq_no"], hit["_primary_term"]):
                node.stats.claim_stale += 1
            else:
                fresh.append(doc)
        # 3. select by capacity
        selected = []
        for doc in fresh:
            if available < NORMAL_COST:
                break
            available -= NORMAL_COST
            selected.append(doc)
        if not selected:
            node.stats.claim_cycles_ms.append((time.monotonic() - started) * 1000)
            return
        # 4. conditional bulk claim
        lines = []
        updates = {}
        for doc in selected:
            task = doc["_source"]["task"]
            fields = self.claim_fields(task, now)
            updates[doc["_id"]] = fields
            lines.append(
                json.dumps(
                    {
                        "update": {
                            "_id": doc["_id"],
                            "if_seq_no": doc["_seq_no"],
                            "if_primary_term": doc["_primary_term"],
                        }
                    }
                )
            )
            lines.append(json.dumps({"doc": {"task": fields}}))
        async with shared.session.post(
            f"{shared.engine_url}/{index}/_bulk",
            data="\n".join(lines) + "\n",
            headers={"Content-Type": "application/x-ndjson"},
        ) as answer:
            items = (await answer.json())["items"]
        node.stats.claim_cycles_ms.append((time.monotonic() - started) * 1000)
        by_id = {doc["_id"]: doc for doc in selected}
        for item in items:
            result = item["update"]
            if result.get("status") == 409:
                node.stats.claim_conflicts += 1
                continue
            if not 200 <= result.get("status", 500) < 300:
                continue
            # 5. run it (same path as _run_now)
            task = by_id[result["_id"]]["_source"]["task"]
            body = {
                "id": result["_id"],
                "taskType": task.get("taskType"),
                "schedule": task.get("schedule"),
                "state": task.get("state"),
                "runAt": task.get("runAt"),
            }
            node.stats.self_claimed += 1
            node.start_run(body, now)

    def claim_fields(self, task: dict[str, Any], now: datetime) -> dict[str, Any]:
        """markTaskAsRunning: the fields Kibana's claimer writes."""
        lease_ms = self.timeout_ms
        interval = (task.get("schedule") or {}).get("interval")
        if isinstance(interval, str):
            lease_ms = max(lease_ms, parse_interval_ms(interval))
        return {
            "status": "running",
            "ownerId": self.node.owner_id,
            "startedAt": format_date(now),
            "retryAt": format_date(now + timedelta(milliseconds=lease_ms)),
            "scheduledAt": format_date(parse_date(task.get("retryAt") or task["runAt"])),
            "attempts": int(task.get("attempts", 0)) + 1,
        }
