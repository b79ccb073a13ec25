"""The liveness figures of a chaos run: longest stall, heal-to-push, start drift outside faults. Pure.

Reported on every run; checked against thresholds only with ``--check-liveness``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from elastask.core.percentiles import percentile
from elastask_bed.chaos.invariants import by_task
from elastask_bed.chaos.model import ENGINE, NODE, REDIS, SKEW, Check, OneShot, Run, Window

Interval = tuple[float, float]

#: Node faults that take a node out of rotation: heal-to-push is checked for these (probe interval + 1 s).
#: A hung node or one failing its runs is not: it stays in rotation, and its slots stay leased until the
#: leases of the runs it swallowed run out (the task timeout), which bounds its heal-to-push instead.
HEAL_CHECKED = ("refuse", "5xx", "crash")


@dataclass(frozen=True)
class Thresholds:
    """The liveness bounds (defaults: a few claim intervals; node_probe_interval 5 s + 1 s)."""

    max_stall_s: float = 5.0
    max_drift_p99_s: float = 2.0
    max_heal_s: float = 6.0


@dataclass(frozen=True)
class Stall:
    """The longest time no run started anywhere while a task was due (outside excluded windows)."""

    seconds: float
    start: float
    end: float


@dataclass(frozen=True)
class Heal:
    """A node's fault healed at ``healed``; its next run started ``seconds`` later (None: none before
    its next fault, or before the end)."""

    node: int
    detail: str
    healed: float
    seconds: float | None
    refaulted: bool  # the node's next fault began before it got a run
    blocked: bool = False  # the engine or Redis was faulted between the heal and the next run: not checked


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, overlapping intervals joined."""
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def subtract(start: float, end: float, excluded: Sequence[Interval]) -> list[Interval]:
    """[start, end] without the (merged) excluded intervals."""
    pieces, at = [], start
    for a, b in excluded:
        if b <= at or a >= end:
            continue
        if a > at:
            pieces.append((at, a))
        at = max(at, b)
    if at < end:
        pieces.append((at, end))
    return pieces


def _span(window: Window, until: float) -> Interval:
    return window.start, window.end if window.end is not None else until


def all_nodes_out(windows: Sequence[Window], nodes: int, until: float) -> list[Interval]:
    """When every Kibana node had a fault at once."""
    events = sorted(e for w in windows if w.kind == NODE for e in ((_span(w, until)[0], 1), (_span(w, until)[1], -1)))
    out, current, since = [], 0, 0.0
    for moment, step in events:
        current += step
        if step == 1 and current == nodes:
            since = moment
        elif step == -1 and current == nodes - 1:
            out.append((since, moment))
    return out


def stall_exclusions(windows: Sequence[Window], nodes: int, until: float) -> list[Interval]:
    """What a stall is not blamed on: the engine or Redis faulted, or no Kibana node up."""
    own = [_span(w, until) for w in windows if w.kind in (ENGINE, REDIS)]
    return merge([*own, *all_nodes_out(windows, nodes, until)])


def longest_stall(
    runs: Sequence[Run], never_started: Sequence[float], begin: float, end: float, excluded: Sequence[Interval]
) -> Stall:
    """The longest span in [begin, end] outside ``excluded`` with a task due and no run starting.

    A task is due from its runAt until its run starts; ``never_started``: the runAt of tasks that
    never started (due until ``end``).
    """
    starts = sorted((r.started, r.run_at if r.run_at is not None else r.started) for r in runs if begin <= r.started)
    starts = [s for s in starts if s[0] <= end] + [(end, at) for at in never_started]
    starts.sort()
    earliest_due = [0.0] * len(starts)  # earliest runAt among the runs from i on: due, not started before
    lowest = float("inf")
    for i in range(len(starts) - 1, -1, -1):
        lowest = min(lowest, starts[i][1])
        earliest_due[i] = lowest
    best, previous = Stall(0.0, begin, begin), begin
    for (started, _), due in zip(starts, earliest_due, strict=True):
        for a, b in subtract(max(previous, due), started, excluded):
            if b - a > best.seconds:
                best = Stall(b - a, a, b)
        previous = max(previous, started)
    return best


def heal_to_push(windows: Sequence[Window], runs: Sequence[Run], until: float) -> list[Heal]:
    """For every healed node fault: the time to the node's next run start."""
    own = merge(_span(w, until) for w in windows if w.kind in (ENGINE, REDIS))
    heals = []
    for window in windows:
        if window.kind != NODE or window.end is None:
            continue
        node = int(window.target.removeprefix("node"))
        healed = window.end
        later = [w.start for w in windows if w.kind == NODE and w.target == window.target and w.start >= healed]
        refault = min(later, default=float("inf"))
        first = min((r.started for r in runs if r.node == node and r.started >= healed), default=None)
        pushed = first is not None and first <= refault
        finish = first if pushed and first is not None else min(refault, until)
        blocked = any(a < finish and b > healed for a, b in own)
        seconds = first - healed if pushed and first is not None else None
        heals.append(Heal(node, window.detail, healed, seconds, not pushed and refault != float("inf"), blocked))
    return heals


