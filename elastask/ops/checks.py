"""``elastask check``: is every dependency reachable and set up for push (engine, index, task types,
Redis and Sentinel, each Kibana node), and are the settings known to fall behind. One row each.

One module over 300 lines: a short check per dependency, side by side as the one list ``elastask check`` prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import redis
import requests

from elastask.config import COSTS, KibanaNode, Settings
from elastask.core.advice import settings_advice
from elastask.core.kibana_setup import SetupFinding, setup_findings
from elastask.errors import StoreError
from elastask.ops import pausing
from elastask.parts.connection_errors import explain
from elastask.runtime import Runtime


@dataclass(frozen=True)
class CheckRow:
    """One dependency: ok or not, what was found, and the fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    #: Works, but is known to cost drift, throughput or safety (printed, does not fail the check).
    warning: bool = False


def check(settings: Settings, rt: Runtime) -> list[CheckRow]:
    """Reach every dependency once and say what is wrong with each, with the fix."""
    rows = [CheckRow("config", True, f"{settings.source}: valid")]
    rows += [CheckRow("settings", True, advice, warning=True) for advice in settings_advice(settings)]
    rows.append(_check_engine(settings, rt))
    if rows[-1].ok:
        rows.append(_check_index(settings, rt))
        if rows[-1].ok:
            rows.append(_check_task_types(settings, rt))
    rows.append(_check_redis(settings, rt))
    if rows[-1].ok:
        rows.append(_check_pauses(rt))
    for node in settings.kibana.hosts:
        rows.append(_check_kibana(rt, node.url, node))
        if rows[-1].ok:
            rows += _check_kibana_setup(settings, rt, node, datetime.now(UTC))
    if settings.kibana.hosts:
        rows.append(_check_kibana_execution(rt, settings.kibana.hosts))
    return rows


def _check_kibana_execution(rt: Runtime, hosts: Sequence[KibanaNode]) -> CheckRow:
    """Kibana's own execution pause (one state for the whole Kibana), from the first node that answers."""
    name = "kibana execution pause"
    for node in hosts:
        answer = rt.kibana.execution_control(node)
        if answer is None:
            continue
        if answer.answer == "absent":
            return CheckRow(name, True, f"{answer.detail}: nothing to honour")
        if answer.answer == "refused":
            fix = "give elastask's Kibana user the superuser role, or leave it (elastask pause is elastask's own)"
            return CheckRow(name, True, f"{answer.detail}; a pause there is not honoured", fix, warning=True)
        paused = (["everything"] if answer.paused else []) + [f"type {t}" for t in answer.paused_types]
        if not paused:
            return CheckRow(name, True, f"not paused (read from {node.url})")
        since = f" since {answer.updated_at}" + (f" by {answer.updated_by}" if answer.updated_by else "")
        return CheckRow(
            name,
            True,
            f"paused: {', '.join(paused)}{since} (read from {node.url}): elastask claims and pushes nothing for it",
            f"lift it in Kibana: POST {node.url}/internal/task_manager/execution/_resume",
            warning=True,
        )
    return CheckRow(name, True, "no Kibana node answered its execution pause status: not checked", warning=True)


def _check_pauses(rt: Runtime) -> CheckRow:
    """What is paused (a warning: its due tasks wait), and whether Redis lost the pauses once."""
    now = datetime.now(UTC)
    described = pausing.described(rt, now)
    restored = described["pauses_restored_at"]
    lost = f"; Redis lost them and a worker wrote them back at {restored}" if restored else ""
    if not described["paused"]:
        return CheckRow("pauses", True, f"nothing paused{lost}", warning=bool(restored))
    paused = ", ".join(f"{p['pause']} ({p['source']})" for p in described["paused"])
    fix = "elastask resume (elastask.yaml paused: in the file)"
    return CheckRow("pauses", True, f"paused: {paused}{lost}", fix, warning=True)


def _check_kibana_setup(settings: Settings, rt: Runtime, node: KibanaNode, now: datetime) -> list[CheckRow]:
    """The node's Kibana settings for push (see core/kibana_setup.py), one row per finding."""
    name = f"kibana {node.url} setup"
    problems = kibana_setup_problems(settings, rt, node, now)
    if not problems:
        return [CheckRow(name, True, "ephemeral tasks on, claiming off, queue large enough")]
    return [CheckRow(name, not f.problem, f.detail, f.fix, warning=not f.problem) for f in problems]


