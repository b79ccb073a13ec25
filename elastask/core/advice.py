"""Settings known to make elastask fall behind or run unsafely: one sentence each, naming the key. Pure.

Shown by ``elastask check`` (a ``settings`` row) and logged once when a worker or beat starts; the
claim loop adds the one it can only see at run time (a task type that runs more often than the
claim loop looks).
"""

from __future__ import annotations

from elastask.config import COSTS, Settings
from elastask.core.documents import INSTANCE_COSTS
from elastask.core.policy import MAX_LOOKAHEAD_MS


def settings_advice(settings: Settings) -> list[str]:
    """What in these settings is known to cost drift, throughput or safety, and what to set instead."""
    advice = []
    polling = settings.polling_interval_ms
    if polling > MAX_LOOKAHEAD_MS:
        advice.append(
            f"{settings.source}: polling_interval: {polling} ms: tasks claimed up to {MAX_LOOKAHEAD_MS} ms ahead still "
            f"start up to {polling - MAX_LOOKAHEAD_MS} ms late, and a node's freed slots are refilled only every "
            f"{polling} ms (measured at 3000 ms: 150 recurring 200 ms tasks every 5 s on 3 nodes fell behind, "
            "drift p50 10 s and growing); the default 500 keeps drift p99 under 0.5 s"
        )
    if settings.idle_polling_interval_ms < polling:
        advice.append(
            f"{settings.source}: idle_polling_interval ({settings.idle_polling_interval_ms} ms) is shorter than "
            f"polling_interval ({polling} ms): the claim loop never rests longer than polling_interval; "
            "set it at least as long (default 3000)"
        )
    if not settings.elasticsearch.verify_certs:
        advice.append(
            f"{settings.source}: elasticsearch.verify_certs: false: the engine's TLS certificate is not checked "
            "(anyone on the path can read and change task documents); give elasticsearch.ca_certs instead"
        )
    if not settings.kibana.verify_certs:
        advice.append(
            f"{settings.source}: kibana.verify_certs: false: the Kibana nodes' TLS certificates are not checked "
            "(pushed tasks carry their params and API keys); give kibana.ca_certs instead"
        )
    biggest, extralarge = settings.biggest_capacity_units(), INSTANCE_COSTS["extralarge"]
    if biggest < extralarge:
        advice.append(
            f"{settings.source}: kibana_capacity: the biggest Kibana node holds {biggest} cost units, fewer than a "
            f"task whose own task.cost is extralarge ({extralarge} units): such a task can never run and is failed "
            f"with the reason; a capacity of at least {extralarge // COSTS['normal']} runs it"
        )
    return advice


def interval_advice(settings: Settings, task_type: str, interval_ms: int) -> str | None:
    """A recurring task type that falls due more often than the claim loop looks, or None."""
    polling = settings.polling_interval_ms
    if interval_ms >= polling:
        return None
    return (
        f"task type {task_type!r} runs every {interval_ms} ms but polling_interval is {polling} ms "
        f"({settings.source}): the claim loop looks less often than its runs fall due, so they start late "
        f"and fewer run than are due; set polling_interval to at most {interval_ms}"
    )
