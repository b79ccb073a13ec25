"""The simulated world: the real claim, dispatch and retry loops as processes on one engine and one Redis,
stepped one at a time by a seeded scheduler on a virtual clock.

Everything the loops touch is in this process and answers at once: the stub engine (its clock the
world's), one fakeredis server (the real Lua scripts; its TIME and key expiries on the world's clock),
and simulated Kibana nodes that run what is pushed for a while and then write its outcome, as Kibana
does. The loops are elastask's own code, unchanged; each process has its own runtime (its own Redis
connection, memory and clocks) and takes one whole operation per step: a claim cycle, a dispatch
job, a retry cycle. Interleavings inside an operation come from its calls: right after an engine
write or real-time read, a Redis command or pipeline, or a push reached a Kibana node, the scheduler
may run other processes' steps before the call answers (the caller is paused there), or make the
call answer an error although it applied (an engine write's 503, a Redis connection lost before its
reply).

After every step the world checks the invariants of shared/DESIGN.md on what the Kibana nodes saw:
no node over its capacity in units, no task running twice at once, no push carrying more attempts than
the task's pushes since Kibana last reset them, and, once the run drains, nothing lost and no attempt
counted for a task that never reached Kibana's nodes more often than it was pushed. Every process is a
worker that beats while it runs and records the jobs it holds; a process may be killed between its
operations or in the middle of one, at a pause (driver.py). Deterministic: one seed gives the same run
(ids, choices, faults and times).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import random
import threading
import types
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import elasticsearch
import fakeredis
import redis
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig

from elastask import keys
from elastask.config import KibanaNode, KibanaSettings, Settings
from elastask.core.documents import new_task
from elastask.core.intervals import format_date, parse_date
from elastask.core.messages import DispatchJob
from elastask.errors import ElastaskError, LedgerError, PushMarkersUnknown, StoreError
from elastask.loops.claim.loop import claim_available_tasks
from elastask.loops.dispatch.job import push_claimed_tasks
from elastask.loops.dispatch.outcomes import give_back_unsent
from elastask.loops.retry.loop import retry_expired_leases
from elastask.parts.kibana import KibanaClient, PushOutcome, PushResult, Uptime
from elastask.parts.ledger import Ledger
from elastask.parts.nodes import NodeRegistry
from elastask.parts.store import TaskStore
from elastask.parts.worker_claims import KEEP_MS, WorkerClaims
from elastask.runtime import Runtime
from elastask.task_types import TaskTypeRule
from elastask_bed.simulation.driver import Driver, ProcessKilled
from elastask_bed.simulation.engine import StubEngine

INDEX = ".kibana_task_manager"
#: The world's clock starts here (a fixed moment: the same run for the same seed).
EPOCH = datetime(2026, 12, 1, tzinfo=UTC)
COST_UNITS = 2  # a normal task
#: A task type limited to one run per node at a time.
LIMITED = "sim:limited"


class VirtualTime:
    """The world's clock (ms since the epoch); every process reads it, each with its own skew."""

    def __init__(self) -> None:
        self.now_ms = EPOCH.timestamp() * 1000

    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now_ms / 1000, UTC)


@contextlib.contextmanager
def redis_on(clock: VirtualTime) -> Iterator[None]:
    """fakeredis's TIME and key expiries on the world's clock while the simulation runs."""
    import fakeredis._socket._base as socket_base
    import fakeredis.commands_mixins.server_mixin as server_mixin

    shim = types.SimpleNamespace(time=lambda: clock.now_ms / 1000)
    modules = (socket_base, server_mixin)
    saved = [getattr(module, "time") for module in modules]  # noqa: B009 - not exported: read by name
    for module in modules:
        setattr(module, "time", shim)  # noqa: B010
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            setattr(module, "time", original)  # noqa: B010


class Inline(Executor):
    """Push threads, as a step: each push runs when it is submitted."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except ProcessKilled:
            raise  # the pushing process was killed at this push: nothing after it runs
        except BaseException as e:
            future.set_exception(e)
        return future


@dataclass
class Run:
    task_id: str
    node: str
    started_ms: float
    ends_ms: float
    cost: int
    task_type: str = ""


@dataclass
class Violation:
    step: int
    what: str


class _Fields(list[bytes]):
    """One command's arguments, encoded: what DirectConnection hands fakeredis instead of RESP bytes."""


