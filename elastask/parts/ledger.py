"""The in-flight ledger: per-node slots in Redis, changed only by Lua scripts so each change is atomic.

Each Kibana node has a sorted set of the task ids elastask leased to it, scored by lease expiry,
a hash of their capacity costs, and a hash of the reservations whose claim may not be written yet
(pending). A reservation checks the node's used units and adds the task in one script, so no
interleaving of workers and beats on any machine can exceed the cap. Slots are freed when Kibana's
outcome is seen in the engine (reconcile), when a push is refused (release), or when the lease
expires (pruned by every script).

One clock: expiries are kept on Redis's own clock (``TIME`` inside the scripts). Callers pass lease
*durations* (computed from their own ``now``, so a machine's clock offset cancels out), and a
``/metrics`` scrape from a machine whose clock runs ahead never frees a slot early.

The ledger also owns its lifecycle keys: whether it was built (it is rebuilt from the engine after
Redis lost it) and how often it is reconciled.

One module over 300 lines: a method per Lua script over one key layout, each stating the contract its
callers rely on, so the cap and its fences are read in one place.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import redis

from elastask import keys
from elastask.core.clock import epoch_ms, monotonic_ms
from elastask.core.policy import CLAIM_MARKER_EXTRA
from elastask.errors import LedgerError
from elastask.parts.redis_errors import redis_errors
from elastask.parts.scripts import register

_CLOCKED = ("now", "prune")
#: How long one read of Redis's clock serves this process (``Ledger.now_ms``).
CLOCK_REUSE_MS = 250
#: ... when its round trip took at most this long (the most a reused reading can be behind).
CLOCK_TIGHT_READ_MS = 2


def _keys(owner_id: str) -> list[str]:
    """The keys the scripts of one node take: leases, their costs, their pending marks."""
    return [keys.inflight(owner_id), keys.inflight_costs(owner_id), keys.inflight_pending(owner_id)]


#: A slot asked for: (task id, cost units, lease expiry), or with (concurrency group, its limit per node).
SlotRequest = tuple[str, int, datetime] | tuple[str, int, datetime, str | None, int | None]


def _slots(requests: Iterable[SlotRequest], now: datetime, claims: Mapping[str, int] | None) -> list[str | int]:
    """The scripts' sextuples: id, cost, lease duration (ms from ``now``), group ('' = none), limit, and
    the claim's version ('' = not written yet)."""
    args: list[str | int] = []
    for request in requests:
        task_id, cost, expiry = request[0], request[1], request[2]
        group, limit = (request[3], request[4]) if len(request) == 5 else (None, None)
        claim = claims.get(task_id, "") if claims is not None else ""
        args += [task_id, cost, max(0, epoch_ms(expiry) - epoch_ms(now)), group or "", limit or 0, claim]
    return args


def _fenced(task_ids: Sequence[str], claims: Mapping[str, int | None] | None) -> list[str | int]:
    """(id, claim) pairs for the release scripts: the claim each slot must still be ('' not written, '*' any)."""
    pairs: list[str | int] = []
    for task_id in task_ids:
        claim = "*" if claims is None else claims.get(task_id)
        pairs += [task_id, "" if claim is None else claim]
    return pairs


def _run_id(info: Any) -> str:
    """``run_id`` from an ``INFO server`` answer; "unknown" from a server (or test double) without INFO."""
    return str(info.get("run_id", "unknown")) if isinstance(info, dict) else "unknown"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Reserver:
    """The claim cycle that reserved a slot, as its token names it (``reservation_token``)."""

    #: The worker it runs in (parts/worker_claims.py).
    worker_id: str
    #: The cycle's time (ms since epoch): the ``startedAt`` its claim writes.
    started_ms: int


def reservation_token(worker_id: str | None, started_ms: int) -> str:
    """A claim cycle's token, which names its reservations (and, in a worker, the worker and its time)."""
    unique = uuid.uuid4().hex[:16]
    return f"{worker_id}/{started_ms}/{unique}" if worker_id else unique


