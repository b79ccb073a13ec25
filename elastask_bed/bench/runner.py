"""One benchmark run: a scenario in one mode (push, or pull at a poll interval) on the test bed.

Both modes get the same engine, the same documents (due at the same ``runAt``), the same simulated
nodes and run times. Time and engine counters are measured from the moment the tasks fall due.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from elastask.config import ElasticsearchSettings
from elastask.core.documents import TaskDocument
from elastask.core.percentiles import percentile
from elastask.parts.store import build_client
from elastask_bed.bench.cpu import CpuMeter
from elastask_bed.bench.engine_stats import read_counters
from elastask_bed.bench.profiling import profiling_env
from elastask_bed.bench.scenarios import MIX, Scenario, documents, priorities, run_times
from elastask_bed.testbed.bed import INDEX, SimulatorProcess, Testbed, empty_task_index
from elastask_bed.testbed.fleet import CeleryFleet

Progress = Callable[[int, int, str], None]  # (done, total, label)


_CLAIM_CYCLE = re.compile(r"claim cycle(?: \(lane \d+ of \d+\))?: found=\d+ claimed=(\d+) .*? duration=(\d+)ms")
BENCH_TASK_TYPES = "bench:one-shot,bench:recurring,bench:later," + ",".join(MIX)


def pull_mode(mode: str) -> str:
    """'' for push; for ``pull-kibana`` or ``pull-<ms>`` what the simulator's ``--pull`` takes."""
    return mode.split("-", 1)[1] if mode.startswith("pull-") else ""


def pull_interval_ms(mode: str) -> int:
    """0 for push and pull-kibana (adaptive), the poll interval for ``pull-<ms>``."""
    value = pull_mode(mode)
    return int(value) if value.isdigit() else 0


def claim_interval(mode: str, push_interval_ms: int | None) -> str:
    """How often the mode claims, for the report."""
    if mode == "push":
        return f"{push_interval_ms} ms" if push_interval_ms else "500 ms (rests 3000 ms)"
    if mode == "pull-kibana":
        return "500 / 3000 ms (adaptive)"
    return f"{pull_interval_ms(mode)} ms"