class DirectConnection(fakeredis.FakeRedisConnection):
    """fakeredis without the wire: each command's encoded arguments go straight to the fake server's
    command handler, instead of being packed into RESP by redis-py and parsed back by fakeredis (a
    third of the simulation's Redis cost). The same commands run in the same order with the same
    replies; only the bytes in between are gone."""

    def _fields(self, args: tuple[Any, ...]) -> _Fields:
        if isinstance(args[0], str):  # as redis-py's packer: "CLIENT SETNAME" is two arguments
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        return _Fields(map(self.encoder.encode, args))

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self.send_packed_command([self._fields(args)])

    def pack_commands(self, commands: Any) -> list[Any]:
        return [self._fields(tuple(command)) for command in commands]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        sock: Any = self.get_socket()
        if not sock._server.connected or sock._killed:  # as FakeSocket.sendall
            raise redis.ConnectionError("FakeRedis is emulating a connection error.")
        for fields in command:
            sock._process_command(fields)


class PausingRedis(fakeredis.FakeRedis):
    """A process's Redis connection: after each command or pipeline applied, ``after_call`` runs before
    the caller sees the reply (the world runs other processes there, or loses the reply)."""

    def __init__(self, *, server: fakeredis.FakeServer, after_call: Callable[[], None]) -> None:
        super().__init__(server=server, connection_class=DirectConnection)
        self.after_call = after_call
        #: The process was killed: its connection is gone (its lock's renewal thread renews nothing).
        self.closed = False

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.closed:
            raise redis.ConnectionError("simulated: the process was killed")
        answer = super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        self.after_call()
        return answer

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        def execute_then_pause(raise_on_error: bool = True) -> Any:
            if self.closed:
                raise redis.ConnectionError("simulated: the process was killed")
            answer = execute(raise_on_error)
            self.after_call()
            return answer

        pipe.execute = execute_then_pause  # type: ignore[method-assign]
        return pipe


class SimKibana(KibanaClient):
    """The simulated Kibana nodes, as one client: a push starts a run there (checked against the
    invariants); the world ends it later with Kibana's outcome."""

    def __init__(self, world: World, settings: KibanaSettings) -> None:
        super().__init__(settings)
        self.world = world

    def push(self, node: KibanaNode, body: Mapping[str, Any]) -> PushResult:
        return self.world.pushed(node.id or "", str(body.get("id", "")), body)

    def uptime(self, node: KibanaNode, timeout_s: float = 2.0) -> Uptime | None:
        """As Kibana shows it: its last sample, taken every ``uptime_sampled_every_ms`` from the start."""
        started = self.world.node_started_ms.get(node.id or "", EPOCH.timestamp() * 1000)
        every = self.world.uptime_sampled_every_ms
        uptime = int(self.world.clock.now_ms - started)
        return Uptime(uptime - uptime % every if every else uptime, every)

    def execution_control(self, node: KibanaNode, timeout_s: float = 2.0) -> Any:
        return None


@dataclass
class Process:
    """One simulated process: a claimer, a dispatcher or a retry loop, on its own runtime."""

    name: str
    kind: str
    rt: Runtime
    skew_ms: float = 0.0
    dead: bool = False
    frozen_until_ms: float = 0.0
    #: The dispatch job it is pushing (a kill mid-job strands its tasks, some perhaps marked pushed).
    job: DispatchJob | None = None

    @property
    def worker_id(self) -> str:
        """Its worker's id: the process beats under it and records the jobs it holds (parts/worker_claims.py)."""
        return f"sim:{self.name}"


