"""Every setting, declared once: its key in elastask.yaml, how it is read, its default and its doc.

Each field of :class:`Settings` (and of its sections) is one :func:`setting` call. The key list and
the environment variables (config/load.py), and the commented listing that is elastask.yaml
(config/listing.py), are all derived from these declarations. It stays one module: the order of the
declarations here is the order of elastask.yaml.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from elastask.config.values import Secret, coerce, host_port
from elastask.task_types import COSTS, Catalogue, TaskTypeRule, TaskTypeSettings, effective_rule

_SAME: Any = object()


@dataclass(frozen=True)
class Key:
    """One key of elastask.yaml, as declared by :func:`setting`."""

    name: str  #: dotted, as written in elastask.yaml (``elasticsearch.host``)
    kind: str  #: how it is read (config/values.py): ``posint``, ``interval``, ``secret?`` ...
    default: Any  #: as elastask.yaml writes it (``5m``, not 300000)
    doc: str  #: the comment above it in elastask.yaml
    from_file: bool = False  #: also readable from the file named by ``<key>_file``


def setting(name: str, kind: str, default: Any, doc: str, *, from_file: bool = False, value: Any = _SAME) -> Any:
    """A dataclass field for the key ``name``; its default is ``default`` read by ``kind`` (or ``value``)."""
    key = Key(name, kind, default, doc, from_file)
    python_default = coerce(kind, default, "<defaults>", name) if value is _SAME else value
    if isinstance(python_default, dict):
        return field(default_factory=dict, metadata={"key": key})
    return field(default=python_default, metadata={"key": key})


def section(cls: type) -> Any:
    """A dataclass field holding the settings of one section (``elasticsearch:``, ``kibana:``)."""
    return field(default_factory=cls, metadata={"section": cls})


def declared_keys(cls: type) -> list[tuple[str, Key]]:
    """(field name, key) of every setting of ``cls``, sections flattened, in declaration order."""
    keys: list[tuple[str, Key]] = []
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            keys.extend((f"{f.name}.{name}", key) for name, key in declared_keys(f.metadata["section"]))
        elif "key" in f.metadata:
            keys.append((f.name, f.metadata["key"]))
    return keys


_TLS = "TLS: certificate verification is on; give the CA that signed the cluster's certificate."


@dataclass(frozen=True)
class ElasticsearchSettings:
    """How to reach the search engine that holds the task index."""

    host: str = setting(
        "elasticsearch.host", "url", "http://localhost:9200",
        "The cluster that holds Kibana's task index (Elasticsearch 8.x or 9.x).",
    )  # fmt: skip
    username: str | None = setting(
        "elasticsearch.username", "str?", None,
        'Basic auth; or api_key (the base64 "id:key" form Elasticsearch returns as "encoded").\n'
        "Each secret can also be read from <key>_file (Docker/Kubernetes secrets) when the key is not set.",
    )  # fmt: skip
    password: Secret | None = setting("elasticsearch.password", "secret?", None, "", from_file=True)
    api_key: Secret | None = setting("elasticsearch.api_key", "secret?", None, "", from_file=True)
    ca_certs: str | None = setting("elasticsearch.ca_certs", "str?", None, _TLS)
    verify_certs: bool = setting("elasticsearch.verify_certs", "bool", True, "")
    request_timeout_s: float = setting("elasticsearch.request_timeout_s", "posfloat", 30, "")


@dataclass(frozen=True)
class KibanaNode:
    """One Kibana node that elastask pushes tasks to (an entry of ``kibana.hosts``)."""

    url: str
    username: str | None = None
    password: Secret | None = None
    api_key: Secret | None = None
    capacity: int | None = None  # None: the global kibana_capacity
    id: str | None = None  # the ownerId; None: "kibana:<uuid>" from GET /api/status


@dataclass(frozen=True)
class KibanaSettings:
    """The Kibana nodes and how to talk to them."""

    hosts: tuple[KibanaNode, ...] = setting(
        "kibana.hosts", "hosts", ["http://localhost:5601"],
        "The Kibana nodes to push to: URLs, or mappings with url, username, password, api_key,\n"
        "capacity (overrides kibana_capacity) and id (the ownerId; default \"kibana:<uuid>\" from\n"
        "GET /api/status).",
        value=(KibanaNode(url="http://localhost:5601"),),
    )  # fmt: skip
    #: The credentials of every node that does not set its own (applied to ``hosts`` at load).
    username: str | None = setting(
        "kibana.username", "str?", None, "Credentials for every node that does not set its own."
    )
    password: Secret | None = setting("kibana.password", "secret?", None, "", from_file=True)
    api_key: Secret | None = setting("kibana.api_key", "secret?", None, "", from_file=True)
    request_timeout_s: float = setting("kibana.request_timeout_s", "posfloat", 10, "")
    ca_certs: str | None = setting("kibana.ca_certs", "str?", None, "")
    verify_certs: bool = setting("kibana.verify_certs", "bool", True, "")


@dataclass(frozen=True)
class ConsoleSettings:
    """Who may use the controls of the console ``elastask serve`` shows (the page itself is read-only without)."""

    username: str = setting(
        "console.username", "str", "admin",
        "The console (elastask serve, /console): without a password it is read-only (no controls).\n"
        "With one, pause/resume, drain and requeue work after logging in as username/password.\n"
        "The password can also be read from console.password_file.",
    )  # fmt: skip
    password: Secret | None = setting("console.password", "secret?", None, "", from_file=True)
    read_only: bool = setting("console.read_only", "bool", False, "true: no controls even with a password.")


@dataclass(frozen=True)
class Settings:
    """Everything elastask reads from elastask.yaml and the environment."""

    source: str = "<defaults>"
    elasticsearch: ElasticsearchSettings = section(ElasticsearchSettings)
    index: str = setting("index", "str", ".kibana_task_manager", "Kibana's task index or alias.")
    redis_url: Secret = setting(
        "redis.url", "redis_url", "redis://localhost:6379/0",
        "Celery broker and the in-flight ledger. rediss:// for TLS, redis://:password@host:6379/0 for auth;\n"
        "Redis Sentinel: sentinel://h1:26379;sentinel://h2:26379 with master_name.",
    )  # fmt: skip
    redis_ca_certs: str | None = setting(
        "redis.ca_certs", "str?", None,
        "TLS (rediss://): the server's certificate is always verified, by the broker and the ledger alike;\n"
        "give the CA that signed it when it is not one the system trusts.",
    )  # fmt: skip
    redis_master_name: str | None = setting(
        "redis.master_name", "str?", None, "Redis Sentinel: the monitored master's name (sentinel monitor <name> ...)."
    )
    redis_sentinel_password: Secret | None = setting("redis.sentinel_password", "secret?", None, "")
    polling_interval_ms: int = setting(
        "polling_interval", "posint", 500,
        "How often (ms) beat fires the claim task while there is work: tasks due, or tasks in flight whose\n"
        "slots are about to free. Tasks due within the next interval (at most 1 s ahead) are claimed early\n"
        "and pushed at their runAt, so at 500 ms start drift stays in the tens of ms under load (measured:\n"
        "150 recurring 200 ms tasks every 5 s on 3 nodes, drift p99 under 0.5 s; at 3000 ms the same load\n"
        "fell behind, drift p50 10 s and growing). Cost: up to 2 engine searches/s while busy, whatever the\n"
        "number of Kibana nodes (Kibana's own pull: 2 searches/s per node). Lower it (200) for many short\n"
        "tasks; raise it only if the claim task cannot keep up (see docs/operations.md).",
    )  # fmt: skip
    idle_polling_interval_ms: int = setting(
        "idle_polling_interval", "posint", 3000,
        "While the index is quiet (nothing due, nothing in flight) the claim loop runs at most every\n"
        "idle_polling_interval ms, but always in time for the next task's runAt (it asks the engine for\n"
        "it in the same search), so at rest the engine sees one claim search per idle interval.\n"
        "Kibana does the same with 3000 ms while its load stays under 25 %.",
    )  # fmt: skip
    busy_polling_interval_ms: int = setting(
        "busy_polling_interval", "posint", 250,
        "While due tasks wait for slots (a cycle found more than it could claim, or its search came back\n"
        "full), the claim job keeps its lock for a refill session (up to 10 s): it reads in real time only\n"
        "the leases likely finished (timed by the shortest run seen per task type) and claims as soon as a\n"
        "slot is free, so a freed slot is refilled in about one claim cycle, not at the next poll. This is\n"
        "the longest it waits between two looks; the session needs a second worker process (a worker with\n"
        "one process never runs one). Set it to polling_interval or more to turn sessions off.",
    )  # fmt: skip
    retry_interval_ms: int = setting(
        "retry_interval", "posint", 5000,
        "How often (ms) beat fires the retry task that handles expired retryAt leases.",
    )  # fmt: skip
    kibana_capacity: int = setting(
        "kibana_capacity", "posint", 10,
        "Tasks running at once per Kibana node, in normal tasks (Kibana: 10 normal = 20 cost units).",
    )  # fmt: skip
    kibana: KibanaSettings = section(KibanaSettings)
    max_attempts: int = setting(
        "max_attempts", "posint", 3, "Runs of a task before a one-shot task is marked failed (Kibana's max_attempts)."
    )
    task_timeout_ms: int = setting(
        "task_timeout", "interval", "5m",
        "How long a run may take before its lease (retryAt) expires (Kibana's task timeout).",
    )  # fmt: skip
    claim_batch_size: int = setting("claim_batch_size", "posint", 1000, "Most due tasks read per claim cycle.")
    claim_lanes: int = setting(
        "claim_lanes", "posint", 1,
        "Claim paths that run at once (up to 16, and one per live worker), each over a disjoint share of the\n"
        "due tasks by task.partition (as Kibana's partitions; tasks without one go to the first), each with\n"
        "its own claim lock and refill session; the cap stays one ledger. 1: one claim path for every task.",
    )  # fmt: skip
    retry_delay_ms: int = setting(
        "retry_delay", "interval", "30s",
        "After a one-shot task's lease expires: wait retry_delay before the first retry, then a random\n"
        "delay up to min(max_retry_delay, 10 x retry_delay x 2^(attempts-2)) (Kibana: 30s, 5m, 10m ... 1h).",
    )  # fmt: skip
    max_retry_delay_ms: int = setting("max_retry_delay", "interval", "1h", "")
    node_failure_threshold: int = setting(
        "node_failure_threshold", "posint", 3,
        "A node whose dispatch jobs fail this many times in a row (every push of the job refused; a refused\n"
        "connection counts at once) is taken out of rotation, then probed with GET /api/status every\n"
        "node_probe_interval ms, in the background, until it answers: back in rotation at the next claim\n"
        "cycle. Counted once per job and once per outage: pushes still failing after it went out change nothing.",
    )  # fmt: skip
    node_probe_interval_ms: int = setting("node_probe_interval", "posint", 5000, "")
    log_format: str = setting(
        "log_format", "log_format", "text",
        "Log lines as readable text, or one JSON object per line (with task_id and owner_id bound).",
    )  # fmt: skip
    paused: tuple[str, ...] = setting(
        "paused", "pause_list", [],
        "What must stay paused whatever Redis holds (elastask pause / resume change the rest, for every\n"
        "worker): all, type:<task type> (prefix* too) or node:<ownerId, URL or id>. Nothing new is claimed\n"
        "or pushed for it; running tasks finish, due tasks wait and keep their attempts.",
    )  # fmt: skip
    console: ConsoleSettings = section(ConsoleSettings)
    #: ``task_types.<type>`` of elastask.yaml, as written there (task_types.py merges them).
    task_types: Mapping[str, TaskTypeRule] = setting(
        "task_types", "task_types", {},
        "Per task type, over the catalogue of Kibana's own types (elastask/catalogue/kibana_task_types.yaml):\n"
        "timeout, max_attempts, cost (tiny = 1, normal = 2, large = 4, extra-large = 10 units, as Kibana\n"
        "counts them; a cost above the biggest node's capacity is refused at load: its tasks could never\n"
        "run), priority (low, normal_long_running, normal or a number), max_concurrency (per Kibana node)\n"
        "and concurrency_group (types that share one limit). For example:\n"
        ' "alerting:.es-query":\n'
        "   timeout: 1m\n"
        "   cost: normal\n"
        ' "reports:generate":\n'
        "   timeout: 20m\n"
        "   max_attempts: 1\n"
        "   cost: extra-large\n"
        "   max_concurrency: 1",
    )  # fmt: skip
    #: Kibana's own task types (the shipped catalogue; empty in bare Settings(), as in unit tests).
    catalogue: Catalogue = field(default_factory=Catalogue)
    _rules: dict[str, TaskTypeSettings] = field(default_factory=dict, compare=False, repr=False)

    def for_type(self, task_type: str) -> TaskTypeSettings:
        """The effective rule of one task type: elastask.yaml over the catalogue over the defaults."""
        rule = self._rules.get(task_type)
        if rule is None:
            rule = self._rules[task_type] = effective_rule(
                task_type,
                self.task_types,
                self.catalogue,
                timeout_ms=self.task_timeout_ms,
                max_attempts=self.max_attempts,
            )
        return rule

    def known_types(self) -> list[str]:
        """Every task type (or ``prefix*`` pattern) elastask.yaml or the catalogue sets a rule for."""
        return sorted({*self.task_types, *self.catalogue.rules})

    def priority_by_type(self) -> dict[str, int]:
        """Per known type (or pattern) with a priority of its own: it (for the claim search's order)."""
        rules = {name: self.for_type(name).priority for name in self.known_types()}
        return {name: priority for name, priority in rules.items() if priority is not None}

    def concurrency_groups(self) -> dict[str, tuple[int, tuple[str, ...]]]:
        """Per concurrency group (types with a maxConcurrency, or sharing one): its limit per Kibana node
        (the smallest of its types') and its types."""
        groups: dict[str, tuple[int, tuple[str, ...]]] = {}
        for name in self.known_types():
            rule = self.for_type(name)
            if rule.max_concurrency is None or rule.concurrency_group is None:
                continue
            limit, types = groups.get(rule.concurrency_group, (rule.max_concurrency, ()))
            groups[rule.concurrency_group] = (min(limit, rule.max_concurrency), (*types, name))
        return groups

    def max_attempts_by_type(self) -> dict[str, int]:
        """Per known type (or pattern), its effective maximum attempts (for the claim search)."""
        return {name: self.for_type(name).max_attempts for name in self.known_types()}

    def redis_sentinels(self) -> list[tuple[str, int]]:
        """The sentinels' (host, port) when ``redis.url`` is ``sentinel://...``, else an empty list."""
        if not self.redis_url.reveal().startswith("sentinel://"):
            return []
        return [host_port(part) for part in self.redis_url.reveal().split(";") if part.strip()]

    def redis_master_password(self) -> str | None:
        """The Redis master's password, from the (first) sentinel URL's ``:password@``."""
        return urlsplit(self.redis_url.reveal().split(";")[0]).password

    def redis_tls(self) -> dict[str, Any]:
        """redis-py's TLS options for ``rediss://``: the certificate is always verified (against ca_certs)."""
        if not self.redis_url.reveal().startswith("rediss://"):
            return {}
        options: dict[str, Any] = {"ssl_cert_reqs": "required"}
        if self.redis_ca_certs:
            options["ssl_ca_certs"] = self.redis_ca_certs
        return options

    def capacity_units(self, node: KibanaNode) -> int:
        """A node's capacity in Kibana cost units (a normal task costs 2)."""
        return (node.capacity if node.capacity is not None else self.kibana_capacity) * COSTS["normal"]

    def biggest_capacity_units(self) -> int:
        """The capacity of the biggest configured node in cost units: no task costing more can ever run."""
        default = self.kibana_capacity * COSTS["normal"]
        return max((self.capacity_units(node) for node in self.kibana.hosts), default=default)
