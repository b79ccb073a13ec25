"""The one place Redis clients are built: a plain URL, TLS (``rediss://``, always verified), or Sentinel.

With Sentinel (``redis.url: sentinel://h1:26379;sentinel://h2:26379`` and ``redis.master_name``),
redis-py asks the sentinels for the current master and follows a failover by itself; the Celery
broker does the same through kombu's sentinel transport (``celeryapp.create_app``).
"""

from __future__ import annotations

from typing import Any

import redis
from redis.sentinel import Sentinel

from elastask.config import Settings


def build_redis(settings: Settings, *, socket_timeout_s: float = 10.0) -> redis.Redis:
    """A client of the Redis master that holds the ledger, locks and metrics."""
    options: dict[str, Any] = {"socket_timeout": socket_timeout_s, "socket_connect_timeout": 5}
    sentinels = settings.redis_sentinels()
    if not sentinels:
        return redis.Redis.from_url(settings.redis_url.reveal(), **options, **settings.redis_tls())
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 5}
    if settings.redis_sentinel_password is not None:
        sentinel_kwargs["password"] = settings.redis_sentinel_password.reveal()
    password = settings.redis_master_password()
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, password=password)  # type: ignore[no-untyped-call]
    assert settings.redis_master_name is not None  # checked when the settings were loaded
    master: redis.Redis = sentinel.master_for(settings.redis_master_name, **options)  # type: ignore[no-untyped-call]
    return master


def broker_transport_options(settings: Settings, defaults: dict[str, Any]) -> dict[str, Any]:
    """kombu's transport options: elastask's defaults, plus the master name and sentinel auth with Sentinel."""
    options = dict(defaults)
    if settings.redis_sentinels():
        options["master_name"] = settings.redis_master_name
        if settings.redis_sentinel_password is not None:
            options["sentinel_kwargs"] = {"password": settings.redis_sentinel_password.reveal()}
    return options