def drifts_outside(runs: Sequence[Run], windows: Sequence[Window], until: float, margin_s: float = 1.0) -> list[float]:
    """Start drift (s) of recurring runs whose [runAt - margin, received] meets no fault window."""
    spans = merge(_span(w, until) for w in windows)
    drifts = []
    for run in runs:
        if not run.recurring or run.run_at is None:
            continue
        begin, finish = run.run_at - margin_s, run.received
        if not any(a <= finish and b >= begin for a, b in spans):
            drifts.append(run.received - run.run_at)
    return drifts


def check_stall(stall: Stall, limits: Thresholds, enabled: bool, t0: float = 0.0) -> Check:
    ok = stall.seconds <= limits.max_stall_s if enabled else None
    return Check(
        "stall",
        ok,
        f"longest stall {stall.seconds:.1f} s (+{stall.start - t0:.1f}s..+{stall.end - t0:.1f}s) while tasks were due "
        f"and the engine, Redis and a node were up [bound {limits.max_stall_s:g} s]",
        safety=False,
        data={
            "seconds": round(stall.seconds, 3),
            "from_s": round(stall.start - t0, 1),
            "to_s": round(stall.end - t0, 1),
        },
    )


def check_heal(heals: Sequence[Heal], limits: Thresholds, enabled: bool, t0: float = 0.0) -> Check:
    """Checked: refuse/5xx/crash heals while the engine and Redis answered (the others are listed)."""
    checked = [h for h in heals if h.detail in HEAL_CHECKED and not h.blocked]
    never = [h for h in checked if h.seconds is None and not h.refaulted]
    worst = max((h.seconds for h in checked if h.seconds is not None), default=None)
    ok = None if not enabled else not never and (worst is None or worst <= limits.max_heal_s)

    def label(h: Heal) -> str:
        return f"node{h.node} {h.detail} {'-' if h.seconds is None else f'{h.seconds:.1f}s'}{'*' if h.blocked else ''}"

    worst_text = "-" if worst is None else f"{worst:.1f} s"
    return Check(
        "heal-to-push",
        ok,
        f"max {worst_text} over {len(checked)} healed refuse/5xx/crash faults with the engine and Redis up, "
        f"{len(never)} never pushed again [bound {limits.max_heal_s:g} s]; all (*: engine or Redis faulted "
        f"meanwhile): {', '.join(label(h) for h in heals[:16]) or 'none'}",
        safety=False,
        data={
            "max_s": worst,
            "heals": [
                {
                    "node": h.node,
                    "detail": h.detail,
                    "healed_s": round(h.healed - t0, 1),
                    "seconds": h.seconds,
                    "engine_or_redis_faulted": h.blocked,
                }
                for h in heals
            ],
        },
    )


def check_drift(drifts: Sequence[float], limits: Thresholds, enabled: bool) -> Check:
    values = list(drifts)
    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
    ok = None if not enabled else p99 is None or p99 < limits.max_drift_p99_s
    shown = ", ".join(
        f"{name} {'-' if v is None else f'{v * 1000:.0f} ms'}" for name, v in (("p50", p50), ("p99", p99))
    )
    top = f"{max(values) * 1000:.0f} ms" if values else "-"
    return Check(
        "drift",
        ok,
        f"recurring start drift outside fault windows {shown}, max {top} over {len(values)} runs "
        f"[bound p99 < {limits.max_drift_p99_s:g} s]",
        safety=False,
        data={"count": len(values), "p50_s": p50, "p99_s": p99, "max_s": max(values) if values else None},
    )


def check_early_starts(runs: Sequence[Run], windows: Sequence[Window], until: float, t0: float = 0.0) -> Check:
    """Runs pushed before their runAt (reported, not checked): during a clock-skew window or not."""
    skews = [_span(w, until) for w in windows if w.kind == SKEW]
    early = [r for r in runs if r.run_at is not None and r.received < r.run_at]
    outside = [r for r in early if not any(a <= r.received <= b for a, b in skews)]
    worst = max((r.run_at - r.received for r in early if r.run_at is not None), default=0.0)
    return Check(
        "early-starts",
        None,
        f"{len(early)} runs started before their runAt ({len(outside)} outside clock-skew windows), "
        f"earliest {worst * 1000:.0f} ms ahead",
        safety=False,
        data={
            "early": len(early),
            "outside_skew": [f"{r.task} on node{r.node} at +{r.received - t0:.1f}s" for r in outside[:20]],
            "max_ahead_s": worst,
        },
    )


