"""Every Redis key elastask writes, in one place (prefix ``elastask:``)."""

from __future__ import annotations

PREFIX = "elastask:"

#: Set when the ledger was built; its absence means Redis lost the ledger (flush, restart).
LEDGER_EPOCH = PREFIX + "ledger:epoch"
#: The claim and retry loops each run one at a time across every beat and worker.
CLAIM_LOCK = PREFIX + "lock:claim"
RETRY_LOCK = PREFIX + "lock:retry"
#: Present while the claim loop rests after a quiet cycle (expires when the next cycle is due).
CLAIM_RESTING = PREFIX + "claim:resting"
#: Hash: ownerId -> when that node's Kibana process started (ms, Redis's clock), from its uptime.
NODE_STARTS = PREFIX + "nodes:started"
#: Hash: ownerId -> that node's last uptime answer (JSON: the uptime, when it was asked, the start a
#: restart's leases were last judged against), to narrow a restart's start down (loops/retry/node_restarts.py).
NODE_UPTIMES = PREFIX + "nodes:uptimes"
#: Present while a follow-up claim cycle is scheduled (tasks waiting for slots: see parts/cadence.py).
CLAIM_FOLLOW_UP = PREFIX + "claim:follow-up"
#: Hash: Kibana URL -> ownerId learned from GET /api/status.
NODE_IDS = PREFIX + "nodes:owner_ids"
#: Sorted set of malformed documents to leave out of claims for a while (score: until when, ms).
MALFORMED = PREFIX + "malformed"
#: Sorted set of tasks whose slot reconcile freed because Kibana finished them (score: when, ms on
#: Redis's clock): the near-real-time search still shows them as due until the index refreshes.
LEDGER_FINISHED = PREFIX + "ledger:finished"
#: Hash: task type -> the shortest run (ms, claim -> found finished) refill sessions saw (the next
#: session starts knowing it). The key keeps its 0.5 name, so a rolling upgrade keeps what was learned.
REFILL_SHORTEST_RUNS = PREFIX + "refill:shortest-hold"
#: Present for a second after the claim loop reconciled the ledger with the engine.
RECONCILED = PREFIX + "ledger:reconciled"
#: Present while the last audit of unclaimable documents is recent (expires when the next one is due).
AUDIT_DUE = PREFIX + "audit:due"
#: Hash: document id -> why it was marked failed (for operators; Kibana's mapping has no field for it).
FAILED_REASONS = PREFIX + "failed:reasons"
#: Sorted set of the ids in FAILED_REASONS by when they failed (ms): the reasons kept are bounded by it.
FAILED_REASONS_BY_TIME = PREFIX + "failed:reasons-by-time"
#: Hash of what is paused (``elastask pause``): ``all`` / ``type:X`` / ``node:Y`` -> since (ms), plus a
#: ``_kept`` field that stays after a resume, so the hash is missing only when Redis lost it.
PAUSED = PREFIX + "paused"
#: When a worker last wrote back the pauses it remembered after Redis lost them (ms).
PAUSES_RESTORED = PREFIX + "paused:restored"
#: Kibana's own execution pause as a node last reported it (JSON; loops/pauses/kibana.py).
KIBANA_PAUSE = PREFIX + "paused:kibana"
#: Whose turn it is to ask Kibana for its execution pause (one question per interval across every process).
KIBANA_PAUSE_TURN = PREFIX + "paused:kibana:turn"
#: Hash of the dispatcher's counters (ops/metrics.py): field ``name`` or ``name|k=v,...``.
METRIC_COUNTERS = PREFIX + "metrics:counters"
#: When the last claim cycle ended (ms): /health's "claim loop alive".
METRIC_LAST_CLAIM = PREFIX + "metrics:last_claim_ms"
#: When the in-flight usage was last sampled (ms, ops/usage.py).
USAGE_LAST_SAMPLE = PREFIX + "usage:last_sample_ms"
#: Recent accepted pushes, newest first, ``<epoch ms>|<ownerId>|<drift s>|<taskType>`` (ops/recent.py, the console).
RECENT_STARTS = PREFIX + "recent:starts"
#: Hash ownerId -> when elastask last pushed to it (ms, the console).
RECENT_LAST_PUSH = PREFIX + "recent:last_push_ms"
#: Hash ownerId -> restarts of that node the restart watch noticed (the console).
RECENT_RESTARTS = PREFIX + "recent:restarts"
#: The console's control actions, newest first (JSON lines: who, what, when; ops/recent.py).
CONSOLE_ACTIONS = PREFIX + "console:actions"


