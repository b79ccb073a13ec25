"""One chaos run: the test bed, 2 workers and 2 beats, the workload, the faults from the seed, the quiet
phase, then the records read and checked."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from elastask_bed.chaos import operators, workload
from elastask_bed.chaos.evaluate import Collected, counts, evaluate
from elastask_bed.chaos.fleet import ChaosFleet
from elastask_bed.chaos.index import TaskIndex
from elastask_bed.chaos.injector import Injector, RecordingSimulator
from elastask_bed.chaos.liveness import LEASE_WAIT_S, Thresholds
from elastask_bed.chaos.logs import in_flight_pushes
from elastask_bed.chaos.model import Fault, OneShot, Run
from elastask_bed.chaos.report import ChaosResult
from elastask_bed.chaos.schedule import Plan, make_schedule
from elastask_bed.testbed import Testbed

WORKERS = ("worker1", "worker2")
BEATS = ("beat1", "beat2")
CAPACITY = 10  # kibana_capacity's default, and each simulated node's ephemeral capacity
LOCK_TTL_S = 10.0  # claim_lock_ttl_ms at the default polling_interval
RETRY_INTERVAL_S = 5  # retry_interval's default: a lease past retryAt is reaped within a cycle or two


@dataclass(frozen=True)
class ChaosOptions:
    """What a run does; the defaults are ``elastask bench chaos``'s."""

    seed: int
    duration_s: float = 1800.0
    quiet_s: float = 60.0
    nodes: int = 4
    recurring: int = 150
    one_shots_per_s: float = 1.5
    skew: bool = True
    check_liveness: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)
    workdir: Path | None = None
    warm_up_s: float = 10.0
    #: "random": faults drawn from the seed; "operators": the runbooks' restarts (operators.py).
    plan: str = "random"

    @property
    def patient(self) -> bool:
        """Tasks of the patient type (Kibana's 5m timeout) in the workload: not in the operators' plan, whose
        steps own the leases that run out after them (a 5-minute one would land in a later step)."""
        return self.plan == "random"

    @property
    def fault_phase_s(self) -> float:
        return self.duration_s - self.quiet_s