def reserver_of(token: str) -> Reserver | None:
    """The cycle a reservation token names (``reservation_token``), None if it names no worker."""
    parts = token.rsplit("/", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return Reserver(parts[0], int(parts[1]))


@dataclass(frozen=True)
class Lease:
    """A slot held for one task on one node until ``expires_ms`` (Redis's clock)."""

    task_id: str
    owner_id: str
    expires_ms: int
    #: Set while the claim that reserved the slot may not be written yet (when it was reserved, ms).
    pending_since_ms: int | None = None
    #: The version (``_seq_no``) of the claim whose slot this is, once written: its fence.
    claim: int | None = None
    #: The claim cycle that reserved the slot, while it is pending and if it ran in a worker.
    reserved_by: Reserver | None = None


@dataclass(frozen=True)
class LeaseView:
    """Every lease of some nodes, and Redis's clock when they were read (compare ``expires_ms`` with it)."""

    now_ms: int
    leases: list[Lease]
    #: Units each node holds (expired leases not yet pruned included): for usage metrics.
    used_units: dict[str, int] = field(default_factory=dict)
    #: Tasks reconcile saw finished a moment ago (the near-real-time search may still show them due).
    recently_finished: frozenset[str] = frozenset()
    #: Per node, per concurrency group (types with a maxConcurrency): how many of its tasks hold a slot.
    group_counts: dict[str, dict[str, int]] = field(default_factory=dict)


class Ledger:
    """Per-node in-flight slots in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        monotonic: Callable[[], float] = monotonic_ms,
        redis_time: Callable[[], Any] | None = None,
    ) -> None:
        """``monotonic``: this process's clock (ms); ``redis_time``: Redis's ``TIME`` (seconds, microseconds),
        the client's by default (a test skews it to stand for a worker whose clock is off)."""
        self.client = client
        self._redis_time = redis_time if redis_time is not None else client.time
        #: This process's monotonic clock (ms), which moves a reused reading of Redis's clock on.
        self._monotonic = monotonic
        #: The last tight read of Redis's clock: (its ms, this process's monotonic ms when the answer came).
        self._clock: tuple[int, float] | None = None
        self._usage = register(client, "usage", *_CLOCKED)
        self._reserve = register(client, "reserve", *_CLOCKED)
        self._release = register(client, "release", "prune")
        self._release_many = register(client, "release_many", "prune")
        self._confirm = register(client, "confirm", *_CLOCKED)
        self._extend = register(client, "extend", *_CLOCKED)
        self._leases = register(client, "leases", *_CLOCKED)
        self._mark_claims = register(client, "mark_claims")

    # ---- lifecycle -------------------------------------------------------------------------------

    def is_built(self) -> bool:
        """False when the ledger must be rebuilt from the engine before anything is claimed.

        The epoch holds the id of the Redis server the ledger was built on (``run_id``). It is gone
        after a flush or a restart without data; it names another server after a Sentinel failover,
        whose promoted replica may lack the last writes (replication is asynchronous).
        """
        # One round trip: every claim cycle asks.
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.LEDGER_EPOCH)
        pipe.info("server")
        with redis_errors("reading the ledger's epoch"):
            epoch, info = pipe.execute(raise_on_error=False)
        if isinstance(epoch, Exception):
            raise LedgerError(f"Redis, reading the ledger's epoch: {epoch}")
        return epoch is not None and _text(epoch).split("@", 1)[-1] == _run_id(info)

    def mark_built(self, now: datetime) -> None:
        """Record that the ledger now mirrors the engine, on this Redis server."""
        with redis_errors("writing the ledger's epoch"):
            # The nonce: two rebuilds on one server in one millisecond (a flush between them) are two epochs.
            self.client.set(keys.LEDGER_EPOCH, f"{epoch_ms(now)}.{secrets.token_hex(4)}@{self._server_id()}")

    def _server_id(self) -> str:
        """The Redis server's ``run_id`` (new after a restart; another one after a failover)."""
        try:
            return _run_id(self.client.info("server"))
        except redis.ResponseError as e:  # a server (or a test double) without INFO
            return _run_id(e)

    def mark_claims(self, claims: Sequence[tuple[str, int, int]]) -> None:
        """Claim markers for (doc id, claim version, ms the marker lives), holding the ledger's epoch (as
        confirm's): a renewed lease's new version is elastask's claim too."""
        if not claims:
            return
        markers = [keys.claim_marker(doc_id, claim) for doc_id, claim, _ in claims]
        with redis_errors("marking claims"):
            self._mark_claims(keys=[keys.LEDGER_EPOCH, *markers], args=[ttl_ms for _, _, ttl_ms in claims])

    def claims_current(self) -> bool:
        """True when claim markers can be trusted: the ledger is built on this Redis server, so a claim
        marker of its epoch was written on the data Redis still has (see ``is_built``). False after a
        flush or a failover not yet rebuilt: no marker proves its claim was never pushed."""
        return self.is_built()

    def reconcile_due(self, every_ms: int) -> bool:
        """True at most once per ``every_ms`` across every process: time to reconcile with the engine."""
        with redis_errors("reading the ledger's reconcile mark"):
            return bool(self.client.set(keys.RECONCILED, 1, nx=True, px=every_ms))

    # ---- slots -----------------------------------------------------------------------------------

    def used_units(self, owner_ids: Sequence[str]) -> dict[str, int]:
        """Units in use per node, after dropping expired leases."""
        if not owner_ids:
            return {}
        key_list = [k for owner in owner_ids for k in _keys(owner)]
        with redis_errors("reading the nodes' used capacity"):
            used = self._usage(keys=key_list, args=[])
        return {owner: int(units) for owner, units in zip(owner_ids, used, strict=True)}

    def reserve(
        self,
        owner_id: str,
        capacity_units: int,
        candidates: Iterable[SlotRequest],
        now: datetime,
        *,
        force: bool = False,
        token: str = "",
        claims: Mapping[str, int] | None = None,
    ) -> set[str]:
        """Atomically take slots for the candidates that fit; returns the ids taken.

        A candidate is (id, cost, lease expiry) or (id, cost, lease expiry, concurrency group, its limit
        per node): a group at its limit on the node takes no more, whatever room the node has.

        The expiry is turned into a duration from ``now`` (the caller's clock) and kept on Redis's.
        ``token`` names the reserving claim cycle: its release and confirm touch only its own slots.
        ``claims``: the claims already written (a rebuild from the engine), each slot fenced by its own.
        """
        args: list[str | int] = [capacity_units, 1 if force else 0, token, *_slots(candidates, now, claims)]
        if len(args) == 3:
            return set()
        with redis_errors(f"reserving slots on {owner_id}"):
            taken = self._reserve(keys=_keys(owner_id), args=args)
        return {_text(t) for t in taken}

    def confirm(
        self,
        owner_id: str,
        capacity_units: int,
        claims: Iterable[SlotRequest],
        now: datetime,
        token: str = "",
        *,
        versions: Mapping[str, int] | None = None,
    ) -> set[str]:
        """The claims (id, cost, lease expiry) are written: reconcile may now judge them by the engine.

        Returns the ids whose slot is held; a slot the ledger lost meanwhile (Redis lost it during the
        write) is taken again if it fits, else the id is left out and the claim must be given back.
        With ``versions`` (the claims' ``seq_no``), each held slot is fenced by its claim from now on
        (a release naming another claim leaves it alone) and each held claim gets its claim marker
        (``keys.claim_marker``), living ``CLAIM_MARKER_EXTRA`` past its lease.
        """
        requests = list(claims)
        args: list[str | int] = [
            capacity_units,
            token,
            int(CLAIM_MARKER_EXTRA.total_seconds() * 1000),
            *_slots(requests, now, versions),
        ]
        if not requests:
            return set()
        markers = [keys.claim_marker(r[0], versions[r[0]]) for r in requests] if versions is not None else []
        with redis_errors(f"confirming reservations on {owner_id}"):
            held = self._confirm(keys=[*_keys(owner_id), keys.LEDGER_EPOCH, *markers], args=args)
        return {_text(t) for t in held}

    def release(self, owner_id: str, task_ids: Iterable[str], *, claims: Mapping[str, int | None] | None = None) -> int:
        """Free the slots of these tasks on this node; returns how many were freed.

        ``claims``: the claim (its version; None: a reservation not written) each caller acts for: a slot
        is freed only while it is still that claim's, so a late or stale caller never frees the slot of a
        newer lease of the same task. None frees whatever holds them (operators, tests).
        """
        ids = list(task_ids)
        if not ids:
            return 0
        with redis_errors(f"releasing slots on {owner_id}"):
            return int(self._release(keys=_keys(owner_id), args=_fenced(ids, claims)))

    def release_many(
        self,
        by_owner: Mapping[str, Iterable[str]],
        *,
        token: str = "",
        claims: Mapping[str, int | None] | None = None,
    ) -> int:
        """Release several nodes' tasks in one round trip; returns how many were freed.

        ``token``: only the slots that claim cycle reserved and has not confirmed (its give-backs).
        ``claims``: as for ``release``.
        """
        groups = [(owner, list(ids)) for owner, ids in by_owner.items()]
        groups = [(owner, ids) for owner, ids in groups if ids]
        if not groups:
            return 0
        key_list = [k for owner, _ in groups for k in _keys(owner)]
        pairs = [p for _, ids in groups for p in _fenced(ids, claims)]
        args: list[Any] = [token, *(len(ids) for _, ids in groups), *pairs]
        with redis_errors(f"releasing slots on {len(groups)} node(s)"):
            return int(self._release_many(keys=key_list, args=args))

    def extend(
        self,
        owner_id: str,
        expiries: Mapping[str, datetime],
        now: datetime,
        *,
        claims: Mapping[str, int | None] | None = None,
    ) -> set[str]:
        """Move held leases' expiries (after they were renewed in the engine); returns the ids moved.

        An id not held (its lease ran out, or it was freed) is left out: it has no slot to push into.
        ``claims``: the claim each renewal acts for (as in ``release``): a slot another claim of the same
        task took since is left alone. None moves whatever holds them.
        """
        if not expiries:
            return set()
        args: list[Any] = []
        fenced = _fenced(list(expiries), claims)
        for (task_id, until), claim in zip(expiries.items(), fenced[1::2], strict=True):
            args += [task_id, max(0, epoch_ms(until) - epoch_ms(now)), claim]
        with redis_errors(f"extending leases on {owner_id}"):
            moved = self._extend(keys=_keys(owner_id), args=args)
        return {_text(t) for t in moved}

    def view(self, owner_ids: Sequence[str]) -> LeaseView:
        """Every lease held on these nodes, with Redis's clock at the moment they were read."""
        if not owner_ids:
            return LeaseView(self.now_ms(), [])
        key_list = [k for owner in owner_ids for k in _keys(owner)] + [keys.LEDGER_FINISHED]
        with redis_errors("reading the leases"):
            answer = self._leases(keys=key_list, args=[])
        now_ms, rest, finished = int(answer[0]), answer[1:-1], answer[-1]
        leases, used, groups = [], {}, {}
        for owner, members, pending, units, counts, claimed in zip(
            owner_ids, rest[::5], rest[1::5], rest[2::5], rest[3::5], rest[4::5], strict=True
        ):
            groups[owner] = {_text(counts[i]): int(counts[i + 1]) for i in range(0, len(counts), 2)}
            marks = {_text(pending[i]): _text(pending[i + 1]).split(":", 1) for i in range(0, len(pending), 2)}
            claims = {_text(claimed[i]): int(claimed[i + 1]) for i in range(0, len(claimed), 2)}
            for i in range(0, len(members), 2):
                task_id = _text(members[i])
                expires = int(float(members[i + 1]))
                mark = marks.get(task_id)
                since, by = (int(mark[0]), reserver_of(mark[-1])) if mark else (None, None)
                leases.append(Lease(task_id, owner, expires, since, claims.get(task_id), by))
            used[owner] = int(units)
        return LeaseView(now_ms, leases, used, frozenset(_text(t) for t in finished), groups)

    def mark_finished(self, until_ms: Mapping[str, int]) -> None:
        """Remember tasks Kibana finished (their slots were just freed) until a time each (ms, Redis's clock)."""
        members = dict(until_ms)
        if members:
            with redis_errors("remembering finished tasks"):
                self.client.zadd(keys.LEDGER_FINISHED, members)

    def leases(self, owner_ids: Sequence[str]) -> list[Lease]:
        """Every lease held on these nodes."""
        return self.view(owner_ids).leases

    def now_ms(self) -> int:
        """Redis's clock, the one every lease expiry is kept on.

        Read at most every CLOCK_REUSE_MS: in between, the last read plus the time this process
        measured since its answer arrived (a monotonic clock, which a skewed wall clock does not
        move). Counted from the answer, never from before it: like a fresh read, the result is never
        ahead of Redis's clock (a read Redis answered late, on a loaded machine, would otherwise put
        it ahead by up to half the round trip, and a task could be pushed before its runAt). A read
        whose round trip took over CLOCK_TIGHT_READ_MS is used once and not reused.
        """
        clock, asked_ms = self._clock, self._monotonic()
        if clock is not None and asked_ms - clock[1] < CLOCK_REUSE_MS:
            return clock[0] + int(asked_ms - clock[1])
        with redis_errors("reading Redis's clock"):
            seconds, micros = cast(tuple[int, int], self._redis_time())
        now_ms, answered_ms = int(seconds) * 1000 + int(micros) // 1000, self._monotonic()
        # A slow round trip leaves the reading behind by up to its length: used once, as a fresh
        # read is, but never kept for the next CLOCK_REUSE_MS of decisions (pushes would wait for it).
        self._clock = (now_ms, answered_ms) if answered_ms - asked_ms <= CLOCK_TIGHT_READ_MS else None
        return now_ms
