"""What a chaos run records and checks: planned faults, fault windows, runs, one-shot tasks, checks. Pure.

Times are wall-clock seconds since the epoch (``time.time()``): the simulator, the harness and the
engine run on one machine, so their records share one clock.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Fault kinds and what their ``detail`` holds.
KILL = "kill"  # SIGKILL a worker or beat, restart it when the window ends
PAUSE = "pause"  # SIGSTOP a worker or beat, SIGCONT when the window ends
REDIS = "redis"  # Redis killed, restarted empty (same port) when the window ends
ENGINE = "engine"  # the proxy: detail "latency:MS", "status:429", "status:503" or "down" (dropped connections)
NODE = "node"  # a Kibana node: detail "refuse", "5xx", "hang", "error" or "crash" (killed mid-run)
SKEW = "skew"  # an extra worker whose clock is off: detail "+3s" (libfaketime)
#: The operators' plan (operators.py), not drawn at random:
RESTART = "restart"  # a Kibana node restarted: detail "drained" (drain --wait, restart, undrain) or "plain"
ROLL = "roll"  # target "fleet": every worker, then every beat, SIGTERMed and started again, one after another

PROCESS_KINDS = (KILL, PAUSE)


@dataclass(frozen=True)
class Fault:
    """One planned fault: ``kind`` on ``target`` from ``start_s`` for ``duration_s`` (seconds into the run)."""

    kind: str
    target: str
    start_s: float
    duration_s: float
    detail: str = ""

    @property
    def end_s(self) -> float:
        """When the fault is healed (seconds into the run)."""
        return self.start_s + self.duration_s

    def describe(self) -> str:
        """``node2 hang``, ``worker1 pause``, ``engine status:429``."""
        return f"{self.target} {self.detail or self.kind}".strip()


@dataclass
class Window:
    """A fault as it happened: from ``start`` to ``end`` (epoch seconds; ``end`` None if never healed)."""

    kind: str
    target: str
    detail: str
    start: float
    end: float | None = None

    def covers(self, begin: float, finish: float, *, until: float) -> bool:
        """True when [begin, finish] meets this window (an open window lasts ``until``)."""
        end = self.end if self.end is not None else until
        return begin <= end and finish >= self.start

    def describe(self) -> str:
        return f"{self.target} {self.detail or self.kind}".strip()


@dataclass(frozen=True)
class Run:
    """One run a simulated Kibana node started (from its records at ``GET /_chaos/runs``)."""

    task: str
    node: int
    started: float  # the run began (the node's slot taken)
    received: float  # the push arrived (start drift = received - run_at)
    end: float | None  # the run ended (slot free); None: still running when read
    run_at: float | None  # the task's runAt as pushed
    ok: bool | None  # the run succeeded (None: still running, or cut off by a crash)
    outcome_ok: bool | None  # its outcome write was acknowledged (None: none, or unknown)
    recurring: bool
    crashed: bool = False  # cut off by a node crash
    task_type: str = ""
    attempts: int | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Run:
        """A run from one record of the recording simulator."""
        attempts = record.get("attempts")
        return cls(
            task=str(record["task"]),
            node=int(record["node"]),
            started=float(record["started"]),
            received=float(record["received"]),
            end=None if record.get("end") is None else float(record["end"]),
            run_at=None if record.get("run_at") is None else float(record["run_at"]),
            ok=record.get("ok"),
            outcome_ok=record.get("outcome_ok"),
            recurring=bool(record.get("recurring")),
            crashed=bool(record.get("crashed")),
            task_type=str(record.get("type", "")),
            attempts=int(attempts) if isinstance(attempts, int) else None,
        )

    @property
    def completed(self) -> bool:
        """The run succeeded (Kibana would write its outcome)."""
        return self.ok is True and not self.crashed


@dataclass(frozen=True)
class OneShot:
    """A one-shot task the harness created (``id`` as in the index, ``task:...``)."""

    id: str
    run_at: float
    created: float
    task_type: str = ""


@dataclass(frozen=True)
class ProcessExit:
    """A worker or beat that exited without the harness killing or stopping it."""

    role: str
    pid: int
    at: float
    status: int | None
    log_tail: str = ""


@dataclass
class Check:
    """One line of the report: an invariant (``safety``) or a liveness figure.

    ``ok`` None: reported, not checked (liveness without ``--check-liveness``).
    """

    name: str
    ok: bool | None
    summary: str
    safety: bool = True
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)
