"""The safety invariants of a chaos run, checked over the recorded runs and the engine's final state. Pure.

Each check returns one ``Check``: ok or not, a one-line summary and the evidence (task ids, nodes, times).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from elastask_bed.chaos.model import Check, OneShot, ProcessExit, Run

#: Evidence listed per check (the summary has the counts).
EVIDENCE = 20


@dataclass(frozen=True)
class Overlap:
    """Two runs of one task at once."""

    task: str
    first: Run
    second: Run

    def describe(self, t0: float = 0.0) -> str:
        return (
            f"{self.task}: node{self.first.node} +{self.first.started - t0:.1f}s..+{_end(self.first, t0)} "
            f"and node{self.second.node} from +{self.second.started - t0:.1f}s"
        )


def _end(run: Run, t0: float) -> str:
    return "?" if run.end is None else f"{run.end - t0:.1f}s"


def _finish(run: Run, until: float) -> float:
    return run.end if run.end is not None else until


def by_task(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Runs per task id, each list in start order."""
    grouped: dict[str, list[Run]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: r.started):
        grouped[run.task].append(run)
    return grouped


def max_concurrency(runs: Iterable[Run], until: float) -> dict[int, tuple[int, float]]:
    """Per node: the most runs at once and when (a run still going counts until ``until``)."""
    events: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for run in runs:
        events[run.node] += [(run.started, 1), (_finish(run, until), -1)]
    result = {}
    for node, node_events in events.items():
        current, best, at = 0, 0, 0.0
        for moment, step in sorted(node_events):  # at one instant an end (-1) sorts before a start
            current += step
            if current > best:
                best, at = current, moment
        result[node] = (best, at)
    return result


def overlapping_runs(runs: Iterable[Run], until: float) -> list[Overlap]:
    """Every run that started while another run of the same task was still going (on any node)."""
    found = []
    for task, task_runs in by_task(runs).items():
        longest: Run | None = None  # of the runs so far, the one that ends last
        for run in task_runs:
            if longest is not None and run.started < _finish(longest, until):
                found.append(Overlap(task, longest, run))
            if longest is None or _finish(run, until) > _finish(longest, until):
                longest = run
    return found


def check_cap(
    runs: Sequence[Run], capacity: int, simulator_nodes: Mapping[int, Mapping[str, int]], until: float
) -> Check:
    """No node ran more than its capacity at once: from the records and from the simulator's own counters."""
    recorded = max_concurrency(runs, until)
    nodes = sorted({*recorded, *simulator_nodes})
    peak = {
        n: max(recorded.get(n, (0, 0.0))[0], int(simulator_nodes.get(n, {}).get("max_concurrency", 0))) for n in nodes
    }
    rejected = sum(int(s.get("rejected_over_capacity", 0)) for s in simulator_nodes.values())
    over = {n: p for n, p in peak.items() if p > capacity}
    per_node = ", ".join(f"node{n} {p}" for n, p in sorted(peak.items()))
    return Check(
        "cap",
        not over and rejected == 0,
        f"max concurrent runs per node {max(peak.values(), default=0)}/{capacity} ({per_node}); "
        f"pushes rejected over capacity {rejected}",
        data={
            "capacity": capacity,
            "max_concurrency": {f"node{n}": p for n, p in peak.items()},
            "over_capacity_at": {f"node{n}": recorded[n][1] for n in over if n in recorded},
            "rejected_over_capacity": rejected,
        },
    )


def check_overlaps(runs: Sequence[Run], simulator_overlapping: int, until: float, t0: float = 0.0) -> Check:
    """No task ran twice at once."""
    found = overlapping_runs(runs, until)
    return Check(
        "no-overlap",
        not found and simulator_overlapping == 0,
        f"{len(found)} overlapping runs in the records, {simulator_overlapping} counted by the simulator",
        data={"overlaps": [o.describe(t0) for o in found[:EVIDENCE]], "simulator_overlapping": simulator_overlapping},
    )


def check_one_shots(one_shots: Sequence[OneShot], runs: Sequence[Run], states: Mapping[str, str | None]) -> Check:
    """Every one-shot task created either ran (a completed run, or its document is gone) or is ``failed``.

    ``states``: the document's ``task.status`` at the end, None when the document is gone.
    """
    completed = {r.task for r in runs if r.completed and not r.recurring}
    ran = gone = failed = 0
    lost: list[str] = []
    for task in one_shots:
        state = states.get(task.id, "unknown")
        if task.id in completed:
            ran += 1
        elif state is None:
            gone += 1
        elif state == "failed":
            failed += 1
        else:
            lost.append(f"{task.id} ({state})")
    return Check(
        "one-shots-accounted",
        not lost,
        f"{len(one_shots)} created: {ran} ran, {gone} gone without a recorded run, {failed} failed, "
        f"{len(lost)} neither ran nor failed",
        data={"created": len(one_shots), "ran": ran, "gone": gone, "failed": failed, "lost": lost[:EVIDENCE]},
    )


def check_double_completion(one_shot_ids: Collection[str], runs: Sequence[Run], t0: float = 0.0) -> Check:
    """No one-shot task completed twice, unless the earlier run's outcome was lost (not acknowledged)."""
    twice: list[str] = []
    excused = 0
    for task, task_runs in by_task(r for r in runs if r.task in one_shot_ids).items():
        done = [r for r in task_runs if r.completed]
        for earlier, later in pairwise(done):
            if earlier.outcome_ok is True:
                twice.append(
                    f"{task}: completed on node{earlier.node} at +{earlier.started - t0:.1f}s (outcome written), "
                    f"again on node{later.node} at +{later.started - t0:.1f}s"
                )
            else:
                excused += 1
    return Check(
        "no-double-completion",
        not twice,
        f"{len(twice)} one-shot tasks completed twice; {excused} ran again after a run whose outcome was lost",
        data={"twice": twice[:EVIDENCE], "after_lost_outcome": excused},
    )


def check_recurring_ran(recurring_ids: Collection[str], runs: Sequence[Run], since: float) -> Check:
    """Every recurring task started a run after ``since`` (the quiet phase's start)."""
    ran = {r.task for r in runs if r.recurring and r.started >= since}
    missing = sorted(set(recurring_ids) - ran)
    return Check(
        "recurring-ran-after-quiet",
        not missing,
        f"{len(recurring_ids) - len(missing)}/{len(recurring_ids)} recurring tasks ran after the quiet phase began",
        data={"missing": missing[:EVIDENCE]},
    )


def check_stuck(stuck: Sequence[str]) -> Check:
    """No task still ``running``/``claiming`` long after its lease (retryAt) ran out, at the end."""
    return Check(
        "no-stuck-lease",
        not stuck,
        f"{len(stuck)} tasks still claimed past retryAt + a retry cycle at the end",
        data={"stuck": list(stuck[:EVIDENCE])},
    )


def check_exits(exits: Sequence[ProcessExit], started: int, t0: float = 0.0) -> Check:
    """No worker or beat exited unless the harness killed or stopped it."""
    return Check(
        "no-unexpected-exit",
        not exits,
        f"{len(exits)} of {started} worker/beat processes exited by themselves",
        data={
            "exits": [
                {"role": e.role, "pid": e.pid, "at_s": round(e.at - t0, 1), "status": e.status, "log": e.log_tail}
                for e in exits
            ]
        },
    )
