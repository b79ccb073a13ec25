"""What the console shows, read from Redis and the engine (the figures themselves: console/figures.py).

One snapshot per refresh serves every open page: it is kept ``SNAPSHOT_TTL_S`` and read again only
when a page asks after that, so an idle console costs nothing and each refresh costs the engine one
search (``figures.backlog_query``), one fewer than ``/health``. The dependency checks (``elastask
check``) reach every Kibana node: they run at most every ``CHECKS_EVERY_S``, in the background.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis

from elastask import keys
from elastask.console import figures
from elastask.core import capacity_estimate, queries
from elastask.core.clock import epoch_ms
from elastask.core.intervals import format_date, parse_date
from elastask.errors import ElastaskError
from elastask.ops import checks
from elastask.ops.health import health, overdue_after_s
from elastask.ops.pausing import described as described_pauses
from elastask.ops.recent import RecentReader
from elastask.ops.usage import UsageReader
from elastask.runtime import Runtime

log = logging.getLogger(__name__)

#: A snapshot serves every page that asks within this long.
SNAPSHOT_TTL_S = 1.0
#: The dependency checks run at most this often (they reach every Kibana node).
CHECKS_EVERY_S = 30.0
#: The drift chart's span and bucket.
DRIFT_MINUTES = 10
DRIFT_BUCKET_S = 20
#: Failed tasks listed on the page (the whole list: ``elastask tasks failed``, or /console/api/failed).
FAILED_SHOWN = 5


class ConsoleState:
    """Snapshots for the console, shared by every page open on this ``elastask serve``."""

    def __init__(self, rt: Runtime, clock: Callable[[], float] = time.monotonic) -> None:
        self.rt = rt
        self.clock = clock
        self._lock = threading.Lock()
        self._snapshot: dict[str, Any] | None = None
        self._taken_at = float("-inf")
        self._checks: list[dict[str, Any]] | None = None
        self._checks_at = float("-inf")
        self._checking: Future[None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="elastask-console-checks")
        self.engine_searches = 0  #: searches this console sent (what its cost is measured by)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def snapshot(self) -> dict[str, Any]:
        """The page's figures, at most ``SNAPSHOT_TTL_S`` old."""
        with self._lock:
            if self._snapshot is None or self.clock() - self._taken_at >= SNAPSHOT_TTL_S:
                self._snapshot = self._read(datetime.now(UTC))
                self._taken_at = self.clock()
            self._refresh_checks()
            return {**self._snapshot, "dependencies": self._checks}

    def invalidate(self) -> None:
        """After a control action: the next page refresh reads anew."""
        with self._lock:
            self._snapshot = None

    def _refresh_checks(self) -> None:
        if self.clock() - self._checks_at < CHECKS_EVERY_S or (self._checking and not self._checking.done()):
            return
        self._checks_at = self.clock()
        self._checking = self._pool.submit(self._run_checks)

    def _run_checks(self) -> None:
        try:
            rows = checks.check(self.rt.settings, self.rt)
            result = [
                {"name": r.name, "ok": r.ok, "warning": r.warning, "detail": r.detail, "fix": r.fix} for r in rows
            ]
        except Exception as e:  # a check that raises is a finding, shown as one
            result = [{"name": "check", "ok": False, "warning": False, "detail": f"{type(e).__name__}: {e}", "fix": ""}]
        self._checks = result

    def _read(self, now: datetime) -> dict[str, Any]:
        rt = self.rt
        now_ms = epoch_ms(now)
        snapshot: dict[str, Any] = {"at": format_date(now), "problems": []}
        problems: list[str] = snapshot["problems"]
        nodes, unresolved = rt.nodes.resolve()
        snapshot["unresolved_nodes"] = unresolved
        owner_ids = [n.owner_id for n in nodes]
        try:
            view = rt.ledger.view(owner_ids)
            pauses = described_pauses(rt, now)
            starts, last_push, restarts, actions = RecentReader(rt.redis).read(now_ms - DRIFT_MINUTES * 60_000)
            window = UsageReader(rt.redis).window(now_ms)
            breakers = rt.nodes.breakers(owner_ids)
            failed_latest = self._failed_latest()
        except (redis.RedisError, ElastaskError) as e:
            problems.append(f"Redis (redis.url) cannot be read: {type(e).__name__}: {e}")
            return snapshot
        paused_names = {p["pause"] for p in pauses["paused"]}
        everything_paused = "all" in paused_names
        rpm = figures.runs_per_minute(window.sampled_ms / 1000, window.by_owner)
        limits = {group: limit for group, (limit, _types) in rt.settings.concurrency_groups().items()}
        group_use = figures.group_use(view.group_counts, limits)
        rows = []
        for node in nodes:
            node_paused = any(f"node:{name}" in paused_names for name in node.names if name)
            rows.append(
                node.load(view.used_units.get(node.owner_id, 0))
                | {
                    "leases": sum(1 for lease in view.leases if lease.owner_id == node.owner_id),
                    "groups": group_use.get(node.owner_id, {}),
                    "rotation": figures.rotation(breakers[node.owner_id], view.now_ms),
                    "drained": node_paused,
                    "paused": node_paused or everything_paused,
                    "runs_per_minute": rpm.get(node.owner_id, 0.0),
                    "runs_in_window": int(window.by_owner.get(node.owner_id, {}).get("runs", 0)),
                    "last_push_s_ago": None
                    if node.owner_id not in last_push
                    else round(max(0, now_ms - last_push[node.owner_id]) / 1000, 1),
                    "restarts_noticed": restarts.get(node.owner_id, 0),
                }
            )
        snapshot["nodes"] = rows
        snapshot["usage_window_s"] = round(window.sampled_ms / 1000)
        snapshot["pauses"] = pauses
        snapshot["actions"] = actions
        snapshot["drift"] = figures.drift_series(starts, now_ms, DRIFT_MINUTES, DRIFT_BUCKET_S)
        snapshot["failed"] = {"latest": failed_latest}
        self._read_engine(snapshot, now, window, rows)
        return snapshot

    def _read_engine(self, snapshot: dict[str, Any], now: datetime, window: Any, rows: list[dict[str, Any]]) -> None:
        rt = self.rt
        overdue_s = overdue_after_s(rt.settings.polling_interval_ms)
        due = queries.due_tasks(now, size=0, default_max_attempts=rt.settings.max_attempts, max_attempts_by_type={})
        body = figures.backlog_query(due["query"], format_date(now - timedelta(seconds=overdue_s)))
        try:
            self.engine_searches += 1
            answer = rt.store.search(body, "reading the backlog for the console")
        except ElastaskError as e:
            snapshot["problems"].append(str(e))
            snapshot["backlog"] = None
            snapshot["headline"] = figures.headline(rows, None, {})
            return
        backlog = figures.backlog(answer, epoch_ms(now), lambda text: epoch_ms(parse_date(text)))
        backlog["overdue_after_s"] = overdue_s
        snapshot["backlog"] = backlog
        counts = figures.status_counts(answer)
        snapshot["tasks_by_status"] = counts
        snapshot["failed"]["total"] = counts.get("failed", 0)
        observed = capacity_estimate.Observed(
            window_s=window.sampled_ms / 1000,
            nodes=capacity_estimate.node_usages({r["owner_id"]: r["capacity_units"] for r in rows}, window.by_owner),
            overdue=backlog["overdue"],
            recurring_per_minute=figures.recurring_per_minute(answer),
        )
        estimation = capacity_estimate.estimate(observed, rt.settings.polling_interval_ms / 1000)
        snapshot["capacity_estimation"] = estimation
        snapshot["headline"] = figures.headline(rows, backlog["overdue"], estimation)

    def _failed_latest(self) -> list[dict[str, Any]]:
        """The latest tasks elastask failed, with their reasons (Redis keeps them by time)."""
        ids = cast(list[bytes], self.rt.redis.zrevrange(keys.FAILED_REASONS_BY_TIME, 0, FAILED_SHOWN - 1))
        if not ids:
            return []
        reasons = cast(list[bytes | None], self.rt.redis.hmget(keys.FAILED_REASONS, ids))
        rows = []
        for doc_id, raw in zip(ids, reasons, strict=True):
            entry = json.loads(raw) if raw else {}
            rows.append({"id": doc_id.decode(), **entry})
        return rows

    def health(self) -> dict[str, Any]:
        """``/health``'s report (the same as ``elastask status --health``)."""
        return health(self.rt, datetime.now(UTC))
