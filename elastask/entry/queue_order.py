"""The order a worker reads its queues in: the claim and retry loops first, then the nodes in turn.

kombu's Redis transport reads a worker's queues with one ``BRPOP`` over all of them, which pops
from the first non-empty queue in the order given. Its default order is round robin: a queue just
read moves to the back. With a dispatch queue per Kibana node, that put the claim loop behind every
node's queue (100 nodes: a claim cycle waited for up to 100 dispatch jobs, seconds under load).
Here the loop queues always come first and the node queues keep kombu's round robin among
themselves, so no node's queue starves another's. Set as ``queue_order_strategy`` in
``broker_transport_options`` (elastask/celery_settings.py).
"""

from __future__ import annotations

from kombu.utils.scheduling import round_robin_cycle

from elastask import keys

LOOP_QUEUES = frozenset({keys.CLAIM_QUEUE, keys.RETRY_QUEUE})


class LoopsFirst(round_robin_cycle):
    """kombu's round robin, with the claim and retry queues always read first."""

    def consume(self, n: int) -> list[str]:
        queues: list[str] = list(self.items[:n])
        return [q for q in queues if q in LOOP_QUEUES] + [q for q in queues if q not in LOOP_QUEUES]