class BenchRun:
    """Runs one scenario in one mode and returns its measurements."""

    def __init__(
        self,
        bed: Testbed,
        scenario: Scenario,
        mode: str,
        workdir: Path,
        *,
        push_interval_ms: int | None = None,
        workers: int = 1,
        concurrency: int | None = None,
        engine_latency_ms: int = 0,
        progress: Progress | None = None,
        profile_dir: Path | None = None,
    ) -> None:
        self.bed = bed
        self.scenario = scenario
        self.mode = mode
        self.workdir = workdir
        self.push_interval_ms = push_interval_ms
        self.workers = workers
        self.concurrency = concurrency
        self.engine_latency_ms = engine_latency_ms
        #: Where the workers write CPU profiles of every thread (bench/profiling/); None: not profiled.
        self.profile_dir = profile_dir
        #: While the latency is on: the proxy's count of delayed requests when it was turned on.
        self._delayed_from: int | None = None
        #: Engine requests that waited the injected latency (from the proxy's count).
        self.delayed_requests = 0
        self.progress = progress or (lambda _d, _t, _l: None)
        self.ready_at = 0.0  # when start() had the dispatcher ready (time.time())
        self.started_at = 0.0  # when the measured run began (time.time()): the timeline's zero
        self.es = build_client(ElasticsearchSettings(host=bed.es_url, request_timeout_s=120))

    def reset(self) -> None:
        """Empty the task index and Redis: every run starts from the same state."""
        empty_task_index(self.es)
        client = redis.Redis.from_url(self.bed.redis.url)
        client.flushall()
        client.close()

    def start(self, *, together: bool = False) -> tuple[SimulatorProcess, CeleryFleet | None]:
        """The simulated nodes (polling themselves in pull mode) and, in push mode, elastask's processes
        (``together``: the workers and the beat started at once, as a user starts them; else the beat
        after the workers are ready)."""
        s = self.scenario
        default_ms, by_type = run_times(s)
        extra = [arg for item in by_type for arg in ("--run-ms-by-type", item)]
        if pull_mode(self.mode):
            extra += ["--pull", pull_mode(self.mode), "--task-types", BENCH_TASK_TYPES]
            extra += [arg for item in priorities(s) for arg in ("--type-priority", item)]
        simulator = self.bed.start_simulator(s.nodes, run_ms=default_ms, capacity=s.capacity, extra_args=extra)
        if pull_mode(self.mode):
            return simulator, None
        fleet = CeleryFleet(
            self.workdir / f"{s.name}-{self.mode}-{s.nodes}",
            self.bed,
            simulator,
            env={
                # No interval given: the shipped defaults, as a new user runs elastask.
                **({"ELASTASK_POLLING_INTERVAL": str(self.push_interval_ms)} if self.push_interval_ms else {}),
                "ELASTASK_RETRY_INTERVAL": "1000",
                "ELASTASK_KIBANA_CAPACITY": str(s.capacity),
                **(profiling_env(self.profile_dir) if self.profile_dir is not None else {}),
            },
        )
        workers = [
            fleet.worker(f"bench-worker{n + 1}", concurrency=self.concurrency, wait=not together)
            for n in range(self.workers)
        ]
        fleet.beat("bench-beat")
        for worker in workers if together else []:
            fleet.wait_until_ready(worker)
        self.ready_at = time.time()
        return simulator, fleet

    def engine_latency(self, on: bool) -> None:
        """While ``on``, every request through the proxy waits ``engine_latency_ms`` first -- elastask's and the
        simulated Kibana nodes' alike, as when the engine is a network hop away. The seeding before and the
        counting after go without it."""
        proxy = self.bed.proxy
        if not self.engine_latency_ms or proxy is None or on == (self._delayed_from is not None):
            return
        if on:
            self._delayed_from = int(proxy.stats()["delayed"])
            proxy.set_faults(latency_ms=self.engine_latency_ms)
        else:
            proxy.set_faults()
            self.delayed_requests = int(proxy.stats()["delayed"]) - (self._delayed_from or 0)
            self._delayed_from = None

    def seed(self, docs: list[TaskDocument]) -> None:
        operations: list[dict[str, Any]] = []
        for doc in docs:
            operations += [{"create": {"_index": INDEX, "_id": doc.id}}, doc.to_source()]
        for start in range(0, len(operations), 2000):
            answer = self.es.bulk(operations=operations[start : start + 2000])
            if answer["errors"]:
                failed = [item for item in answer["items"] if "error" in next(iter(item.values()))]
                raise RuntimeError(f"seeding failed for {len(failed)} document(s), first: {failed[:1]}")
        self.es.indices.refresh(index=INDEX)

    def run(self) -> dict[str, Any]:
        """Seed, start, wait until done (or the duration passed), measure, stop."""
        if self.scenario.cold_start:
            return self.run_cold()
        s = self.scenario
        self.reset()
        simulator, fleet = self.start()
        try:
            time.sleep(2)  # let the first claim cycles run on an empty index
            # Everything falls due at one instant after seeding, in both modes.
            due_count = len(documents(s, datetime.now(UTC))) if s.mix else s.one_shot_tasks + s.recurring_tasks
            lead = timedelta(seconds=3 + (due_count + s.idle_docs) / 2500)
            due_at = datetime.now(UTC) + lead
            self.seed(documents(s, due_at))
            self.engine_latency(True)
            simulator.reset()
            wait = (due_at - datetime.now(UTC)).total_seconds()
            before = read_counters(self.bed.engine.url)
            if wait > 0:
                time.sleep(wait)
            meter = self.cpu_meter(simulator, fleet)
            meter.start()
            started = time.monotonic()
            self.started_at = time.time()
            finished = self.wait_until_done(simulator, started)
            elapsed = (finished or time.monotonic()) - started
            meter.stop()
            if not s.duration_s:
                self.wait_for_outcomes(simulator)
            self.engine_latency(False)
            after = read_counters(self.bed.engine.url)
            stats = simulator.stats(drifts=True)
            remaining = self.remaining()
            logs = fleet.logs() if fleet else ""
        finally:
            self.engine_latency(False)
            if fleet is not None:
                fleet.stop()
            simulator.stop()
        result = self.measure(stats, after.minus(before), elapsed, finished is not None, remaining, logs)
        self.add_cpu(result, meter)
        return result

    def run_cold(self) -> dict[str, Any]:
        """The tasks due first, then the dispatcher started: measured from its start to the last run's end."""
        s = self.scenario
        self.reset()
        self.seed(documents(s, datetime.now(UTC)))
        self.engine_latency(True)
        before = read_counters(self.bed.engine.url)
        launched = self.started_at = time.time()
        started = time.monotonic()
        simulator, fleet = self.start(together=True)
        try:
            meter = self.cpu_meter(simulator, fleet)
            meter.start()
            finished = self.wait_until_done(simulator, started)
            meter.stop()
            self.wait_for_outcomes(simulator)
            self.engine_latency(False)
            after = read_counters(self.bed.engine.url)
            stats = simulator.stats(drifts=True)
            remaining = self.remaining()
            logs = fleet.logs() if fleet else ""
        finally:
            self.engine_latency(False)
            if fleet is not None:
                fleet.stop()
            simulator.stop()
        elapsed = (finished or time.monotonic()) - started
        result = self.measure(stats, after.minus(before), elapsed, finished is not None, remaining, logs)
        # CPU from the worker being ready (start-up's imports left out) to the last run.
        self.add_cpu(result, meter)
        nodes = stats["nodes"].values()
        first = min((n["first_start_s"] for n in nodes if n.get("first_start_s") is not None), default=None)
        last = max((n["last_end_s"] for n in nodes if n.get("last_end_s") is not None), default=None)
        result["first_run_after_start_s"] = None if first is None else round(first - launched, 3)
        # Push: from the worker saying it is ready (Celery's start-up left out); pull: the nodes' own start.
        ready = self.ready_at if fleet is not None else launched
        result["first_run_after_ready_s"] = None if first is None else round(first - ready, 3)
        burst_s = None if first is None or last is None else last - first
        result["burst_s"] = None if burst_s is None else round(burst_s, 3)
        # Throughput from the first run's start to the last run's end (the start-up is in first_run_after_start_s).
        result["throughput_per_s"] = round(result["completed"] / burst_s, 2) if burst_s else result["throughput_per_s"]
        result["utilisation"] = round(result["throughput_per_s"] / s.ceiling_per_s, 4)
        return result

    def cpu_meter(self, simulator: SimulatorProcess, fleet: CeleryFleet | None) -> CpuMeter:
        """CPU of each part of the bed: elastask's processes (push), the simulated nodes, engine, Redis, proxy."""
        bed = self.bed

        def pid(process: Any) -> list[int]:
            return [process.pid] if process is not None and process.pid is not None else []

        return CpuMeter(
            {
                "dispatcher": fleet.pids() if fleet else [],
                "simulator": pid(simulator.process),
                "engine": pid(bed.engine.process),
                "redis": pid(bed.redis.process),
                "proxy": pid(bed.proxy.process if bed.proxy is not None else None),
            }
        )

    @staticmethod
    def add_cpu(result: dict[str, Any], meter: CpuMeter) -> None:
        """The run's CPU per task, by part, and how busy the whole machine was (what limits the run)."""
        per_task = meter.ms_per_task(result["completed"])
        result["dispatcher_cpu_ms_per_task"] = per_task.get("dispatcher")
        result["cpu_ms_per_task"] = per_task
        # The dispatcher's by process, busiest first: the claim loop's process stands out when it is the limit.
        result["dispatcher_processes_cpu_ms_per_task"] = meter.processes_ms_per_task("dispatcher", result["completed"])
        result["machine_busy_share"] = meter.machine_busy_share

    def wait_until_done(self, simulator: SimulatorProcess, started: float) -> float | None:
        """Poll the simulator; the monotonic time the work was done, or None on timeout."""
        s = self.scenario
        total = s.one_shot_tasks
        limit = s.duration_s or (3 * total / max(1.0, s.ceiling_per_s) + 120)
        while True:
            now = time.monotonic()
            done = int(simulator.stats()["totals"]["runs_finished"])
            if s.duration_s:
                self.progress(int(now - started), int(s.duration_s), f"{self.mode}: {done} runs")
                if now - started >= s.duration_s:
                    return now
            else:
                self.progress(min(done, total), total, f"{self.mode}: {done}/{total} done")
                if done >= total:
                    return now
            if now - started > limit:
                return None
            time.sleep(0.25)

    def wait_for_outcomes(self, simulator: SimulatorProcess, timeout_s: float = 30.0) -> None:
        """Wait until every finished run's outcome write was answered by the engine.

        A node counts a run finished before it writes the outcome (update or delete); the engine's
        counters read before those writes land would miss them.
        """
        deadline = time.monotonic() + timeout_s
        while int(simulator.stats()["totals"].get("outcomes_pending", 0)) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)

    def remaining(self) -> dict[str, int]:
        """One-shot documents left, and documents stuck past their lease or failed."""
        self.es.indices.refresh(index=INDEX)
        now = datetime.now(UTC).isoformat()

        def count(*filters: dict[str, Any]) -> int:
            query = {"bool": {"filter": [{"term": {"type": "task"}}, *filters]}}
            return int(self.es.count(index=INDEX, query=query)["count"])

        return {
            "one_shot_left": count({"term": {"task.taskType": "bench:one-shot"}}),
            "failed": count({"term": {"task.status": "failed"}}),
            "stuck": count(
                {"terms": {"task.status": ["running", "claiming"]}}, {"range": {"task.retryAt": {"lt": now}}}
            ),
        }

    def measure(
        self,
        stats: dict[str, Any],
        engine: Any,
        elapsed: float,
        completed_in_time: bool,
        remaining: dict[str, int],
        logs: str,
    ) -> dict[str, Any]:
        s = self.scenario
        nodes = stats["nodes"].values()
        drifts = [d for node in nodes for d in node.get("drifts", [])]
        refills = [r for node in nodes for r in node.get("refills", [])]
        writes = [w for node in nodes for w in node.get("outcome_writes", [])]
        if self.mode == "push":
            parsed = [(int(claimed), float(ms)) for claimed, ms in _CLAIM_CYCLE.findall(logs)]
            cycles = [ms for _, ms in parsed]
            busy = [ms for claimed, ms in parsed if claimed > 0]
        else:
            cycles = [c for node in nodes for c in node.get("claim_cycles", [])]
            busy = [c for node in nodes for c in node.get("busy_claim_cycles", [])]
        completed = int(stats["totals"]["runs_finished"])
        throughput = completed / elapsed if elapsed > 0 else 0.0
        # How much of the run the claim path spent in claim cycles (summed over lanes): near 1 a lane, it is the limit.
        claim_path_share = round(sum(cycles) / (elapsed * 1000), 3) if self.mode == "push" and elapsed > 0 else None
        violations = sum(max(0, int(n["max_concurrency"]) - s.capacity) for n in nodes)
        violations += int(stats["totals"]["rejected_over_capacity"])
        lost = remaining["failed"] + remaining["stuck"] + (0 if completed_in_time or s.duration_s else 1)
        return {
            "scenario": s.name,
            "mode": self.mode,
            "nodes": s.nodes,
            "capacity": s.capacity,
            "run_ms": s.run_ms,
            "workers": self.workers if self.mode == "push" else None,
            "claim_path_share": claim_path_share,
            "engine_latency_ms": self.engine_latency_ms,
            "engine_requests_delayed": self.delayed_requests,
            "one_shot_tasks": s.one_shot_tasks,
            "recurring_tasks": s.recurring_tasks,
            "documents": s.one_shot_tasks + s.recurring_tasks + s.idle_docs,
            "claim_interval": claim_interval(self.mode, self.push_interval_ms),
            "elapsed_s": round(elapsed, 3),
            "completed": completed,
            "completed_in_time": completed_in_time,
            "throughput_per_s": round(throughput, 2),
            "ceiling_per_s": round(s.ceiling_per_s, 2),
            "utilisation": round(throughput / s.ceiling_per_s, 4) if s.one_shot_tasks and not s.mix else None,
            "drift_ms": _summary(drifts),
            "claim_cycle_ms": _summary(cycles, (0.5, 0.99)),
            # Cycles that claimed at least one task: what a claim costs when there is work.
            "busy_claim_cycle_ms": _summary(busy, (0.5, 0.99)),
            # A slot freed on a node (outcome written) -> the next run started there: the cost of a refill.
            "refill_ms": _summary(refills, (0.5, 0.99)),
            # A run ended -> its outcome acknowledged (Kibana's buffered store, the same in every mode).
            "outcome_write_ms": _summary(writes, (0.5, 0.99)),
            "engine": {
                "operations": engine.operations,
                "requests": engine.requests,
                "by_kind": {"search": engine.search, "get": engine.get, "index": engine.index, "delete": engine.delete},
                "operations_per_s": round(engine.operations / elapsed, 2) if elapsed else None,
                "requests_per_s": round(engine.requests / elapsed, 2) if elapsed else None,
                "operations_per_task": round(engine.operations / completed, 2) if completed else None,
                "requests_per_task": round(engine.requests / completed, 2) if completed else None,
            },
            "cap_violations": violations,
            "overlapping_runs": int(stats["totals"]["overlapping_runs"]),
            "lost": lost,
            # Runs a node received before the task's runAt (push claims ahead; it must never push early).
            "early_starts": sum(1 for d in drifts if d < 0),
            # The run that started latest after its runAt, to explain a max drift.
            "latest_start": max(
                ({"drift_ms": n.get("latest_start_ms"), "task": n.get("latest_start_task")} for n in nodes),
                key=lambda x: x["drift_ms"] or 0.0,
                default=None,
            ),
            "remaining": remaining,
            "claim_conflicts": int(stats["totals"].get("claim_conflicts", 0)),
            # Every start drift, and each run's (start, end) in seconds from the measured start per node:
            # the timeline charts (bench/timeline.py).
            "drifts_ms": [round(d, 1) for d in drifts],
            "timeline": {
                name: [[round(a - self.started_at, 3), round(b - self.started_at, 3)] for a, b in node.get("spans", [])]
                for name, node in stats["nodes"].items()
            },
        }