def inflight(owner_id: str) -> str:
    """Sorted set of task ids leased to a node, scored by lease expiry (ms since epoch)."""
    return f"{PREFIX}inflight:{owner_id}"


def inflight_costs(owner_id: str) -> str:
    """Hash of task id -> capacity cost for the same node."""
    return f"{PREFIX}inflight-cost:{owner_id}"


def inflight_pending(owner_id: str) -> str:
    """Hash of task id -> when its slot was reserved (ms), while the claim may not be written yet."""
    return f"{PREFIX}inflight-pending:{owner_id}"


def health(owner_id: str) -> str:
    """Hash of a node's circuit breaker: failures, open_until_ms, backoff_ms."""
    return f"{PREFIX}health:{owner_id}"


def restart_watch_turn(owner_id: str) -> str:
    """Held by the process that asks a node for its uptime next (one asker per turn)."""
    return f"{PREFIX}nodes:watch:{owner_id}"


def claim_marker(doc_id: str, seq_no: int) -> str:
    """Marks that elastask wrote this claim (document version) and holds its slot (set by confirm.lua)."""
    return f"{PREFIX}claimed:{doc_id}:{seq_no}"


def push_marker(doc_id: str, seq_no: int) -> str:
    """Marks that the push of one claim (document version) was attempted: never push it twice."""
    return f"{PREFIX}pushed:{doc_id}:{seq_no}"


def metric_histogram(name: str) -> str:
    """Hash of one histogram's bucket counts, sum and count."""
    return f"{PREFIX}metrics:hist:{name}"


def metric_window(name: str) -> str:
    """List of one histogram's latest samples (for /health's percentiles)."""
    return f"{PREFIX}metrics:window:{name}"


def usage_minute(minute: int) -> str:
    """Hash of the usage of one minute (minutes since the epoch): runs and unit-ms per node."""
    return f"{PREFIX}usage:{minute}"


#: Set of the worker ids (``host:pid:started``) that recorded the claims they hold (parts/worker_claims.py).
WORKERS = PREFIX + "workers"


def worker_alive(worker_id: str) -> str:
    """Present while the worker beats (its main process renews it every second)."""
    return f"{PREFIX}worker:alive:{worker_id}"


def worker_claims(worker_id: str) -> str:
    """Sorted set of the claims one worker holds, a member per dispatch job (score: when to forget it, ms)."""
    return f"{PREFIX}worker:claims:{worker_id}"


def shutting_down(hostname: str) -> str:
    """Present while the worker ``hostname`` (its Celery node name) shuts down: its refill sessions end."""
    return f"{PREFIX}worker:shutting-down:{hostname}"


def queue(owner_id: str) -> str:
    """The Celery queue of dispatch jobs for one Kibana node."""
    return f"elastask.dispatch.{owner_id}"


CLAIM_QUEUE = "elastask.claim"
RETRY_QUEUE = "elastask.retry"


def claim_lock(lane: int) -> str:
    """The claim lock of one claim lane (core/lanes.py); lane 0's is the one-path lock ``CLAIM_LOCK``."""
    return CLAIM_LOCK if lane == 0 else f"{CLAIM_LOCK}:{lane}"


def claim_resting(lane: int) -> str:
    """Whether a claim lane rests (parts/cadence.py); lane 0's is ``CLAIM_RESTING``."""
    return CLAIM_RESTING if lane == 0 else f"{CLAIM_RESTING}:{lane}"


def claim_follow_up(lane: int) -> str:
    """A claim lane's follow-up claim job is on its way (parts/cadence.py); lane 0's is ``CLAIM_FOLLOW_UP``."""
    return CLAIM_FOLLOW_UP if lane == 0 else f"{CLAIM_FOLLOW_UP}:{lane}"