#: A task that starts more than this long after it fell due has waited out a lease: every other wait a
#: fault causes is seconds (a refused push is given back, a dead worker's unpushed claims go back once it
#: stops beating), and the patient type's leases are minutes (workload.PATIENT_TIMEOUT_S).
LEASE_WAIT_S = 60.0
#: Node faults after which a push may have reached Kibana unanswered (a hung node, one killed mid-request):
#: its lease must stand, as it must for a run Kibana lost.
UNANSWERED_PUSH_FAULTS = ("hang", "crash")


@dataclass(frozen=True)
class LeaseWait:
    """A task that fell due at ``due`` and started only at ``started``; ``why`` the lease had to stand
    ("" when nothing explains it: a claim never pushed that waited out its lease)."""

    task: str
    due: float
    started: float
    why: str
    #: Not started by the end (``started`` is then the end).
    waiting: bool = False

    @property
    def seconds(self) -> float:
        return self.started - self.due


def _explain(
    task: str, previous: Run | None, due: float, windows: Sequence[Window], in_flight: Collection[str], until: float
) -> str:
    """Why a lease had to run out before ``task`` started again, or "" when nothing does."""
    if previous is not None and previous.outcome_ok is not True:
        return f"its run on node{previous.node} ended without an outcome written (Kibana's own lease)"
    if task in in_flight:
        return "pushed, unanswered, by a process that died (named in the workers' logs)"
    begin, finish = due - 5.0, due + LEASE_WAIT_S
    for window in windows:
        a, b = _span(window, until)
        if a > finish or b < begin:
            continue
        if window.kind == REDIS:
            return f"Redis lost its data ({window.describe()}): claims made before wait for their leases"
        if window.kind == ENGINE:
            return f"the engine faulted ({window.describe()})"
        if window.kind == NODE and window.detail in UNANSWERED_PUSH_FAULTS:
            return f"a push to a node that may have received it ({window.describe()})"
    return ""


def lease_waits(
    runs: Sequence[Run],
    one_shots: Sequence[OneShot],
    intervals: Mapping[str, float],
    task_type: str,
    windows: Sequence[Window],
    in_flight: Collection[str],
    until: float,
) -> list[LeaseWait]:
    """Every start of a ``task_type`` task more than LEASE_WAIT_S after it fell due, with its explanation,
    and every such task still waiting at ``until`` (``waiting``).

    A one-shot task falls due at its runAt, and again when a run of it ends without its outcome; a
    recurring one (``intervals``: task id -> seconds) an interval after its last run was received (Kibana
    schedules the next runAt from when the request arrived), its first run left out (the warm-up).
    """
    one_shot_due = {t.id: t.run_at for t in one_shots if t.task_type == task_type}
    by_id = by_task(r for r in runs if r.task_type == task_type)
    waits = []
    for task in set(by_id) | set(one_shot_due):
        previous: Run | None = None
        for run in [*sorted(by_id.get(task, []), key=lambda r: r.received), None]:
            if previous is None:
                due = one_shot_due.get(task)
            elif task in intervals:
                due = previous.received + intervals[task]
            elif previous.outcome_ok is not True:
                due = previous.received
            else:
                due = None  # a one-shot run that wrote its outcome: done
            started = until if run is None else run.received
            if due is not None and started - due > LEASE_WAIT_S:
                why = _explain(task, previous, due, windows, in_flight, until)
                waits.append(LeaseWait(task, due, started, why, waiting=run is None))
            if run is None:
                break
            previous = run
    return sorted(waits, key=lambda w: w.due)


def check_lease_waits(waits: Sequence[LeaseWait], task_type: str, enabled: bool, t0: float = 0.0) -> Check:
    """Checked: no claim waited out a lease without a cause that makes its lease stand (the rest are listed)."""
    unexplained = [w for w in waits if not w.why]
    ok = None if not enabled else not unexplained

    def label(w: LeaseWait) -> str:
        late = f"still waiting after {w.seconds:.0f} s" if w.waiting else f"started after {w.seconds:.0f} s"
        return f"{w.task} due +{w.due - t0:.1f}s {late}: {w.why or 'UNEXPLAINED'}"

    return Check(
        "lease-waits",
        ok,
        f"{len(waits)} starts of {task_type} (Kibana's 5m timeout) came over {LEASE_WAIT_S:g} s late, "
        f"{len(unexplained)} with no fault that makes a lease stand (a claim never pushed that waited its lease)",
        safety=False,
        data={"waits": [label(w) for w in (unexplained + [w for w in waits if w.why])[:40]]},
    )
