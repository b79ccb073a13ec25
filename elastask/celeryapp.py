"""The Celery app ``elastask``: broker, queues and beat schedule from elastask.yaml."""

from __future__ import annotations

import importlib
import logging
import sys
from functools import cache
from types import ModuleType
from typing import Any

from celery import Celery

from elastask import celery_settings
from elastask.config import Settings, load_settings
from elastask.errors import ConfigError

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
    app = Celery("elastask", set_as_current=True)
    app.conf.update(_settings_of(celery_settings))
    app.conf.update(broker_url=settings.redis_url.reveal())
    app.conf.update(site_overrides())
    app.conf.elastask_settings = settings
    return app


@cache
def get_app() -> Celery:
    """The process's app, built on first use; a bad config exits with one line naming file and key."""
    try:
        settings = load_settings()
    except ConfigError as e:
        print(f"elastask: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return create_app(settings)
