"""The chaos run's tasks: recurring tasks at several intervals and a stream of one-shot tasks. Pure.

Three task types with run times from tens of ms to a few seconds (the simulator's ``--run-ms-by-type``),
each with a short timeout so a lease cut short by a fault runs out within the run, and a fourth with
Kibana's own default timeout (5 minutes: ``PATIENT_TYPE``), on which a claim that waits out its whole
lease shows as minutes (liveness: ``lease-waits``). Every task has its partition, as Kibana 8.16+
writes it, so claim lanes (``ELASTASK_CLAIM_LANES``) split the work.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from elastask.core.documents import TaskDocument, new_task
from elastask_bed.bench.scenarios import partition_of

#: Task type -> simulated run time (ms, uniform range) and share of the tasks.
TYPES: dict[str, tuple[str, float]] = {
    "chaos:fast": ("20-100", 0.45),
    "chaos:medium": ("200-800", 0.35),
    "chaos:slow": ("1000-3000", 0.15),
    "chaos:patient": ("200-800", 0.05),
}

#: Recurring intervals and the share of the recurring tasks at each.
INTERVALS: tuple[tuple[str, int, float], ...] = (("5s", 5, 0.35), ("10s", 10, 0.4), ("30s", 30, 0.25))

#: Every type's timeout (Kibana cancels a run at its timeout; a lost run's lease runs out after it)...
TASK_TIMEOUT_S = 10
#: ... but this one's, which keeps Kibana's default: a lost run of it holds its lease five minutes, and
#: so does a claim that is never pushed unless the dispatcher gives it back (a dead worker's: seconds).
PATIENT_TYPE = "chaos:patient"
PATIENT_TIMEOUT_S = 300


def run_time_args() -> list[str]:
    """The simulator's ``--run-ms-by-type`` arguments."""
    return [arg for name, (spec, _share) in TYPES.items() for arg in ("--run-ms-by-type", f"{name}={spec}")]


def dispatcher_config() -> dict[str, Any]:
    """The elastask.yaml of the run: shipped defaults but short task timeouts and retry delays, so a
    lost run comes back within the quiet phase (Kibana's 5m timeout and 30 s delay would take longer),
    except the patient type's: Kibana's 5m (the run waits its lost leases out at the end)."""
    timeouts = {name: PATIENT_TIMEOUT_S if name == PATIENT_TYPE else TASK_TIMEOUT_S for name in TYPES}
    return {
        "task_types": {name: {"timeout": f"{seconds}s"} for name, seconds in timeouts.items()},
        "retry_delay": "1s",
        "max_retry_delay": "10s",
    }


def draw_type(rng: random.Random, patient: bool = True) -> str:
    """A task type by its share (``patient`` False: never the patient type)."""
    names = [name for name in TYPES if patient or name != PATIENT_TYPE]
    return rng.choices(names, [TYPES[n][1] for n in names])[0]


def interval_of(n: int, count: int) -> tuple[str, int]:
    """The interval of the ``n``-th of ``count`` recurring tasks (the shares of INTERVALS, in order)."""
    total = 0.0
    for interval, seconds, share in INTERVALS:
        total += share
        if n < round(total * count):
            return interval, seconds
    return INTERVALS[-1][0], INTERVALS[-1][1]


def recurring_tasks(rng: random.Random, now: datetime, count: int, patient: bool = True) -> list[TaskDocument]:
    """``count`` recurring tasks, their first runAt spread over their interval (from 2 s after ``now``)."""
    docs = []
    for n in range(count):
        interval, seconds = interval_of(n, count)
        run_at = now + timedelta(seconds=2 + rng.uniform(0, seconds))
        docs.append(
            new_task(
                f"chaos-recurring-{n}",
                draw_type(rng, patient),
                now=now,
                run_at=run_at,
                interval=interval,
                params={"n": n},
                partition=partition_of(f"task:chaos-recurring-{n}"),
            )
        )
    return docs


def one_shot_tasks(
    rng: random.Random, now: datetime, first: int, count: int, patient: bool = True
) -> list[TaskDocument]:
    """``count`` one-shot tasks numbered from ``first``, due from now to 3 s ahead."""
    return [
        new_task(
            f"chaos-once-{first + n}",
            draw_type(rng, patient),
            now=now,
            run_at=now + timedelta(seconds=rng.uniform(0, 3)),
            params={"n": first + n},
            partition=partition_of(f"task:chaos-once-{first + n}"),
        )
        for n in range(count)
    ]
