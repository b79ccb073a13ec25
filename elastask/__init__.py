"""elastask: push Kibana Task Manager tasks to Kibana nodes from a Celery dispatcher.

``celery -A elastask worker|beat`` finds the Celery app as ``elastask.app``; it is built on first
access, from elastask.yaml and ``ELASTASK_*`` variables, so importing elastask's pure modules never
reads configuration or touches the network.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.8.8"


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from elastask.entry.celeryapp import get_app

        return get_app()
    raise AttributeError(f"module 'elastask' has no attribute {name!r}")
