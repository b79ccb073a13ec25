"""One simulated Kibana node: ``POST /api/task_manager/_run_now``, ``GET /api/status`` and Kibana's
execution pause (execution_control.py).

The contract (Kibana's external-task-manager branch, routes/run_now.ts): answer 204 at once, run
the task in the background through the ephemeral queue (beyond ``request_capacity`` runs the run
is rejected and only logged; the answer is still 204), then

- success, task with ``schedule``: partial update ``task: {state, status: idle, scheduledAt: null,
  retryAt: null, startedAt: null, runAt: <request arrival> + interval, attempts: 0}``, no version check;
- success, no ``schedule``: delete the document;
- failure: only logged; the document stays as the dispatcher left it.

Outcomes are written as Kibana's task runner writes them, pushed or claimed alike: through the
node's buffered task store (outcomes.py), one ``_bulk`` per 50 ms or 100 operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from aiohttp import ClientSession, web

from elastask.core.intervals import format_date, ms, parse_date
from elastask_bed.simulator import execution_control
from elastask_bed.simulator.execution_control import ExecutionControlState
from elastask_bed.simulator.outcomes import (
    BufferedTaskStore,
    Operation,
    recurring_interval_ms,
    rescheduled_fields,
    write_outcomes,
)
from elastask_bed.simulator.stats import NodeStats, run_label

log = logging.getLogger(__name__)

MODES = ("ok", "error", "hang", "slow", "5xx", "refuse")

#: Writes a finished run's outcome (pull mode: Kibana's task runner), given the run's body.
Outcome = Callable[[dict[str, Any]], Awaitable[None]]


#: The standard normal's 99th percentile.
Z_99 = 2.3263


@dataclass
class RunTimes:
    """How long a run takes, per task type: ``MS``, a uniform range ``LO-HI``, or a long tail ``logn:P50:P99``.

    ``logn:150:5000``: lognormal with a median of 150 ms and a 99th percentile of 5 s (most runs are
    short, a few are very long, as Kibana's alerting rules and actions are); capped at 100 x P99.
    """

    default: str = "200"
    by_type: dict[str, str] = field(default_factory=dict)

    def draw_ms(self, task_type: str, rng: random.Random) -> float:
        """One run time for a task of that type."""
        spec = str(self.by_type.get(task_type, self.default))
        if spec.startswith("logn:"):
            median, p99 = (float(part) for part in spec.split(":")[1:3])
            sigma = math.log(p99 / median) / Z_99
            return min(100 * p99, rng.lognormvariate(math.log(median), sigma))
        if "-" in spec:
            low, high = (float(part) for part in spec.split("-", 1))
            return rng.uniform(low, high)
        return float(spec)


@dataclass
class SharedState:
    """What all nodes of one simulator share: the engine, run times and who runs what right now."""

    engine_url: str
    index: str
    session: ClientSession
    authorization: str | None  # the Authorization header every /api request must carry, if set
    run_times: RunTimes
    rng: random.Random
    #: Serve HTTPS with this context (None: plain HTTP).
    ssl_context: ssl.SSLContext | None = None
    running: Counter[str] = field(default_factory=Counter)  # task id -> runs in progress, all nodes
    #: Recurring task id -> when its last run ended: a run that overran its interval delays the next.
    last_ended: dict[str, datetime] = field(default_factory=dict)
    #: Task type -> capacity cost units (Kibana's TaskCost; normal: 2), as the task definitions give them.
    costs: dict[str, int] = field(default_factory=dict)
    #: Task type -> (concurrency group, maxConcurrency per node), for types with a limit.
    limits: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: Kibana's execution pause, one for every node (a saved object in Kibana).
    execution: ExecutionControlState = field(default_factory=ExecutionControlState)

    def cost_of(self, task_type: str) -> int:
        return self.costs.get(task_type, 2)

    def group_of(self, task_type: str) -> str:
        """The name a run counts under per node: its concurrency group, else its type."""
        limit = self.limits.get(task_type)
        return limit[0] if limit is not None else task_type


class SimulatedNode:
    """A Kibana node on its own port with its own uuid."""

    def __init__(
        self,
        index: int,
        port: int,
        shared: SharedState,
        *,
        capacity: int,
        node_uuid: str,
        host: str = "127.0.0.1",
        ephemeral_capacity: int | None = None,
        claiming: bool = False,
        poll_interval_ms: int = 0,
    ) -> None:
        self.index = index
        #: xpack.task_manager.ephemeral_tasks.request_capacity: pushed runs at once; beyond it a push is
        #: accepted (204) and the run dropped, only logged, as Kibana does.
        self.ephemeral_capacity = capacity if ephemeral_capacity is None else ephemeral_capacity
        #: Task claiming left on (xpack.task_manager.unsafe.disable_task_claiming: false): the node also
        #: pulls on its own, with the mget model, every poll_interval_ms.
        self.claiming = claiming
        self.poll_interval_ms = poll_interval_ms
        self.last_poll: datetime | None = None
        self.host = host
        self.port = port
        self.shared = shared
        self.capacity = capacity
        self.uuid = node_uuid
        self.name = f"sim-kibana-{index}"
        self.mode = "ok"
        #: When this node's "Kibana process" started (GET /api/status metrics.process.uptime_in_millis).
        self.process_started = time.time()
        self.delay_s = 300.0  # slow: seconds before the (204) answer; hang: seconds before the run is cancelled
        self.stats = NodeStats()
        #: Every run's outcome goes through it, pushed or claimed (outcomes.py).
        self.outcomes = BufferedTaskStore(self._write_outcomes, self._outcome_write_failed)
        self.release_hung = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.runner: web.AppRunner | None = None
        self.site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        """The node's base URL."""
        scheme = "https" if self.shared.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def owner_id(self) -> str:
        """The ownerId elastask gives this node: ``kibana:<uuid>``."""
        return f"kibana:{self.uuid}"

    @web.middleware
    async def require_auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Kibana answers 401 to an /api request without valid credentials."""
        expected = self.shared.authorization
        guarded = request.path.startswith(("/api/", "/internal/"))
        if expected and guarded and request.headers.get("Authorization") != expected:
            return web.json_response({"statusCode": 401, "error": "Unauthorized"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024, middlewares=[self.require_auth])
        app.router.add_post("/api/task_manager/_run_now", self.run_now)
        app.router.add_get("/api/status", self.status)
        app.router.add_get("/api/task_manager/_health", self.task_manager_health)
        app.router.add_get("/_sim/stats", self.node_stats)
        execution_control.add_routes(app, self.shared.execution)
        return app

    async def start(self) -> None:
        """Listen on the node's port."""
        self.runner = web.AppRunner(self.build_app(), access_log=None)
        await self.runner.setup()
        await self.listen()

    async def listen(self) -> None:
        assert self.runner is not None
        self.site = web.TCPSite(
            self.runner, self.host, self.port, reuse_address=True, ssl_context=self.shared.ssl_context
        )
        await self.site.start()

    async def set_mode(self, mode: str, delay_s: float | None = None) -> None:
        """Change the failure mode; ``refuse`` closes the port, leaving it reopens it."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if delay_s is not None:
            self.delay_s = delay_s
        previous, self.mode = self.mode, mode
        if previous == "hang" and mode != "hang":
            # Kibana cancels a run at its timeout; here, hung runs end (without outcome) on leaving hang.
            self.release_hung.set()
            self.release_hung = asyncio.Event()
        if mode == "refuse" and self.site is not None:
            await self.site.stop()
            self.site = None
        elif mode != "refuse" and self.site is None:
            await self.listen()

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.runner is not None:
            await self.runner.cleanup()

    # ---- HTTP handlers -------------------------------------------------------------------------

    async def status(self, _request: web.Request) -> web.Response:
        level = "unavailable" if self.mode == "5xx" else "available"
        body = {
            "name": self.name,
            "uuid": self.uuid,
            "version": {"number": "8.18.0"},
            "status": {"overall": {"level": level}},
            "metrics": {"process": {"uptime_in_millis": int((time.time() - self.process_started) * 1000)}},
        }
        return web.json_response(body, status=503 if self.mode == "5xx" else 200)

    async def task_manager_health(self, _request: web.Request) -> web.Response:
        """``GET /api/task_manager/_health``, shaped like Kibana's (the parts elastask check reads)."""
        now = format_date(datetime.now(UTC))
        configuration = {
            "request_capacity": 1000,
            "claim_strategy": "mget",
            "poll_interval": self.poll_interval_ms or 500,
            "capacity": {"config": self.capacity, "as_workers": self.capacity, "as_cost": 2 * self.capacity},
            "monitored_aggregated_stats_refresh_rate": 60000,
            "monitored_stats_running_average_window": 50,
            "monitored_task_execution_thresholds": {"default": {"error_threshold": 90, "warn_threshold": 80}},
            "ephemeral_tasks": {"enabled": True, "request_capacity": self.ephemeral_capacity},
            "unsafe": {"disable_task_claiming": not self.claiming},
        }
        polling: dict[str, Any] = {}
        if self.last_poll is not None:
            polling["last_successful_poll"] = format_date(self.last_poll)
        body = {
            "id": self.uuid,
            "timestamp": now,
            "status": "OK",
            "last_update": now,
            "stats": {
                "configuration": {"timestamp": now, "status": "OK", "value": configuration},
                "runtime": {"timestamp": now, "status": "OK", "value": {"polling": polling}},
                "ephemeral": {"timestamp": now, "status": "OK", "value": {"queued_tasks": {"p50": 0}}},
            },
        }
        return web.json_response(body)

    async def node_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot(with_drifts="drifts" in request.query))

    def snapshot(self, *, with_drifts: bool = False, recent_s: float | None = None) -> dict[str, Any]:
        """This node's statistics as JSON."""
        data = self.stats.snapshot(with_drifts=with_drifts, recent_s=recent_s)
        data.update(
            url=self.url,
            uuid=self.uuid,
            owner_id=self.owner_id,
            mode=self.mode,
            capacity=self.capacity,
            ephemeral_capacity=self.ephemeral_capacity,
            claiming=self.claiming,
        )
        return data

    async def run_now(self, request: web.Request) -> web.Response:
        received = datetime.now(UTC)
        self.stats.pushes += 1
        if self.mode == "5xx":
            self.stats.answered_5xx += 1
            return web.json_response({"statusCode": 500, "error": "Internal Server Error"}, status=500)
        try:
            body = await request.json()
        except (ValueError, json.JSONDecodeError):
            return web.json_response({"statusCode": 400, "error": "Bad Request"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            return web.json_response({"statusCode": 400, "error": "Bad Request", "message": "id"}, status=400)
        if self.stats.current >= min(self.capacity, self.ephemeral_capacity):
            # Kibana's ephemeral queue is full: the run is rejected and only logged; still 204.
            self.stats.rejected_over_capacity += 1
            log.warning(
                "%s: ephemeral capacity %d reached, rejected %r", self.name, self.ephemeral_capacity, body["id"]
            )
        else:
            # Kibana starts the run in the handler, then answers: a slow answer is a late 204.
            self.start_run(body, received)
        if self.mode == "slow":
            await asyncio.sleep(self.delay_s)
        return web.Response(status=204)

    def start_run(self, body: dict[str, Any], received: datetime, outcome: Outcome | None = None) -> None:
        """Run a task in the background (the ephemeral queue), as _run_now and the pull claimer do.

        ``outcome``: how the pull claimer writes the result (Kibana's task runner: buffered,
        conditional); the slot is released only once that write resolved. Without it, the
        ``_run_now`` contract: the outcome is written after the slot is released.
        """
        task = asyncio.get_running_loop().create_task(self.run(body, received, outcome))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ---- the run ---------------------------------------------------------------------------------

    async def run(self, body: dict[str, Any], received: datetime, outcome: Outcome | None = None) -> None:
        task_id: str = body["id"]
        shared = self.shared
        overlapping = shared.running[task_id] > 0
        if overlapping:
            log.error("%s: task %r started while it was already running (overlapping run)", self.name, task_id)
        shared.running[task_id] += 1
        label = run_label(body, shared.last_ended.get(task_id))
        task_type = str(body.get("taskType"))
        kind = (shared.group_of(task_type), shared.cost_of(task_type))
        started_s = time.time()
        self.stats.run_started(_drift_ms(body.get("runAt"), received), overlapping, label, kind, at_s=started_s)
        self.stats.slot_filled(time.monotonic())
        try:
            failed = not await self._execute(task_id, str(body.get("taskType")))
        finally:
            shared.running[task_id] -= 1
            if shared.running[task_id] <= 0:
                del shared.running[task_id]
            if isinstance(body.get("schedule"), dict):
                shared.last_ended[task_id] = datetime.now(UTC)
        if outcome is None:
            self.stats.run_ended(failed=failed, kind=kind, at_s=time.time(), started_s=started_s)
            if not failed:
                await self._timed_outcome(self.write_outcome(body, received))
            self.stats.slot_freed(time.monotonic())  # a dispatcher can see the slot free from now on
            return
        try:
            if not failed:
                await self._timed_outcome(outcome(body))
        finally:
            self.stats.run_ended(failed=failed, kind=kind, at_s=time.time(), started_s=started_s)
            self.stats.slot_freed(time.monotonic())

    async def _timed_outcome(self, write: Awaitable[None]) -> None:
        """Write a run's outcome; the time from the run's end to the write's answer goes in the stats."""
        ended = time.monotonic()
        await write
        self.stats.outcome_ms.append((time.monotonic() - ended) * 1000)

    async def _execute(self, task_id: str, task_type: str) -> bool:
        """The run itself; False when it ended without an outcome (hung and cancelled, or failed)."""
        shared = self.shared
        if self.mode == "hang":
            # Kibana cancels a run at its timeout: a hung run ends, without an outcome, after
            # delay_s, or when the node leaves hang mode.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release_hung.wait(), timeout=self.delay_s)
            return False
        await asyncio.sleep(shared.run_times.draw_ms(task_type, shared.rng) / 1000)
        if self.mode == "error":
            log.info("%s: task %r failed (error mode); Kibana only logs it", self.name, task_id)
            return False
        return True

    async def write_outcome(self, body: dict[str, Any], received: datetime) -> None:
        """The contract's outcome, written as Kibana's task runner does: through the node's buffered store."""
        interval_ms = recurring_interval_ms(body)
        if interval_ms is None:
            await self.outcomes.submit({"remove": body["id"]})
            return
        fields = {**rescheduled_fields(body, received + ms(interval_ms)), "scheduledAt": None}
        await self.outcomes.submit({"update": body["id"], "fields": fields})  # no version check

    async def _write_outcomes(self, operations: list[Operation]) -> None:
        index_url = f"{self.shared.engine_url}/{quote(self.shared.index, safe='')}"
        for ok in await write_outcomes(self.shared.session, index_url, operations):
            if ok:
                self.stats.outcomes_written += 1
            else:
                self.stats.outcome_write_errors += 1
                log.error("%s: an outcome write was not acknowledged (document gone, or refused)", self.name)

    def _outcome_write_failed(self, count: int, error: Exception) -> None:
        self.stats.outcome_write_errors += count
        log.error("%s: writing %d outcome(s) failed: %s", self.name, count, error)


def _drift_ms(run_at: Any, received: datetime) -> float | None:
    try:
        return (received - parse_date(run_at)).total_seconds() * 1000
    except (ValueError, TypeError):
        return None


def node_uuid(seed: str, index: int) -> str:
    """A stable uuid per node index, so ownerIds survive a simulator restart."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"elastask-simulator/{seed}/{index}"))
