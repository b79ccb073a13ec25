"""Celery settings of this deployment, read by ``celery -A elastask worker|beat``.

elastask's defaults for a reliable Redis broker (late acks, reject on worker loss, prefetch 1,
visibility timeout, connection retry, no results) are imported below with the reason for each in
elastask/entry/celery_defaults.py. Broker URL, queues and the beat schedule come from elastask.yaml
(``redis.url``, ``kibana.hosts``, ``polling_interval``, ``retry_interval``); set them there, not here.
Override any other Celery setting below.
"""

from elastask.entry.celery_defaults import *  # noqa: F403

# Example: a longer visibility timeout for very slow Kibana nodes.
# broker_transport_options = {"visibility_timeout": 7200}

# Example: task events on from the start, not only while Flower runs (it turns them on itself).
# worker_send_task_events = True
