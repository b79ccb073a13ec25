"""The in-flight ledger: per-node slots in Redis, changed only by Lua scripts so each change is atomic.

Each Kibana node has a sorted set of the task ids elastask leased to it, scored by lease expiry,
and a hash of their capacity costs. A reservation checks the node's used units and adds the task
in one script, so no interleaving of workers and beats on any machine can exceed the cap. Slots
are freed when Kibana's outcome is seen in the engine (reconcile), when a push is refused
(release), or when the lease expires (pruned by every script).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import redis

from elastask import keys
from elastask.errors import LedgerError

# Prune expired leases of one node; KEYS: zset, costs, pending; ARGV: now_ms.
_PRUNE = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, id in ipairs(expired) do
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
"""

# Used units of several nodes; KEYS: zset1, costs1, pending1, zset2, costs2, pending2, ...; ARGV: now_ms.
_USAGE = """
local result = {}
for k = 1, #KEYS, 3 do
  local expired = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', ARGV[1])
  for _, id in ipairs(expired) do
    redis.call('HDEL', KEYS[k + 1], id)
    redis.call('HDEL', KEYS[k + 2], id)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', ARGV[1])
  local used = 0
  for _, c in ipairs(redis.call('HVALS', KEYS[k + 1])) do used = used + tonumber(c) end
  table.insert(result, used)
end
return result
"""

# Reserve as many of the candidates as fit; KEYS: zset, costs, pending;
# ARGV: now_ms, capacity, force (1 = rebuild: no capacity check, the claims are already written),
# then (id, cost, expiry_ms) triples. A reservation is pending (since now_ms) until confirmed.
_RESERVE = (
    _PRUNE
    + """
local capacity, force = tonumber(ARGV[2]), ARGV[3] == '1'
local used = 0
for _, c in ipairs(redis.call('HVALS', KEYS[2])) do used = used + tonumber(c) end
local reserved = {}
for i = 4, #ARGV, 3 do
  local id, cost, expiry = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  -- A task already held is never reserved twice (a stale search hit of a task we just claimed).
  if not redis.call('ZSCORE', KEYS[1], id) and (force or used + cost <= capacity) then
    redis.call('ZADD', KEYS[1], expiry, id)
    redis.call('HSET', KEYS[2], id, cost)
    if not force then redis.call('HSET', KEYS[3], id, ARGV[1]) end
    used = used + cost
    table.insert(reserved, id)
  end
end
return reserved
"""
)

# Release ids; KEYS: zset, costs, pending; ARGV: ids.
_RELEASE = """
local n = 0
for _, id in ipairs(ARGV) do
  n = n + redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
return n
"""


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _keys(owner_id: str) -> list[str]:
    """The keys every script of one node takes: leases, their costs, their pending marks."""
    return [keys.inflight(owner_id), keys.inflight_costs(owner_id), keys.inflight_pending(owner_id)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Lease:
    """A slot held for one task on one node until ``expires_ms``."""

    task_id: str
    owner_id: str
    expires_ms: int
    #: Set while the claim that reserved the slot may not be written yet (ms since epoch it was reserved).
    pending_since_ms: int | None = None


class Ledger:
    """Per-node in-flight slots in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._usage = client.register_script(_USAGE)
        self._reserve = client.register_script(_RESERVE)
        self._release = client.register_script(_RELEASE)

    def is_built(self) -> bool:
        """False after Redis lost its data: the ledger must be rebuilt from the engine first."""
        try:
            return bool(self.client.exists(keys.LEDGER_EPOCH))
        except redis.RedisError as e:
            raise LedgerError(f"Redis: {e}") from e

    def mark_built(self, now: datetime) -> None:
        """Record that the ledger now mirrors the engine."""
        self.client.set(keys.LEDGER_EPOCH, _ms(now))

    def used_units(self, owner_ids: Sequence[str], now: datetime) -> dict[str, int]:
        """Units in use per node, after dropping expired leases."""
        if not owner_ids:
            return {}
        key_list = [k for owner in owner_ids for k in _keys(owner)]
        try:
            used = self._usage(keys=key_list, args=[_ms(now)])
        except redis.RedisError as e:
            raise LedgerError(f"Redis: {e}") from e
        return {owner: int(units) for owner, units in zip(owner_ids, used, strict=True)}

    def reserve(
        self,
        owner_id: str,
        capacity_units: int,
        candidates: Iterable[tuple[str, int, datetime]],
        now: datetime,
        *,
        force: bool = False,
    ) -> set[str]:
        """Atomically take slots for the candidates (id, cost, lease expiry) that fit; returns the ids taken."""
        args: list[str | int] = [_ms(now), capacity_units, 1 if force else 0]
        for task_id, cost, expiry in candidates:
            args += [task_id, cost, _ms(expiry)]
        if len(args) == 3:
            return set()
        try:
            taken = self._reserve(keys=_keys(owner_id), args=args)
        except redis.RedisError as e:
            raise LedgerError(f"Redis: {e}") from e
        return {t.decode() if isinstance(t, bytes) else str(t) for t in taken}

    def release(self, owner_id: str, task_ids: Iterable[str]) -> int:
        """Free the slots of these tasks on this node; returns how many were held."""
        ids = list(task_ids)
        if not ids:
            return 0
        try:
            return int(self._release(keys=_keys(owner_id), args=ids))
        except redis.RedisError as e:
            raise LedgerError(f"Redis: {e}") from e

    def leases(self, owner_ids: Sequence[str]) -> list[Lease]:
        """Every lease held on these nodes."""
        pipe = self.client.pipeline(transaction=False)
        for owner in owner_ids:
            pipe.zrange(keys.inflight(owner), 0, -1, withscores=True)
            pipe.hgetall(keys.inflight_pending(owner))
        try:
            answers = pipe.execute()
        except redis.RedisError as e:
            raise LedgerError(f"Redis: {e}") from e
        result = []
        for owner, members, pending in zip(owner_ids, answers[::2], answers[1::2], strict=True):
            since = {_text(k): int(v) for k, v in pending.items()}
            for member, score in members:
                task_id = _text(member)
                result.append(Lease(task_id, owner, int(score), since.get(task_id)))
        return result

    def confirm(self, owner_id: str, task_ids: Iterable[str]) -> None:
        """The claims of these reservations are written: reconcile may now judge them by the engine."""
        ids = list(task_ids)
        if not ids:
            return
        try:
            self.client.hdel(keys.inflight_pending(owner_id), *ids)
        except redis.RedisError as e:
            raise LedgerError(f"Redis: {e}") from e

    def extend(self, owner_id: str, expiries: Mapping[str, datetime]) -> None:
        """Move held leases' expiries (after they were renewed in the engine); ids not held are left out."""
        if not expiries:
            return
        try:
            self.client.zadd(keys.inflight(owner_id), {task_id: _ms(at) for task_id, at in expiries.items()}, xx=True)
        except redis.RedisError as e:
            raise LedgerError(f"Redis: {e}") from e

    def release_many(self, by_owner: Mapping[str, Iterable[str]]) -> int:
        """Release several nodes' tasks."""
        return sum(self.release(owner, ids) for owner, ids in by_owner.items())