def kibana_setup_problems(settings: Settings, rt: Runtime, node: KibanaNode, now: datetime) -> list[SetupFinding]:
    """What is wrong with a node's setup for push; a health API that cannot be read is a finding too."""
    capacity = settings.capacity_units(node) // COSTS["normal"]
    try:
        status = rt.kibana.status(node).json()
    except (requests.RequestException, ValueError):
        status = {}
    try:
        health: dict[str, Any] | None = rt.kibana.task_manager_health(node)
        unreadable = None
    except (requests.RequestException, ValueError) as e:
        health, unreadable = None, e
    findings = setup_findings(status if isinstance(status, dict) else {}, health, capacity, now)
    if unreadable is not None:
        findings.append(
            SetupFinding(
                False,
                f"{node.url}/api/task_manager/_health could not be read ({type(unreadable).__name__}): "
                "claiming and the ephemeral queue were not checked",
                "let the elastask user read the task manager health API",
            )
        )
    return findings


def _check_engine(settings: Settings, rt: Runtime) -> CheckRow:
    name = f"search engine {settings.elasticsearch.host}"
    try:
        info = rt.store.info()
    except Exception as e:  # the client raises many shapes; the row names it
        status = getattr(getattr(e, "meta", None), "status", None)
        if status in (401, 403):
            return CheckRow(
                name,
                False,
                f"authentication failed ({status})",
                "check elasticsearch.username/password or api_key (ELASTASK_ELASTICSEARCH_PASSWORD)",
            )
        why = explain(e, settings.elasticsearch.host, "elasticsearch")
        if why is not None:
            return CheckRow(name, False, why.detail, why.fix)
        return CheckRow(
            name,
            False,
            f"unreachable ({type(e).__name__})",
            "check elasticsearch.host, the network, and TLS settings (ca_certs, verify_certs)",
        )
    version = info.get("version", {})
    return CheckRow(name, True, f"{version.get('distribution', 'elasticsearch')} {version.get('number', '?')}")


def _check_task_types(settings: Settings, rt: Runtime) -> CheckRow:
    """The task types in the index that neither elastask.yaml nor the catalogue knows: they run with the defaults."""
    name = "task types"
    body = {
        "size": 0,
        "query": {"term": {"type": "task"}},
        "aggs": {"types": {"terms": {"field": "task.taskType", "size": 1000}}},
    }
    try:
        answer = rt.store.search(body, "listing the task types in the index")
    except StoreError as e:
        return CheckRow(name, False, str(e), "check the engine")
    present = [str(b["key"]) for b in answer.get("aggregations", {}).get("types", {}).get("buckets", [])]
    unknown = [t for t in present if t not in settings.task_types and settings.catalogue.rule_for(t) is None]
    known = len(present) - len(unknown)
    if unknown:
        return CheckRow(
            name,
            True,
            f"{known} of {len(present)} type(s) in the index have Kibana's rules; with the defaults (timeout "
            f"{settings.task_timeout_ms // 1000}s, max_attempts {settings.max_attempts}, cost normal): "
            + ", ".join(sorted(unknown)),
            "if one of them needs another timeout, cost or limit, set it under task_types in elastask.yaml",
            warning=True,
        )
    return CheckRow(name, True, f"every one of the {len(present)} type(s) in the index has Kibana's rules")


def _check_index(settings: Settings, rt: Runtime) -> CheckRow:
    name = f"index {settings.index}"
    try:
        warnings = rt.store.check_index()
    except StoreError as e:
        return CheckRow(name, False, str(e), "start Kibana once (it creates the index), or fix the index setting")
    if warnings:
        return CheckRow(name, False, "; ".join(warnings), "point elastask at Kibana's task index")
    return CheckRow(name, True, "exists, mapping has every queried field")


def _check_redis(settings: Settings, rt: Runtime) -> CheckRow:
    if settings.redis_sentinels():
        return _check_sentinel(settings, rt)
    try:
        rt.redis.ping()
    except (redis.AuthenticationError, redis.AuthenticationWrongNumberOfArgsError):
        return CheckRow("redis", False, "authentication failed", "check the password in redis.url (ELASTASK_REDIS_URL)")
    except redis.ResponseError as e:
        if "NOAUTH" in str(e):  # the server wants a password and none was given
            return CheckRow("redis", False, "it requires a password", "give it in redis.url: redis://:PASSWORD@host")
        return CheckRow("redis", False, f"answered {e}", "check redis.url")
    except redis.RedisError as e:
        why = explain(e, _redis_display(settings), "redis")
        if why is not None:
            return CheckRow("redis", False, why.detail, why.fix)
        return CheckRow("redis", False, f"unreachable ({type(e).__name__})", "check redis.url and that Redis runs")
    return CheckRow("redis", True, "answers PING")