class ChaosRun:
    """Runs one chaos run on its own test bed (or on ``bed``, shared: its index and Redis are emptied)."""

    def __init__(self, options: ChaosOptions, say: Callable[[str], None], bed: Testbed | None = None) -> None:
        self.options = options
        self.say = say
        self.workdir = options.workdir or Path(tempfile.mkdtemp(prefix="elastask-chaos-"))
        self.own_bed = bed is None
        self.bed = bed or Testbed(self.workdir / "testbed", kibana_nodes=0)
        self.skew = options.skew and options.plan == "random" and shutil.which("faketime") is not None
        self.one_shots: list[OneShot] = []
        self.stream_errors: list[str] = []
        self.stream_stop = threading.Event()

    def settings(self) -> dict[str, Any]:
        o = self.options
        return {
            "nodes": o.nodes,
            "capacity": CAPACITY,
            "workers": len(WORKERS),
            "beats": len(BEATS),
            "config": workload.dispatcher_config(),
            "claim_lock_ttl_s": LOCK_TTL_S,
            "hang_s": workload.TASK_TIMEOUT_S,
            "one_shots_per_s": o.one_shots_per_s,
            "skew": "on" if self.skew else ("off: faketime not found (apt-get install faketime)" if o.skew else "off"),
            "check_liveness": o.check_liveness,
            "plan": o.plan,
            "thresholds": vars(o.thresholds),
        }

    def run(self) -> ChaosResult:
        o = self.options
        plan = Plan(
            fault_phase_s=o.fault_phase_s,
            warm_up_s=o.warm_up_s,
            nodes=o.nodes,
            workers=WORKERS,
            beats=BEATS,
            lock_ttl_s=LOCK_TTL_S,
            hang_s=workload.TASK_TIMEOUT_S,
            skew=self.skew,
        )
        faults = operators.schedule() if o.plan == "operators" else make_schedule(o.seed, plan)
        self.say(
            f"chaos: seed {o.seed}, {o.duration_s:g} s ({o.quiet_s:g} s quiet), {len(faults)} "
            + ("operators' steps planned" if o.plan == "operators" else "faults planned")
        )
        self.say(f"chaos: workdir {self.workdir}")
        if self.own_bed:
            self.say("chaos: starting the search engine, proxy and Redis...")
            self.bed.start()  # stops what it started if a part fails
        index = TaskIndex(self.bed.engine.url)
        simulator = RecordingSimulator(
            self.workdir, self.bed.es_url, nodes=o.nodes, extra_args=workload.run_time_args(), seed=str(o.seed)
        )
        fleet: ChaosFleet | None = None
        try:
            if not self.own_bed:
                self._reset_shared_bed(index)
            simulator.start()
            fleet = ChaosFleet(self.workdir / "fleet", self.bed, simulator, config=workload.dispatcher_config())
            self.say(f"chaos: {o.nodes} Kibana nodes up; starting {len(WORKERS)} workers and {len(BEATS)} beats...")
            for role in (*WORKERS, *BEATS):
                fleet.start_role(role)
            fleet.check_started()
            return self._run_phases(faults, index, simulator, fleet)
        finally:
            self.stream_stop.set()
            if fleet is not None:
                fleet.watching = False
                fleet.resume_all()
                fleet.stop()
            simulator.stop()
            index.close()
            if self.own_bed:
                self.bed.stop()
                shutil.rmtree(self.workdir / "testbed" / "engine", ignore_errors=True)  # keep the logs only
            else:
                self._heal_shared_bed()

    def _run_phases(
        self, faults: list[Fault], index: TaskIndex, simulator: RecordingSimulator, fleet: ChaosFleet
    ) -> ChaosResult:
        o = self.options
        rng = random.Random(o.seed + 1)
        recurring = workload.recurring_tasks(rng, datetime.now(UTC), o.recurring, patient=o.patient)
        index.create(recurring, refresh=True)
        injector = Injector(self.bed, simulator, fleet, hang_s=workload.TASK_TIMEOUT_S, say=self.say)
        t0 = injector.t0 = time.time()
        threading.Thread(target=fleet.watch, name="chaos-watch", daemon=True).start()
        stream = threading.Thread(target=self._stream, args=(index, random.Random(o.seed + 2)), daemon=True)
        stream.start()
        next_progress = t0 + 15
        for fault in faults:
            while time.time() < t0 + fault.start_s:
                next_progress = self._progress(simulator, t0, next_progress)
                time.sleep(min(0.1, max(0.0, t0 + fault.start_s - time.time())))
            injector.launch(fault)
        while time.time() < t0 + o.fault_phase_s:
            next_progress = self._progress(simulator, t0, next_progress)
            time.sleep(0.2)
        self.stream_stop.set()
        stream.join(30)
        injector.wait()
        quiet_start = time.time()
        self.say(f"+{quiet_start - t0:6.1f}s  quiet phase: every fault healed, {o.quiet_s:g} s without faults")
        while time.time() < quiet_start + o.quiet_s:
            next_progress = self._progress(simulator, t0, next_progress)
            time.sleep(0.2)
        if o.patient:
            self._wait_out_lost_leases(index, simulator, t0, next_progress)
        fleet.watching = False
        stats = simulator.stats()
        records = simulator.runs()
        runs = [Run.from_record(r) for r in records]
        collected = Collected(
            t0=t0,
            quiet_start=quiet_start,
            collected_at=time.time(),
            nodes=o.nodes,
            capacity=CAPACITY,
            runs=runs,
            windows=list(injector.windows),
            one_shots=list(self.one_shots),
            recurring_ids=[doc.id for doc in recurring],
            states=index.statuses([t.id for t in self.one_shots]),
            stuck=index.stuck(grace_s=2 * RETRY_INTERVAL_S + 2),
            exits=list(fleet.exits),
            processes_started=fleet.started,
            simulator_nodes=_per_node(stats, simulator),
            simulator_overlapping=int(stats["totals"]["overlapping_runs"]),
            warm_up_s=o.warm_up_s,
            intervals={
                doc.id: doc.schedule.interval_ms / 1000
                for doc in recurring
                if doc.schedule is not None and doc.schedule.interval_ms
            },
            in_flight=in_flight_pushes(fleet.workdir.glob("worker*.log")),
        )
        self._keep_records(collected, records, stats)
        checks = evaluate(collected, o.thresholds, o.check_liveness)
        if o.plan == "operators":
            logs = sorted(fleet.workdir.glob("worker*.log"))
            lines = [line for log in logs for line in log.read_text(errors="replace").splitlines()]
            checks += operators.step_checks(
                collected.windows,
                runs,
                operators.expired_leases(lines),
                t0=t0,
                warm_up_s=o.warm_up_s,
                until=collected.collected_at,
            )
        return ChaosResult(
            seed=o.seed,
            duration_s=o.duration_s,
            quiet_s=o.quiet_s,
            settings=self.settings(),
            t0=t0,
            windows=collected.windows,
            checks=checks,
            counts=counts(collected),
            harness_errors=[*injector.errors, *fleet.errors, *self.stream_errors],
            workdir=str(self.workdir),
        )

    def _keep_records(self, collected: Collected, records: list[dict[str, Any]], stats: dict[str, Any]) -> None:
        """Everything the checks read, in the workdir (records.json), for a look afterwards."""
        kept = {
            "t0": collected.t0,
            "quiet_start": collected.quiet_start,
            "collected_at": collected.collected_at,
            "windows": [vars(w) for w in collected.windows],
            "one_shots": [vars(t) for t in collected.one_shots],
            "states": collected.states,
            "stuck": collected.stuck,
            "exits": [vars(e) for e in collected.exits],
            "simulator": stats,
            "runs": records,
        }
        (self.workdir / "records.json").write_text(json.dumps(kept))

    def _wait_out_lost_leases(self, index: TaskIndex, simulator: RecordingSimulator, t0: float, due: float) -> None:
        """After the quiet phase, until no task of the patient type is held by a lease older than
        LEASE_WAIT_S (a lost run's, Kibana's 5 minutes; or a claim never pushed, which lease-waits then
        names), and a retry cycle more: so every task has run again before the checks read the end."""
        deadline = time.time() + workload.PATIENT_TIMEOUT_S + 60
        said = False
        while time.time() < deadline:
            held = index.held_longer_than(workload.PATIENT_TYPE, int(LEASE_WAIT_S), workload.PATIENT_TIMEOUT_S)
            if not held:
                break
            if not said:
                self.say(
                    f"+{time.time() - t0:6.1f}s  waiting out {len(held)} lease(s) of {workload.PATIENT_TYPE} "
                    f"(Kibana's {workload.PATIENT_TIMEOUT_S // 60}m timeout) held over {LEASE_WAIT_S:g} s: "
                    + ", ".join(held[:6])
                )
                said = True
            due = self._progress(simulator, t0, due)
            time.sleep(1.0)
        if said:
            time.sleep(2 * RETRY_INTERVAL_S + 2)  # the last ones taken back and pushed again

    def _stream(self, index: TaskIndex, rng: random.Random) -> None:
        """One-shot tasks, ``one_shots_per_s`` on average, until the fault phase ends."""
        rate = self.options.one_shots_per_s
        while not self.stream_stop.is_set():
            count = int(rate) + (1 if rng.random() < rate - int(rate) else 0)
            now = datetime.now(UTC)
            docs = workload.one_shot_tasks(rng, now, len(self.one_shots), count, patient=self.options.patient)
            try:
                index.create(docs)
                self.one_shots += [OneShot(d.id, d.run_at.timestamp(), now.timestamp(), d.task_type) for d in docs]
            except Exception as e:  # the engine itself is never faulted; report and go on
                self.stream_errors.append(f"creating one-shot tasks: {e}")
            self.stream_stop.wait(1.0)

    def _progress(self, simulator: RecordingSimulator, t0: float, due: float) -> float:
        """Every 15 s, a line: runs so far, one-shot tasks created."""
        now = time.time()
        if now < due:
            return due
        try:
            totals = simulator.stats()["totals"]
            self.say(
                f"+{now - t0:6.1f}s  runs started {totals['runs_started']}, finished {totals['runs_finished']}, "
                f"failed {totals['runs_failed']}; one-shot tasks created {len(self.one_shots)}"
            )
        except OSError as e:
            self.say(f"+{now - t0:6.1f}s  (simulator stats unavailable: {e})")
        return due + 15

    def _reset_shared_bed(self, index: TaskIndex) -> None:
        import redis

        self._heal_shared_bed()
        index.clear()
        client = redis.Redis.from_url(self.bed.redis.url)
        try:
            client.flushall()
        finally:
            client.close()

    def _heal_shared_bed(self) -> None:
        """A shared bed is left as it was found: the proxy without faults, Redis running."""
        if self.bed.proxy is not None:
            self.bed.proxy.set_faults()
        process = self.bed.redis.process
        if process is None or not process.running():
            self.bed.redis.start()


def _per_node(stats: dict[str, Any], simulator: RecordingSimulator) -> dict[int, dict[str, int]]:
    """The simulator's counters per node index."""
    by_owner = stats["nodes"]
    return {
        int(node["index"]): {
            k: int(by_owner[node["owner_id"]][k]) for k in ("max_concurrency", "rejected_over_capacity")
        }
        for node in simulator.nodes
    }
