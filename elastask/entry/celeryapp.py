"""The Celery app ``elastask``: broker, queues and beat schedule from elastask.yaml."""

from __future__ import annotations

import importlib
import logging
import ssl
import sys
import threading
from datetime import timedelta
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from celery import Celery, bootsteps, signals
from kombu.entity import Queue

from elastask import keys
from elastask.config import Settings, load_settings
from elastask.entry import celery_defaults as celery_settings
from elastask.entry.heartbeat import Heartbeat, WorkerLife
from elastask.entry.redis_transport import transport_for
from elastask.errors import ConfigError
from elastask.parts.redis_client import broker_transport_options, build_redis

if TYPE_CHECKING:
    from elastask.runtime import Runtime

log = logging.getLogger(__name__)


def _settings_of(module: ModuleType) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(module).items()
        if not key.startswith("_") and key.islower() and not isinstance(value, ModuleType) and not callable(value)
    }


def site_overrides() -> dict[str, Any]:
    """Settings from a ``celeryconfig`` module on the path (the project's top-level file), if any."""
    try:
        module = importlib.import_module("celeryconfig")
    except ImportError:
        return {}
    return _settings_of(module)


def create_app(settings: Settings) -> Celery:
    """A Celery app configured from ``settings`` (plus celeryconfig.py overrides)."""
    # PromptAMQP: a worker that lost Redis reconnects within a second of its return (broker_connection.py).
    app = Celery(
        "elastask",
        set_as_current=True,
        include=["elastask.entry.tasks"],
        amqp="elastask.entry.broker_connection:PromptAMQP",
    )
    app.conf.update(_settings_of(celery_settings))
    app.conf.update(
        broker_url=settings.redis_url.reveal(),
        # kombu's Redis transport with a fix that keeps the worker alive when Redis restarts under it.
        broker_transport=transport_for(settings.redis_url.reveal()),
        # The claim and retry loops have queues of their own so a backlog of dispatch jobs never
        # delays them; each Kibana node's dispatch jobs get a queue named after its ownerId.
        task_queues=[Queue(keys.CLAIM_QUEUE), Queue(keys.RETRY_QUEUE), Queue("celery")],
        task_routes={"elastask.claim": {"queue": keys.CLAIM_QUEUE}, "elastask.retry": {"queue": keys.RETRY_QUEUE}},
        beat_schedule=beat_schedule(settings),
    )
    if settings.redis_url.reveal().startswith("rediss://"):
        # Without broker_use_ssl, kombu connects to rediss:// without checking the certificate.
        app.conf.broker_use_ssl = broker_ssl(settings)
    app.conf.update(site_overrides())
    # After celeryconfig.py: a deployment's own transport options keep the Sentinel master name.
    app.conf.broker_transport_options = broker_transport_options(settings, app.conf.broker_transport_options)
    app.conf.elastask_settings = settings
    app.conf.elastask_pinned = False
    app.elastask_process = WorkerProcess()
    app.steps["consumer"].add(NodeQueues)
    app.steps["consumer"].add(Heartbeat)
    return app


def broker_ssl(settings: Settings) -> dict[str, Any]:
    """kombu's TLS options for a ``rediss://`` broker: the certificate is verified, against redis.ca_certs."""
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_ca_certs:
        options["ssl_ca_certs"] = settings.redis_ca_certs
    return options


def beat_schedule(settings: Settings) -> dict[str, Any]:
    """The claim and retry loops; a job not started within two intervals is dropped (a newer one follows)."""
    return {
        "elastask-claim": {
            "task": "elastask.claim",
            "schedule": timedelta(milliseconds=settings.polling_interval_ms),
            "options": {"queue": keys.CLAIM_QUEUE, "expires": max(1.0, 2 * settings.polling_interval_ms / 1000)},
        },
        "elastask-retry": {
            "task": "elastask.retry",
            "schedule": timedelta(milliseconds=settings.retry_interval_ms),
            "options": {"queue": keys.RETRY_QUEUE, "expires": max(1.0, 2 * settings.retry_interval_ms / 1000)},
        },
    }


class WorkerProcess:
    """What this process is in a Celery worker, kept on its app (``process_of``) as Celery keeps its own
    state: the pool's size and the worker's life in Redis (set in the main process before the pool
    forks: the children inherit them), and this process's runtime (built after the fork)."""

    def __init__(self) -> None:
        self.pool_size: int | None = None
        self.life = WorkerLife()
        #: (the pid it was built in, the runtime): a forked child builds its own.
        self.runtime: tuple[int, Runtime] | None = None


def process_of(app: Celery) -> WorkerProcess:
    process: WorkerProcess = app.elastask_process
    return process


@signals.worker_init.connect
def _remember_pool_size(sender: Any = None, **_kwargs: Any) -> None:
    concurrency = getattr(sender, "concurrency", None)
    process_of(sender.app).pool_size = concurrency if isinstance(concurrency, int) else None


@signals.after_setup_logger.connect
def _setup_logging(logger: Any, **_kwargs: Any) -> None:
    from elastask import logs

    logs.configure(logger, get_app().conf.elastask_settings.log_format)


