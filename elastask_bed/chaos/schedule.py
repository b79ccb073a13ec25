"""The faults of a chaos run, drawn from one seed: when, what, on which target, for how long. Pure.

Faults arrive at random (exponential gaps) and overlap one another, with three limits that keep
the run meaningful: one fault at a time per target; at most one of the workers and one of the beats
out at once (the other keeps the dispatcher alive); at most ``max_node_faults`` Kibana nodes out at once.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from elastask_bed.chaos.model import ENGINE, KILL, NODE, PAUSE, PROCESS_KINDS, REDIS, SKEW, Fault

#: How often each kind is drawn (relative weights).
WEIGHTS: dict[str, float] = {KILL: 2, PAUSE: 2, REDIS: 1, ENGINE: 2, NODE: 4, SKEW: 1}

ENGINE_FAULTS = ("latency", "status:429", "status:503", "down")
NODE_FAULTS = ("refuse", "5xx", "hang", "error", "crash")
SKEWS_S = (-5, -4, -3, -2, 2, 3, 4, 5)

#: A target's next fault starts at least this long after its previous one healed.
GAP_S = 2.0


@dataclass(frozen=True)
class Plan:
    """What a schedule may use: the run's fault phase and the fleet's parts."""

    fault_phase_s: float  # faults start and heal within [warm_up_s, fault_phase_s]
    warm_up_s: float = 10.0  # no fault before this (the workers learn the nodes)
    mean_gap_s: float = 6.0  # mean time between two fault starts
    nodes: int = 4
    workers: Sequence[str] = ("worker1", "worker2")
    beats: Sequence[str] = ("beat1", "beat2")
    max_node_faults: int = 2
    lock_ttl_s: float = 10.0  # a pause lasts longer than the claim lock's TTL
    hang_s: float = 10.0  # a hung run ends (without outcome) after this long, as Kibana cancels at its timeout
    skew: bool = True  # draw clock-skewed workers (needs libfaketime)
    kinds: Sequence[str] = (KILL, PAUSE, REDIS, ENGINE, NODE, SKEW)


def duration_s(kind: str, detail: str, plan: Plan, rng: random.Random) -> float:
    """How long a fault of that kind lasts."""
    if kind == KILL:
        return rng.uniform(2, 8)  # down before the restart
    if kind == PAUSE:
        return rng.uniform(plan.lock_ttl_s + 1, plan.lock_ttl_s + 6)
    if kind == REDIS:
        return rng.uniform(1, 5)
    if kind == SKEW:
        return rng.uniform(20, 40)
    if detail == "crash":
        return rng.uniform(3, 10)
    return rng.uniform(4, 15)


def draw_detail(kind: str, rng: random.Random) -> str:
    """The variant of a fault: the engine's answer, the node's mode, the clock's offset."""
    if kind == ENGINE:
        choice = rng.choice(ENGINE_FAULTS)
        return f"latency:{rng.randrange(1000, 3001, 250)}" if choice == "latency" else choice
    if kind == NODE:
        return rng.choice(NODE_FAULTS)
    if kind == SKEW:
        return f"{rng.choice(SKEWS_S):+d}s"
    return ""


def targets(kind: str, plan: Plan) -> list[str]:
    """Where a fault of that kind can land."""
    if kind in PROCESS_KINDS:
        return [*plan.workers, *plan.beats]
    if kind == NODE:
        return [f"node{i}" for i in range(plan.nodes)]
    return [kind]  # redis, engine, skew: one target each


def _overlaps(fault: Fault, start: float, end: float, gap_s: float = 0.0) -> bool:
    return start < fault.end_s + gap_s and end + gap_s > fault.start_s


def _free(target: str, kind: str, start: float, end: float, planned: list[Fault], plan: Plan) -> bool:
    """No fault on the target then, and the role limits hold."""
    during = [f for f in planned if _overlaps(f, start, end, GAP_S)]
    if any(f.target == target for f in during):
        return False
    if kind in PROCESS_KINDS:
        role = plan.workers if target in plan.workers else plan.beats
        return not any(f.target in role for f in during if f.kind in PROCESS_KINDS)
    if kind == NODE:
        return sum(1 for f in during if f.kind == NODE) < plan.max_node_faults
    return True


def make_schedule(seed: int, plan: Plan) -> list[Fault]:
    """The faults of a run, in start order; the same seed and plan give the same faults."""
    rng = random.Random(seed)
    kinds = [k for k in plan.kinds if k != SKEW or plan.skew]
    weights = [WEIGHTS[k] for k in kinds]
    planned: list[Fault] = []
    at = plan.warm_up_s
    while kinds:
        at += rng.expovariate(1 / plan.mean_gap_s)
        if at >= plan.fault_phase_s - 2:
            break
        kind = rng.choices(kinds, weights)[0]
        detail = draw_detail(kind, rng)
        length = min(duration_s(kind, detail, plan, rng), plan.fault_phase_s - at)
        if kind == PAUSE and length <= plan.lock_ttl_s:
            continue  # too close to the end for a pause longer than the lock's TTL
        free = [t for t in targets(kind, plan) if _free(t, kind, at, at + length, planned, plan)]
        if not free:
            continue
        planned.append(Fault(kind, rng.choice(free), round(at, 3), round(length, 3), detail))
    return planned
