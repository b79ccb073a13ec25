"""The claim loop: beat's ``elastask.claim`` job, one claim cycle under the claim lock, then a refill
session while a backlog waits.

The lock (a Redis lock renewed while the job runs) keeps cycles from overlapping. The first look of
a job searches what is due; when more waits than the nodes can take, the job keeps the lock and
refills each slot the moment it frees (loops/claim/refill.py) for up to ``SESSION_MAX_MS``, then hands
over to the next claim job. Every look is one claim cycle (loops/claim/cycle.py), logged on one line.
A quiet cycle (nothing due, nothing in flight) lets the loop rest (parts/cadence.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, cast

import redis

from elastask import keys, tracing
from elastask.config import Settings
from elastask.core.lanes import Lane
from elastask.core.messages import DispatchJob
from elastask.loops.claim.cycle import run_claim_cycle
from elastask.loops.claim.lease_reads import MIN_RECHECK_MS
from elastask.loops.claim.refill import RefillSession
from elastask.loops.claim.search import lookahead_ms
from elastask.loops.claim.summary import ClaimSummary
from elastask.loops.claim.timing import claim_lock_ttl_ms
from elastask.parts.cadence import Cadence, rest_until
from elastask.parts.locks import exclusive
from elastask.runtime import Runtime

log = logging.getLogger(__name__)


#: A refill session ends after this long (with tasks still waiting, the claim job sends the next
#: one at once: the lock changes hands and a worker process is not held for ever).
SESSION_MAX_MS = 10_000
#: In a session, record "a claim cycle finished" (health's freshness) at most this often.
SESSION_MARK_MS = 1_000


def claim_available_tasks(
    rt: Runtime,
    now: datetime,
    enqueue: Callable[[DispatchJob], None],
    on_cycle: Callable[[ClaimSummary], None] = lambda _s: None,
    *,
    sessions: bool = True,
    sending: Callable[[], bool] = lambda: True,
    stopping: Callable[[], bool] = lambda: False,
    session_max_ms: int = SESSION_MAX_MS,
    lane: Lane | None = None,
) -> ClaimSummary:
    """One claim cycle (see the module docstring), and a refill session while a backlog waits.

    A cycle already running elsewhere makes this a no-op. ``on_cycle`` is called with every cycle
    that searched (and with the session's looks at most once a second, for health). ``sessions``:
    False where the session would hold the only worker process the dispatch jobs have. ``sending``:
    False once dispatch jobs can no longer be sent; checked with the lock before every claim write.
    ``stopping``: True once the worker is shutting down: a session ends at its next look and frees the
    claim lock at once (another worker's claim job takes over), instead of holding it up to 10 s.
    ``session_max_ms``: how long a refill session may hold the lock. ``lane``: the claim lane whose lock,
    rest and share of the tasks this is (core/lanes.py). Returns the last cycle's summary.
    """
    lane = lane or Lane()
    cadence = Cadence(rt.redis, lane.index)
    if cadence.resting():
        return ClaimSummary(ran=False, resting=True)
    with exclusive(rt.redis, keys.claim_lock(lane.index), claim_lock_ttl_ms(rt.settings)) as lock:
        if not lock.taken:
            return ClaimSummary(ran=False)
        session = RefillSession(rt.monotonic_ms(), max_wait_ms=rt.settings.busy_polling_interval_ms, lane=lane)

        def fence() -> bool:
            return lock.held() and sending()

        summary = _timed(rt, lambda: run_claim_cycle(rt, now, enqueue, fence, session), lane)
        on_cycle(summary)
        if _quiet(summary):
            cadence.rest(now, _rest_until(rt.settings, summary, now))
        elif summary.backlog and sessions and _sessions_on(rt.settings):
            summary = _refill(rt, enqueue, fence, session, summary, on_cycle, stopping, session_max_ms)
    return summary


def claim_every_lane(
    rt: Runtime,
    now: datetime,
    enqueue: Callable[[DispatchJob], None],
    lanes: Sequence[Lane],
    on_cycle: Callable[[ClaimSummary], None] = lambda _s: None,
    **options: Any,
) -> list[tuple[Lane, ClaimSummary]]:
    """One claim job: a cycle on every lane whose lock is free (core/lanes.py), in order, until one keeps
    this process for a refill session (the lanes after it are the next claim job's). Without a backlog
    no lane holds a session, so every job serves every lane: taking only the first free lane left the
    others unclaimed for as long as the first was free at each tick (found by the chaos run).
    ``options``: those of ``claim_available_tasks``. Returns each lane tried with its summary.
    """
    done: list[tuple[Lane, ClaimSummary]] = []
    for lane in lanes:
        summary = claim_available_tasks(rt, now if not done else rt.now(), enqueue, on_cycle, lane=lane, **options)
        done.append((lane, summary))
        if summary.ran and summary.backlog:
            break
    return done


def _sessions_on(settings: Settings) -> bool:
    """A busy_polling_interval at or above polling_interval turns busy refills (and sessions) off."""
    return settings.busy_polling_interval_ms < settings.polling_interval_ms


def _refill(
    rt: Runtime,
    enqueue: Callable[[DispatchJob], None],
    fence: Callable[[], bool],
    session: RefillSession,
    last: ClaimSummary,
    on_cycle: Callable[[ClaimSummary], None],
    stopping: Callable[[], bool] = lambda: False,
    session_max_ms: int = SESSION_MAX_MS,
) -> ClaimSummary:
    """Keep the lock and refill freed slots until the backlog is gone (or ``session_max_ms`` passed)."""
    session.active = True
    session.searcher = searcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="elastask-refill-search")
    marked = rt.monotonic_ms()
    # The first look comes soon: the leases claimed before this session (by the one it took over
    # from) are in no read schedule until read once, and a session that waited for its own first
    # read left every slot they freed meanwhile empty (a backlog's hand-over every 10 s).
    first_look = True
    with _runs_carried_over(rt, session), _shut_down_after(searcher):
        while fence() and rt.monotonic_ms() - session.started_ms < session_max_ms:
            wait_ms = MIN_RECHECK_MS if first_look else session.reads.wait_ms(rt.monotonic_ms())
            first_look = False
            rt.sleep(wait_ms / 1000)
            if stopping():
                log.info("worker shutting down: refill session ended, claim lock freed for another worker")
                last.session_expired = last.backlog  # the follow-up claim job goes out at once
                break
            summary = _timed(rt, lambda: run_claim_cycle(rt, rt.now(), enqueue, fence, session), session.lane)
            if not summary.ran:
                break
            if summary.searched or rt.monotonic_ms() - marked >= SESSION_MARK_MS:
                on_cycle(summary)
                marked = rt.monotonic_ms()
            if summary.searched:
                last = summary
                if not summary.backlog:
                    break  # every due task found a slot: back to the beat's cadence
        else:
            # Out of time with tasks still waiting: hand over at once (claim task's follow-up) -- a
            # busy interval without any session would leave every slot that frees meanwhile empty.
            last.session_expired = fence() and last.backlog
    return last


@contextlib.contextmanager
def _shut_down_after(searcher: ThreadPoolExecutor) -> Iterator[None]:
    try:
        yield
    finally:
        searcher.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def _runs_carried_over(rt: Runtime, session: RefillSession) -> Iterator[None]:
    """The shortest runs seen per task type carry over from one session to the next (in Redis, for
    an hour): each backlog would otherwise start with a blind first read."""
    session.reads.learn(_remembered_runs(rt))
    try:
        yield
    finally:
        _remember_runs(rt, session.reads.shortest_run_ms)


#: How long the shortest runs are remembered between sessions (a task type's runs may change).
SHORTEST_RUNS_TTL_S = 3600


def _remembered_runs(rt: Runtime) -> dict[str, float]:
    try:
        raw = cast(dict[bytes, bytes], rt.redis.hgetall(keys.REFILL_SHORTEST_RUNS))
    except redis.RedisError:
        return {}  # a hint only: a session without it reads sooner, nothing else changes
    return {k.decode(): float(v) for k, v in raw.items()}


def _remember_runs(rt: Runtime, runs: dict[str, float]) -> None:
    if not runs:
        return
    with contextlib.suppress(redis.RedisError):
        pipe = rt.redis.pipeline(transaction=False)
        pipe.hset(keys.REFILL_SHORTEST_RUNS, mapping={k: round(v, 1) for k, v in runs.items()})
        pipe.expire(keys.REFILL_SHORTEST_RUNS, SHORTEST_RUNS_TTL_S)
        pipe.execute()


def _timed(rt: Runtime, cycle: Callable[[], ClaimSummary], lane: Lane | None = None) -> ClaimSummary:
    """Run one cycle, time it, and log its line (a session's look that did not search logs at debug)."""
    lane = lane or Lane()
    started = time.monotonic()
    with tracing.span(rt.tracer, "elastask.claim_cycle") as traced:
        summary = cycle()
        if traced is not None:
            traced.set_attributes(
                {"elastask.found": summary.found, "elastask.claimed": summary.claimed, "elastask.nodes": summary.nodes}
            )
    summary.duration_ms = (time.monotonic() - started) * 1000
    per_node = " ".join(f"{owner}={left}" for owner, left in summary.capacity_left.items())
    steps = ",".join(f"{name}:{ms:.0f}" for name, ms in summary.steps_ms.items() if ms >= 1)
    log.log(
        logging.INFO if summary.searched or not summary.ran or summary.ledger_rebuilt is not None else logging.DEBUG,
        "claim cycle%s: found=%d claimed=%d conflicts=%d stale=%d missing=%d skipped(malformed)=%d released=%d "
        "nodes=%d duration=%.0fms (%s) capacity_left(units) %s",
        "" if lane.count == 1 else f" ({lane})",
        summary.found,
        summary.claimed,
        summary.conflicts,
        summary.stale,
        summary.missing,
        summary.skipped,
        summary.released,
        summary.nodes,
        summary.duration_ms,
        steps or "-",
        per_node or "-",
    )
    return summary


def _quiet(summary: ClaimSummary) -> bool:
    """Nothing was due and nothing is in flight (no slot about to free): the loop may rest.

    Not while no Kibana node is in rotation (nodes resolving at start, or all out): the search did
    not run, so nothing is known about what falls due.
    """
    return (
        summary.ran
        and summary.nodes > 0
        and summary.waiting == 0
        and summary.in_flight == 0
        and summary.ledger_rebuilt is None
    )


def _rest_until(settings: Settings, summary: ClaimSummary, now: datetime) -> datetime:
    """A quiet loop rests until the idle interval ends or the next known runAt comes near."""
    next_ms = summary.next_run_at_ms
    next_run_at = None if next_ms is None else datetime.fromtimestamp(next_ms / 1000, tz=UTC)
    return rest_until(
        now, next_run_at=next_run_at, idle_ms=settings.idle_polling_interval_ms, lookahead_ms=lookahead_ms(settings)
    )