def _redis_display(settings: Settings) -> str:
    """redis.url without its password, to name it in a row."""
    parts = urlsplit(settings.redis_url.reveal())
    return f"{parts.scheme}://{parts.hostname}:{parts.port}"


def _check_sentinel(settings: Settings, rt: Runtime) -> CheckRow:
    """The Sentinel view: which master, how many replicas, the quorum; then the master answers PING."""
    name = f"redis sentinel {settings.redis_master_name}"
    view = sentinel_view(settings)
    if "error" in view:
        return CheckRow(
            name,
            False,
            str(view["error"]),
            "check redis.url (the sentinels), redis.master_name and redis.sentinel_password",
        )
    detail = (
        f"master {view['master']} ({view['flags']}), {view['replicas']} replica(s), quorum {view['quorum']}, "
        f"{view['sentinels']} sentinel(s) answering"
    )
    try:
        rt.redis.ping()
    except redis.RedisError as e:
        return CheckRow(
            name, False, f"{detail}; the master does not answer ({type(e).__name__})", "look at the master's logs"
        )
    if int(view["replicas"]) == 0:
        return CheckRow(name, True, detail + "; no replica: a failover has nowhere to go", warning=True)
    return CheckRow(name, True, detail)


def sentinel_view(settings: Settings) -> dict[str, Any]:
    """What the first answering sentinel says about the master (``SENTINEL MASTER``), or an error."""

    password = settings.redis_sentinel_password.reveal() if settings.redis_sentinel_password else None
    errors = []
    answering = 0
    found: dict[str, Any] | None = None
    for host, port in settings.redis_sentinels():
        client = redis.Redis(host=host, port=port, password=password, socket_timeout=3, socket_connect_timeout=3)
        try:
            # The raw reply (redis-py 6.4's parser for SENTINEL MASTER fails): a flat list of names and values.
            raw = client.execute_command("SENTINEL", "MASTER", settings.redis_master_name)  # type: ignore[no-untyped-call]
            pairs = [v.decode() if isinstance(v, bytes) else v for v in raw]
            state = dict(zip(pairs[::2], pairs[1::2], strict=True))
            answering += 1
            found = found or state
        except redis.RedisError as e:
            errors.append(f"{host}:{port}: {type(e).__name__}: {e}")
        finally:
            client.close()
    if found is None:
        return {"error": "no sentinel answered for the master: " + "; ".join(errors)}
    return {
        "master": f"{found.get('ip')}:{found.get('port')}",
        "flags": found.get("flags"),
        "replicas": found.get("num-slaves", 0),
        "quorum": found.get("quorum"),
        "sentinels": answering,
    }


def _check_kibana(rt: Runtime, url: str, node: Any) -> CheckRow:
    name = f"kibana {url}"
    try:
        answer = rt.kibana.status(node, 5.0)
    except requests.exceptions.ConnectionError as e:
        why = explain(e, url, "kibana")
        if why is not None:
            return CheckRow(name, False, why.detail, why.fix)
        return CheckRow(name, False, "connection refused or unreachable", "start the node or fix kibana.hosts")
    except requests.RequestException as e:
        return CheckRow(name, False, f"{type(e).__name__}", "check the URL and TLS settings (kibana.ca_certs)")
    if answer.status_code in (401, 403):
        return CheckRow(
            name,
            False,
            f"authentication failed ({answer.status_code})",
            "check kibana.username/password or api_key (ELASTASK_KIBANA_PASSWORD)",
        )
    try:
        body = answer.json()
    except ValueError:
        return CheckRow(name, False, f"answered {answer.status_code} without JSON", "is this URL a Kibana node?")
    level = body.get("status", {}).get("overall", {}).get("level")
    owner = f"kibana:{body.get('uuid')}"
    if answer.status_code != 200 or level not in ("available", "degraded"):
        return CheckRow(name, False, f"status {answer.status_code}, level {level}", "look at the node's own logs")
    return CheckRow(name, True, f"{level}, ownerId {owner}")