def _summary(values: list[float], points: tuple[float, ...] = (0.5, 0.95, 0.99)) -> dict[str, float | None]:
    result: dict[str, float | None] = {f"p{round(p * 100)}": _round(percentile(values, p)) for p in points}
    result["min"] = _round(min(values)) if values else None
    result["max"] = _round(max(values)) if values else None
    result["count"] = len(values)
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def run_idle(
    bed: Testbed,
    fleets: tuple[int, ...],
    modes: list[str],
    workdir: Path,
    duration_s: float,
    push_interval_ms: int | None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Engine requests per second with no due task, per fleet size and mode."""
    from elastask_bed.bench.scenarios import SCENARIOS

    results = []
    for nodes in fleets:
        scenario = SCENARIOS["idle"].sized(nodes=nodes, duration_s=duration_s)
        for mode in modes:
            run = BenchRun(bed, scenario, mode, workdir, push_interval_ms=push_interval_ms, progress=progress)
            run.reset()
            simulator, fleet = run.start()
            try:
                time.sleep(5)  # warm up: first cycles, node discovery
                before = read_counters(bed.engine.url)
                started = time.monotonic()
                while time.monotonic() - started < duration_s:
                    run.progress(int(time.monotonic() - started), int(duration_s), f"idle {nodes} nodes, {mode}")
                    time.sleep(0.5)
                elapsed = time.monotonic() - started
                engine = read_counters(bed.engine.url).minus(before)
            finally:
                if fleet is not None:
                    fleet.stop()
                simulator.stop()
            results.append(
                {
                    "scenario": "idle",
                    "mode": mode,
                    "nodes": nodes,
                    "claim_interval": claim_interval(mode, push_interval_ms),
                    "elapsed_s": round(elapsed, 2),
                    "engine": {
                        "operations": engine.operations,
                        "requests": engine.requests,
                        "by_kind": {
                            "search": engine.search,
                            "get": engine.get,
                            "index": engine.index,
                            "delete": engine.delete,
                        },
                        "operations_per_s": round(engine.operations / elapsed, 2),
                        "requests_per_s": round(engine.requests / elapsed, 2),
                    },
                    "cap_violations": 0,
                    "overlapping_runs": 0,
                    "lost": 0,
                }
            )
    return results
