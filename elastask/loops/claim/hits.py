"""A look's hits: the session's unread hits when they cover the room, its search after a claim once
done, or a new search (loops/claim/search.py); and the search right after a claim when they run low."""

from __future__ import annotations

import logging

from elastask.errors import ElastaskError
from elastask.loops.claim import search as due_search
from elastask.loops.claim.refill import RefillSession
from elastask.loops.claim.state import Cycle
from elastask.parts.quarantine import quarantined

log = logging.getLogger(__name__)


def find_hits(cycle: Cycle) -> bool:
    """The hits: a session's look with no slot free stops here (the common case between two
    completions); else the last search's unread hits when they cover the room, or a new search."""
    unread = cycle.plan.unread
    if unread is None:
        search_due(cycle)
        return True
    _prefetched(cycle.session, wait=False)
    if not any(free >= cycle.cheapest for free in cycle.free.values()):
        return False
    room = cycle.room() // cycle.cheapest
    exclude = cycle.leased | cycle.view.recently_finished
    hits = unread.take(room, cycle.rt.monotonic_ms(), exclude)
    if not hits and _prefetched(cycle.session, wait=True):
        hits = unread.take(room, cycle.rt.monotonic_ms(), exclude)
    if not hits:
        search_due(cycle)
        return True
    cycle.hits, cycle.searched_ms, cycle.search_size, cycle.search_full = hits, unread.searched_ms, unread.size, True
    cycle.summary.waiting, cycle.summary.search_full, cycle.summary.searched = len(hits), True, True
    return True


def search_due(cycle: Cycle) -> None:
    """Due tasks (and those due within the claim-ahead window), leaving out what the ledger holds
    (loops/claim/search.py). Types with a concurrency limit are searched apart, one search per group with room."""
    _found(cycle, due_search.run(cycle.rt.store, _plan(cycle), cycle.rt.monotonic_ms))
    cycle.summary.step("search")


def _plan(cycle: Cycle, claimed_now: frozenset[str] = frozenset(), sources: bool = False) -> due_search.DueSearch:
    """The look's searches, leaving out the ledger's tasks and ``claimed_now`` (claimed since it was read)."""
    # ... and the tasks Kibana finished a moment ago (deleted, or rescheduled): left out too.
    exclude = {
        *quarantined(cycle.rt.redis, cycle.now),
        *(lease.task_id for lease in cycle.view.leases),
        *cycle.view.recently_finished,
        *claimed_now,
    }
    return due_search.plan(
        cycle.settings,
        cycle.now,
        cycle.available,
        cycle.view,
        cycle.pauses,
        cycle.cheapest,
        exclude,
        sources=sources,
        lane=cycle.session.lane,
    )


def _found(cycle: Cycle, found: due_search.Found) -> None:
    """Take a search's hits as this cycle's."""
    cycle.hits, cycle.searched_ms, cycle.search_size = found.hits, found.searched_ms, found.size
    cycle.summary.search_full = cycle.search_full = found.full
    cycle.summary.waiting = len(cycle.hits)
    cycle.summary.next_run_at_ms = found.next_run_at_ms
    cycle.summary.searched = True


def prefetch(cycle: Cycle, claimed: set[str]) -> None:
    """In a session, search again right after the claim when its unread hits run low (loops/claim/refill.py),
    with the documents: the next freed slot finds its hits ready, claimed without a real-time read.

    With a ``searcher`` the search runs there while the session goes on looking and claiming; its
    hits become the session's unread hits at a later look (``_prefetched``). A claim made meanwhile
    is in the ledger, so left out of them.
    """
    session, unread = cycle.session, cycle.plan.unread
    if unread is None or not claimed or not unread.running_low(cycle.rt.monotonic_ms()):
        return
    search = _plan(cycle, frozenset(claimed), sources=True)
    if session.searcher is not None:
        if session.prefetching is None:
            session.prefetching = session.searcher.submit(due_search.run, cycle.rt.store, search, cycle.rt.monotonic_ms)
        return
    _found(cycle, due_search.run(cycle.rt.store, search, cycle.rt.monotonic_ms))
    cycle.summary.waiting += cycle.summary.claimed  # due when the cycle began: what it claimed, and these
    unread.keep(cycle.hits, cycle.searched_ms, cycle.search_size, cycle.search_full)
    cycle.summary.step("prefetch")


def _prefetched(session: RefillSession, *, wait: bool) -> bool:
    """The session's search in flight, once done (or, ``wait``, now), as its unread hits; True if it was
    kept. A search that failed is logged and dropped: the next cycle that needs hits searches itself."""
    future = session.prefetching
    if future is None or (not wait and not future.done()):
        return False
    session.prefetching = None
    try:
        found: due_search.Found = future.result()
    except ElastaskError as e:
        log.warning("a refill session's search after its claim failed; the next cycle searches again: %s", e)
        return False
    session.unread.keep(found.hits, found.searched_ms, found.size, found.full)
    return True