@dataclass
class World:
    seed: int
    nodes: int = 3
    capacity: int = 4
    one_shots: int = 150
    recurring: int = 12
    limited: int = 12
    claimers: int = 2
    dispatchers: int = 2
    run_ms: tuple[int, int] = (50, 400)
    fault_rate: float = 0.05
    #: Pauses (other processes run first) after Redis calls and pushes too, not only after engine calls;
    #: with them, Redis replies lost after the command applied and pushes accepted but never run.
    redis_pauses: bool = True
    kibana_pauses: bool = True
    #: Redis fails over now and then to a replica that missed the writes since it last caught up.
    redis_failovers: bool = True
    #: Processes killed in the middle of an operation, at a pause (right after an engine, Redis or
    #: Kibana call): they stop there for good, as a SIGKILLed worker does (driver.py).
    kills_mid_call: bool = True
    #: How often a Redis reply is lost after its command applied (per call, while faults are on).
    lost_replies: float = 0.002
    #: How often an engine write that applied answers 503 all the same (per write, while faults are on).
    applied_503s: float = 0.02
    #: How often a node samples the uptime its status shows (Kibana's ops interval; 0: always current).
    uptime_sampled_every_ms: int = 5000
    rng: random.Random = field(init=False)
    clock: VirtualTime = field(default_factory=VirtualTime)
    step_no: int = 0
    violations: list[Violation] = field(default_factory=list)
    runs: dict[str, Run] = field(default_factory=dict)
    pushes: dict[str, int] = field(default_factory=dict)
    node_started_ms: dict[str, float] = field(default_factory=dict)
    jobs: list[DispatchJob] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    trace: list[str] = field(default_factory=list)
    unsent: list[tuple[Process, DispatchJob]] = field(default_factory=list)
    #: Tasks claimed when Redis lost its data (see ``_fault``).
    forgotten: set[str] = field(default_factory=set)
    #: Pauses where other processes went first, by the call the paused process was in.
    pauses: dict[str, int] = field(default_factory=dict)
    #: Tasks of dispatch jobs whose process was killed mid-job: a push marked and never sent may count
    #: its attempt (elastask cannot tell it from a push that reached Kibana), so they are excused.
    marked_unsent: set[str] = field(default_factory=set)
    #: Pushes per task since Kibana last reset its attempts (a recurring task's outcome).
    pushes_since_reset: dict[str, int] = field(default_factory=dict)
    _stack: list[str] = field(default_factory=list)
    _over: bool = False

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.engine = StubEngine(clock=self.clock.datetime)
        self.engine.after_write = self._after_write
        self.engine.after_read = self._after_read
        self.server = fakeredis.FakeServer()
        self.driver = Driver()
        #: The workers' main processes' connection: heartbeats and received jobs (never paused).
        self.beats = WorkerClaims(fakeredis.FakeRedis(server=self.server, connection_class=DirectConnection))
        self.replica = fakeredis_database(None)  # what a replica has: Redis's data as of its last catch-up
        hosts = tuple(
            KibanaNode(url=f"http://kibana-{i}:5601", id=f"kibana:{i}", capacity=self.capacity)
            for i in range(self.nodes)
        )
        self.settings = replace(
            Settings(),
            kibana=KibanaSettings(hosts=hosts),
            kibana_capacity=self.capacity,
            max_attempts=3,
            # One type of limited concurrency (one run per node at a time), as Kibana's reports have.
            task_types={LIMITED: TaskTypeRule(max_concurrency=1)},
        )
        self.processes = [self._process(f"claimer-{i}", "claim") for i in range(self.claimers)]
        self.processes += [self._process(f"dispatcher-{i}", "dispatch") for i in range(self.dispatchers)]
        self.processes.append(self._process("retry", "retry"))
        now = self.clock.datetime()
        for i in range(self.one_shots):
            doc = new_task(f"once-{i:04d}", "sim:once", now=now - timedelta(seconds=1))
            self.engine.put(doc.id, doc.to_source())
        for i in range(self.recurring):
            doc = new_task(f"every-{i:04d}", "sim:every", now=now, interval="2s")
            self.engine.put(doc.id, doc.to_source())
        for i in range(self.limited):
            doc = new_task(f"once-limited-{i:04d}", LIMITED, now=now - timedelta(seconds=1))
            self.engine.put(doc.id, doc.to_source())
        self.recurring_ran: dict[str, int] = {}

    # ---- the processes -------------------------------------------------------------------------

    def _process(self, name: str, kind: str) -> Process:
        client = PausingRedis(server=self.server, after_call=self._after_redis)
        proc = Process(name, kind, None)  # type: ignore[arg-type]
        kibana = SimKibana(self, self.settings.kibana)

        def monotonic() -> float:
            return self.clock.now_ms + proc.skew_ms

        proc.rt = Runtime(
            settings=self.settings,
            store=TaskStore(self.engine, INDEX),  # type: ignore[arg-type]
            redis=client,
            ledger=Ledger(client, monotonic=monotonic),
            nodes=NodeRegistry(self.settings, client, kibana),
            kibana=kibana,
            rng=random.Random(self.rng.random()),
            monotonic_ms=monotonic,
            sleep=lambda _s: None,
        )
        proc.rt.nodes.submit = lambda fn, *args: fn(*args)  # type: ignore[method-assign]  # watchers, as a step
        proc.rt.worker_id = proc.worker_id
        self.beats.beat(proc.worker_id, int(self.clock.now_ms))
        return proc

    def _beat(self) -> None:
        """Every worker that runs (not dead, not frozen) beats, as its main process does every second."""
        for proc in self.processes:
            if not proc.dead and proc.frozen_until_ms <= self.clock.now_ms:
                self.beats.beat(proc.worker_id, int(self.clock.now_ms))

    def _live(self, kind: str) -> list[Process]:
        return [
            p
            for p in self.processes
            if p.kind == kind and not p.dead and p.frozen_until_ms <= self.clock.now_ms and p.name not in self._stack
        ]

    def _claim(self, proc: Process) -> None:
        claim_available_tasks(proc.rt, proc.rt.now(), lambda job: self._send(proc, job), sessions=False)

    def _send(self, proc: Process, job: DispatchJob) -> None:
        """A dispatch job to the broker; now and then the send raises although the broker took it: the
        claim task gives the job's tasks back (as entry/tasks.py does), and the job is delivered too."""
        self.jobs.append(job)
        if self._faults_on and self.rng.random() < 0.03:
            self._count("sent, reported unsent")
            self.unsent.append((proc, job))  # the publisher's report comes a moment later

    def _report_unsent(self) -> None:
        proc, job = self.unsent.pop(self.rng.randrange(len(self.unsent)))
        give_back_unsent(proc.rt, job)

    def _dispatch(self, proc: Process) -> bool:
        now = self.clock.datetime()
        ready = [j for j in self.jobs if all(parse_date(t.body["runAt"]) <= now for t in j.tasks)]
        if not ready:
            return False
        job = self.rng.choice(ready)
        self.jobs.remove(job)
        # The worker received it (entry/heartbeat.py records it, until it is long pushed).
        self.beats.hold(proc.worker_id, [job], int(self.clock.now_ms) + KEEP_MS)
        proc.job = job
        try:
            push_claimed_tasks(proc.rt, job, proc.rt.now(), Inline())
        except (StoreError, LedgerError) as e:  # Celery retries it, as entry/tasks.py's dispatch does
            self.jobs.append(job.retried_after(e.token) if isinstance(e, PushMarkersUnknown) else job)
            raise
        finally:
            proc.job = None
        return True

    def _retry(self, proc: Process) -> None:
        retry_expired_leases(proc.rt, proc.rt.now())

    # ---- Kibana --------------------------------------------------------------------------------

    def pushed(self, node: str, task_id: str, body: Mapping[str, Any]) -> PushResult:
        """A push reaches a node: refused now and then (it is busy: 503, nothing runs), else a run starts;
        now and then its answer is lost on the way back (a gateway's 504: the run goes on)."""
        doc_id = task_id if task_id.startswith("task:") else f"task:{task_id}"
        if self._faults_on and self.rng.random() < 0.1:
            self.trace.append(f"{self.step_no}: push {doc_id} -> {node} refused")
            return PushResult(PushOutcome.REFUSED, "503", 503)
        self.pushes[doc_id] = self.pushes.get(doc_id, 0) + 1
        self.pushes_since_reset[doc_id] = since = self.pushes_since_reset.get(doc_id, 0) + 1
        attempts = body.get("attempts")
        excused = doc_id in self.forgotten or doc_id in self.marked_unsent
        if isinstance(attempts, int) and attempts > since and not excused:
            self._violate(
                f"{doc_id} pushed with attempts {attempts} after {since - 1} push(es): an attempt counted unpushed"
            )
        if self.kibana_pauses and self._faults_on and self.rng.random() < 0.01:
            # Accepted and never run (Kibana lost it): no outcome; its lease runs out and it is retried.
            self._count("push accepted, never run")
            self.trace.append(f"{self.step_no}: push {doc_id} -> {node} accepted, lost")
            return PushResult(PushOutcome.ACCEPTED, "204", 204)
        if doc_id in self.runs:
            self._violate(f"{doc_id} pushed to {node} while it runs on {self.runs[doc_id].node}: a second run")
        task_type = str(body.get("taskType", ""))
        if task_type == LIMITED and any(r.node == node and r.task_type == LIMITED for r in self.runs.values()):
            self._violate(f"{node}: {doc_id} pushed beside another {LIMITED} run (limit 1 per node)")
        used = sum(r.cost for r in self.runs.values() if r.node == node)
        if used + COST_UNITS > self.capacity * COST_UNITS:
            self._violate(f"{node} over its capacity: {used} units in use and {doc_id} pushed")
        run_ms = self.rng.randint(*self.run_ms)
        now = self.clock.now_ms
        self.runs[doc_id] = Run(doc_id, node, now, now + run_ms, COST_UNITS, task_type)
        self.trace.append(f"{self.step_no}: push {doc_id} -> {node}")
        if self.kibana_pauses:
            self._others_first("kibana")  # the run started; its answer comes late
        if self._faults_on and self.rng.random() < 0.03:
            return PushResult(PushOutcome.AMBIGUOUS, "504", 504)
        return PushResult(PushOutcome.ACCEPTED, "204", 204)

    def _finish(self, run: Run) -> None:
        """Kibana's outcome: a one-shot task deleted, a recurring one idle again at its next runAt."""
        del self.runs[run.task_id]
        doc = self.engine.docs.get(run.task_id)
        if doc is None:
            return
        task = doc["_source"]["task"]
        if task.get("schedule"):
            self.pushes_since_reset[run.task_id] = 0  # Kibana's outcome resets attempts
            self.recurring_ran[run.task_id] = self.recurring_ran.get(run.task_id, 0) + 1
            next_run = self.clock.datetime() + timedelta(seconds=2)
            changes = {"status": "idle", "attempts": 0, "runAt": format_date(next_run), "retryAt": None}
            self.engine.put(run.task_id, {**doc["_source"], "task": {**task, **changes, "ownerId": None}})
        else:
            del self.engine.docs[run.task_id]
        self.trace.append(f"{self.step_no}: {run.task_id} done on {run.node}")

    # ---- the scheduler -------------------------------------------------------------------------

    def step(self, *, faults: bool = True) -> None:
        """One step: a process's operation, a run's end, time passing, or a fault."""
        self.step_no += 1
        choices: list[tuple[str, Callable[[], Any]]] = []
        choices += [(proc.name, functools.partial(self._claim, proc)) for proc in self._live("claim")]
        if self.jobs:
            choices += [(proc.name, functools.partial(self._dispatch, proc)) for proc in self._live("dispatch")]
        choices += [(proc.name, functools.partial(self._retry, proc)) for proc in self._live("retry")]
        if self.unsent:
            choices.append(("publisher", self._report_unsent))
        ended = [r for r in self.runs.values() if r.ends_ms <= self.clock.now_ms]
        if ended:
            choices.append(("kibana", lambda: self._finish(min(ended, key=lambda r: r.ends_ms))))
        choices.append(("time", self._advance))
        if self.redis_failovers and self.rng.random() < 0.05:
            self.replica = _copy_of(self.server.dbs[0])  # the replica catches up
        if faults and self.rng.random() < self.fault_rate:
            choices = [("fault", self._fault)]
        name, action = self.rng.choice(choices)
        self._stack.append(name)
        try:
            action()
        except (ElastaskError, redis.RedisError) as e:  # a loop's job failed (an engine or Redis failure)
            if not self._over:
                self.trace.append(f"{self.step_no}: {name} failed: {e!r}")
        finally:
            if self._stack:
                self._stack.pop()

    def _advance(self) -> None:
        self.clock.now_ms += self.rng.choice((5, 20, 100, 500, 2000))
        self._beat()

    def _after_read(self) -> None:
        """Right after a real-time read answered: maybe other processes go first (the reader is paused)."""
        self._others_first("engine")

    def _after_redis(self) -> None:
        """Right after a Redis command or pipeline applied: maybe other processes go first, or the reply
        is lost (the connection dropped: the caller sees an error although the command applied). Only
        on the scheduler's thread: a lock's renewal thread is a production detail and never pauses."""
        if not self.redis_pauses or threading.current_thread() is not self.driver.thread:
            return
        self._others_first("redis", 0.03)
        if self._faults_on and self.rng.random() < self.lost_replies:
            self._count("Redis reply lost")
            raise redis.ConnectionError("simulated: connection lost after the command applied")

    def _count(self, fault: str) -> None:
        self.faults[fault] = self.faults.get(fault, 0) + 1
        self.trace.append(f"{self.step_no}: fault: {fault} ({'/'.join(self._stack)})")

    def _others_first(self, where: str, chance: float = 0.3) -> None:
        """The caller is paused at a call to ``where``: maybe it is killed there, or up to ten steps of
        other processes go first."""
        self._maybe_killed_at(where)
        if self.rng.random() < chance and len(self._stack) < 3:
            self.pauses[where] = self.pauses.get(where, 0) + 1
            for _ in range(self.rng.randint(1, 10)):
                self.step(faults=False)

    def _maybe_killed_at(self, where: str) -> None:
        """Now and then the process paused at this call is killed here (only a top-level operation's: a
        process that others run inside of would stop with it). It never resumes (driver.py)."""
        if not (self.kills_mid_call and self._faults_on and len(self._stack) == 1):
            return
        if threading.current_thread() is not self.driver.thread or self.rng.random() >= 0.002:
            return
        proc = next((p for p in self.processes if p.name == self._stack[0] and not p.dead), None)
        if proc is None or proc.kind == "retry":
            return
        self._count(f"killed mid-call ({where})")
        if proc.job is not None:
            self.marked_unsent |= {t.doc_id for t in proc.job.tasks}
        self._kill(proc)
        self._stack.clear()
        self.driver.park()

    def _kill(self, victim: Process) -> None:
        """A process dies: its connection closes, a replacement starts (its memory gone)."""
        victim.dead = True
        client = victim.rt.redis
        if isinstance(client, PausingRedis):
            client.closed = True
        self.trace.append(f"{self.step_no}: {victim.name} killed")
        self.processes.append(self._process(f"{victim.name}+", victim.kind))

    def _after_write(self) -> None:
        """Right after an engine write applied: maybe other processes go first, or the write fails."""
        self._others_first("engine")
        if self._faults_on and self.rng.random() < self.applied_503s:
            self._count("write applied, answered 503")
            meta = ApiResponseMeta(503, "1.1", HttpHeaders(), 0.0, NodeConfig("http", "sim", 9200))
            raise elasticsearch.ApiError("applied, then 503", meta, {})

    _faults_on = True

    def _fault(self) -> None:
        kinds = ("kill", "freeze", "flush", "restart") + (("failover",) if self.redis_failovers else ())
        kind = self.rng.choice(kinds)
        self._count(kind)
        if kind == "kill":
            victims = [p for p in self.processes if not p.dead and p.kind != "retry"]
            if victims:
                victim = self.rng.choice(victims)
                if victim.kind == "dispatch" and self.jobs:  # a job it had received dies with it
                    lost = self.jobs.pop(self.rng.randrange(len(self.jobs)))
                    self.beats.hold(victim.worker_id, [lost], int(self.clock.now_ms) + KEEP_MS)
                self._kill(victim)
        elif kind == "freeze":
            proc = self.rng.choice([p for p in self.processes if not p.dead])
            frozen_ms = self.rng.choice((500, 3000, 10_000))
            proc.frozen_until_ms = self.clock.now_ms + frozen_ms
            self.trace.append(f"{self.step_no}: {proc.name} frozen for {frozen_ms} ms")
        elif kind in ("flush", "failover"):
            if kind == "flush":
                fakeredis.FakeRedis(server=self.server).flushall()
            else:  # the promoted replica has what it had at its last catch-up; the writes since are gone
                db = self.server.dbs[0]
                promoted = _copy_of(self.replica)
                promoted.time = db.time
                # The ledger's epoch names the server it was built on (INFO's run_id), which the promoted
                # one is not: elastask rebuilds. fakeredis has no INFO (every run_id reads "unknown"), so
                # here the promoted data lacks the epoch instead; the run_id check itself is proven on
                # real servers (tests/integration/test_redis_ha.py).
                promoted.pop(keys.LEDGER_EPOCH.encode(), None)
                db.swap(promoted)
            # Claims made before Redis lost its data lost their claim markers: a lease of theirs that runs
            # out counts its attempt even if never pushed (elastask cannot tell), so they are excused.
            self.forgotten |= {
                d for d, doc in self.engine.docs.items() if doc["_source"]["task"]["status"] == "running"
            }
        else:
            node = f"kibana:{self.rng.randrange(self.nodes)}"
            self.node_started_ms[node] = self.clock.now_ms
            self.trace.append(f"{self.step_no}: {node} restarted, its runs lost")
            for run in [r for r in self.runs.values() if r.node == node]:
                del self.runs[run.task_id]  # lost with the process: no outcome

    def _violate(self, what: str) -> None:
        if not self._over:  # a killed process unwinding after the run is not the world's
            self.violations.append(Violation(self.step_no, what))

    # ---- a run ---------------------------------------------------------------------------------

    def run(self, steps: int) -> list[Violation]:
        """``steps`` steps with faults, then a drain without faults until the work is done; the violations."""
        with redis_on(self.clock):
            self._beat()  # the first beats on the world's clock (those made before it ran expire on the real one)
            try:
                for _ in range(steps):
                    self.driver.run(self.step)
                self._faults_on = False
                for proc in self.processes:
                    proc.frozen_until_ms = 0.0
                for _ in range(20_000):
                    if self._drained():
                        break
                    self.driver.run(functools.partial(self.step, faults=False))
                self._check_end()
            finally:
                self._over = True
                self.driver.close()
        return self.violations

    def _drained(self) -> bool:
        once = [d for d in self.engine.docs if d.startswith("task:once")]
        return not self.runs and all(self.engine.docs[d]["_source"]["task"]["status"] == "failed" for d in once)

    def _check_end(self) -> None:
        for doc_id, doc in self.engine.docs.items():
            task = doc["_source"]["task"]
            if doc_id.startswith("task:once") and task["status"] != "failed":
                self._violate(f"{doc_id} lost: {task['status']} after the drain (attempts {task['attempts']})")
            unpushed_attempts = self.pushes.get(doc_id, 0) < task["attempts"]
            if task["status"] == "failed" and unpushed_attempts and doc_id not in self.forgotten:
                self._violate(
                    f"{doc_id} failed with {task['attempts']} attempts counted but {self.pushes.get(doc_id, 0)} pushes"
                )

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "steps": self.step_no,
            "virtual_s": round((self.clock.now_ms - EPOCH.timestamp() * 1000) / 1000, 1),
            "pushes": sum(self.pushes.values()),
            "one_shots_done": self.one_shots
            + self.limited
            - sum(1 for d in self.engine.docs if d.startswith("task:once")),
            "faults": dict(self.faults),
            "pauses": dict(self.pauses),
            "violations": [f"step {v.step}: {v.what}" for v in self.violations],
        }


def fakeredis_database(lock: threading.Lock | None) -> Any:
    from fakeredis._core._database import Database  # fakeredis's own store: swap() exchanges two

    return Database(lock)


def _copy_of(db: Any) -> Any:
    """A copy of one fakeredis database (its keys, values and expiries)."""
    replica = fakeredis_database(None)
    replica.time = db.time
    for key in list(db):
        item = copy.copy(db[key])  # its value and expiry; a container's contents are copied too
        if not isinstance(item.value, bytes | str | int | float):
            item.value = copy.deepcopy(item.value)
        replica[key] = item
    return replica


def new_seed() -> int:
    return uuid.uuid4().int % 1_000_000
