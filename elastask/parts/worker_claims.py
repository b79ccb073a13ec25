"""Which worker holds which claims, and whether it still lives: its heartbeat and its claims, in Redis.

A worker (a Celery worker's main process and its pool processes) holds a claim from the claim write
until its push: the claim cycle's process holds the dispatch jobs it sends until a worker receives
them, and the worker that receives a job holds it until it pushed its tasks (a job claimed ahead
waits in that worker for its runAt). A worker killed (SIGKILL, OOM) or frozen in between takes the
claims with it: the broker gives its unacknowledged jobs back only after its visibility timeout, and
the leases run for the task's whole timeout. So each worker records the claims it holds, one entry
per dispatch job, and beats every ``BEAT_MS``; a worker whose beat is older than ``ALIVE_MS`` is
dead, and the retry loop takes back the claims it never pushed (loops/retry/orphans.py).

The worker id is ``host:pid:started``: a worker restarted with the same Celery node name is a new
worker, so the one that died is still seen dead.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import redis

from elastask import keys
from elastask.core.clock import epoch_ms
from elastask.core.intervals import parse_date
from elastask.core.messages import DispatchJob

#: How often a worker beats, and how long after its last beat it counts as dead (killed or frozen).
BEAT_MS = 1000
ALIVE_MS = 5000
#: How long a job's claims stay recorded past its last push step: a job received is pushed at once
#: (or at its runAt), so a record this old is of a job long pushed (its push markers say so anyway).
KEEP_MS = 60_000
#: How long the claim cycle's process holds the jobs it sends: until a worker receives them.
SENDING_MS = 10_000


def new_worker_id() -> str:
    """An id for this worker's main process, unique across restarts (its children inherit it)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


@dataclass(frozen=True)
class HeldClaim:
    """One claim a worker held: the document, the claim's version, and the attempt it counted."""

    doc_id: str
    owner_id: str
    seq_no: int
    primary_term: int
    claim: int
    attempts: int
    retry_at_ms: int


def job_record(job: DispatchJob) -> str:
    """The record of one dispatch job's claims (the same text from the claimer and the receiver)."""
    tasks = [
        [t.doc_id, t.seq_no, t.primary_term, t.claim, t.attempts, epoch_ms(parse_date(t.retry_at))] for t in job.tasks
    ]
    return json.dumps({"owner": job.owner_id, "tasks": tasks}, separators=(",", ":"))


def _claims(record: bytes | str) -> list[HeldClaim]:
    data = json.loads(record)
    owner = str(data["owner"])
    return [HeldClaim(str(t[0]), owner, int(t[1]), int(t[2]), int(t[3]), int(t[4]), int(t[5])) for t in data["tasks"]]


class WorkerClaims:
    """The workers' heartbeats and the claims each holds (every method one Redis round trip)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def beat(self, worker_id: str, now_ms: int) -> None:
        """This worker lives; records of jobs long pushed are forgotten."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(keys.worker_alive(worker_id), now_ms, px=ALIVE_MS)
        pipe.sadd(keys.WORKERS, worker_id)
        pipe.zremrangebyscore(keys.worker_claims(worker_id), "-inf", now_ms)
        pipe.execute()

    def hold(self, worker_id: str, jobs: Iterable[DispatchJob], forget_at_ms: int) -> None:
        """Record that this worker holds these jobs' claims until ``forget_at_ms`` at the latest."""
        records = {job_record(job): forget_at_ms for job in jobs if job.tasks}
        if records:
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(keys.worker_claims(worker_id), records, gt=True)
            pipe.sadd(keys.WORKERS, worker_id)
            pipe.execute()

    def stopped(self, worker_id: str) -> None:
        """A worker that ends cleanly: it beats no more (what it still holds is taken back like a dead one's)."""
        self.client.delete(keys.worker_alive(worker_id))

    def dead(self) -> list[str]:
        """The workers that recorded claims and stopped beating."""
        workers = sorted(_text(w) for w in cast(set[bytes], self.client.smembers(keys.WORKERS)))
        if not workers:
            return []
        beats = cast(list[bytes | None], self.client.mget([keys.worker_alive(w) for w in workers]))
        return [w for w, beat in zip(workers, beats, strict=True) if beat is None]

    def beating(self, worker_ids: Iterable[str]) -> set[str]:
        """The workers of ``worker_ids`` that beat now."""
        workers = sorted(set(worker_ids))
        if not workers:
            return set()
        beats = cast(list[bytes | None], self.client.mget([keys.worker_alive(w) for w in workers]))
        return {w for w, beat in zip(workers, beats, strict=True) if beat is not None}

    def alive_count(self) -> int:
        """How many workers beat now (claim lanes run at most one per worker)."""
        workers = sorted(_text(w) for w in cast(set[bytes], self.client.smembers(keys.WORKERS)))
        if not workers:
            return 0
        beats = cast(list[bytes | None], self.client.mget([keys.worker_alive(w) for w in workers]))
        return sum(1 for beat in beats if beat is not None)

    def claims_of(self, worker_id: str) -> list[HeldClaim]:
        """Every claim a worker recorded (a claim in two of its jobs' records once)."""
        records = cast(list[bytes], self.client.zrange(keys.worker_claims(worker_id), 0, -1))
        claims: dict[tuple[str, int], HeldClaim] = {}
        for record in records:
            for claim in _claims(record):
                claims[(claim.doc_id, claim.claim)] = claim
        return list(claims.values())

    def forget(self, worker_ids: Sequence[str]) -> None:
        """The dead workers' records are handled: drop them."""
        if worker_ids:
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(*(keys.worker_claims(w) for w in worker_ids))
            pipe.srem(keys.WORKERS, *worker_ids)
            pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