@signals.worker_ready.connect
@signals.beat_init.connect
def _log_settings_advice(**_kwargs: Any) -> None:
    # Once per worker or beat, at start: settings known to fall behind or to run unsafely.
    from elastask.core.advice import settings_advice

    for advice in settings_advice(get_app().conf.elastask_settings):
        log.warning("%s", advice)


@signals.worker_ready.connect
def _log_kibana_setup(**_kwargs: Any) -> None:
    # Once per worker, at start, in the background (a node that does not answer must not delay it):
    # Kibana nodes not set up for push, each with the kibana.yml line that fixes it.
    threading.Thread(target=log_kibana_setup, args=(get_app().conf.elastask_settings,), daemon=True).start()


def log_kibana_setup(settings: Settings) -> None:
    """Log a warning per finding of every node's setup for push (see ``elastask check``)."""
    from datetime import UTC, datetime

    from elastask.ops.checks import kibana_setup_problems
    from elastask.runtime import build_runtime

    rt = build_runtime(settings)
    try:
        for node in settings.kibana.hosts:
            for finding in kibana_setup_problems(settings, rt, node, datetime.now(UTC)):
                log.warning("Kibana %s: %s; fix: %s", node.url, finding.detail, finding.fix)
    except Exception as e:  # never let the check stop a worker
        log.warning("could not check the Kibana nodes' setup for push: %s", e)
    finally:
        rt.close()


@signals.worker_shutting_down.connect
def _mark_shutting_down(sender: Any = None, **_kwargs: Any) -> None:
    # In the worker's main process, on SIGTERM/SIGINT: its children's refill sessions see this at their
    # next look and end, freeing the claim lock at once (the main process waits for running jobs).
    hostname = str(sender or "")
    if not hostname:
        return
    try:
        client = build_redis(get_app().conf.elastask_settings, socket_timeout_s=2)
        client.set(keys.shutting_down(hostname), 1, px=120_000)
        client.close()
    except Exception as e:  # never let this stop the shutdown
        log.warning("could not tell this worker's refill sessions to end (they end within 10 s): %s", e)


@signals.celeryd_after_setup.connect
def _note_pinned_queues(sender: Any, instance: Any, **_kwargs: Any) -> None:
    # After -Q is applied: a worker started with -Q consumes exactly those queues (pinned);
    # a plain worker also consumes every configured node's dispatch queue (NodeQueues below).
    # (Celery keeps the -Q selection in Queues._consume_from; None means "no -Q".)
    instance.app.conf.elastask_pinned = getattr(instance.app.amqp.queues, "_consume_from", None) is not None


class NodeQueues(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consume the dispatch queue of every configured Kibana node, and of nodes that appear later.

    Refreshed every second from the ownerIds known without asking the nodes (configured ``id``, or
    cached in Redis by whoever learned them): the consumer's timer never waits on a Kibana node. At
    start, nodes not yet known are asked all at once, for at most half a second.
    """

    requires: ClassVar[set[str]] = {"celery.worker.consumer.tasks:Tasks"}
    REFRESH_S = 1.0
    START_WAIT_S = 0.5

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_ref: Any = None
        self.registry: Any = None

    def start(self, consumer: Any) -> None:
        if consumer.app.conf.elastask_pinned:
            return
        self.registry = node_registry(consumer.app.conf.elastask_settings)
        try:
            # Ask every unknown node at once and wait for the answers a moment (at most START_WAIT_S): nodes
            # that answer have their queues consumed from the start, so the first dispatch jobs do not
            # wait for the next refresh; the refreshes pick up the later answers.
            self.registry.resolve(wait_s=self.START_WAIT_S)
        except Exception as e:  # never let queue discovery stop the worker
            log.warning("could not look up the Kibana nodes' ownerIds (will retry): %s", e)
        self.refresh(consumer)
        self.timer_ref = consumer.timer.call_repeatedly(self.REFRESH_S, self.refresh, (consumer,), priority=10)

    def refresh(self, consumer: Any) -> None:
        try:
            names = self.registry.queue_names()
        except Exception as e:  # never let queue discovery stop the worker
            log.warning("could not list the Kibana nodes' dispatch queues (will retry): %s", e)
            return
        for name in names:
            if not consumer.task_consumer.consuming_from(name):
                consumer.add_task_queue(name)

    def stop(self, consumer: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
        if self.registry is not None:
            self.registry.close()
            self.registry.redis.close()
            self.registry.kibana.close()


def node_registry(settings: Settings) -> Any:
    """A node registry of its own for the consumer (its Redis client never waits more than 5 s)."""
    from elastask.parts.kibana import KibanaClient
    from elastask.parts.nodes import NodeRegistry

    return NodeRegistry(settings, build_redis(settings, socket_timeout_s=5), KibanaClient(settings.kibana))


@cache
def get_app() -> Celery:
    """The process's app, built on first use; a bad config exits with one line naming file and key."""
    try:
        settings = load_settings()
    except ConfigError as e:
        print(f"elastask: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return create_app(settings)
