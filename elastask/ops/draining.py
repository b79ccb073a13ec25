"""``elastask nodes drain`` / ``undrain``: take a Kibana node out of rotation for a restart, and back.

Draining a node pauses it (``node:<name>``, see core/pauses.py): no new pushes from every worker's next
claim cycle, a dispatch job already queued gives its tasks back. ``--wait`` then reconciles the node's
leases with the engine once a second until none is left: every run it had finished and Kibana wrote
its outcome, so a restart loses nothing and no lease has to run out.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from elastask.core.pauses import entry
from elastask.errors import ElastaskError
from elastask.loops.claim.reconcile import reconcile_ledger
from elastask.loops.claim.timing import pending_max_ms
from elastask.ops import pausing
from elastask.parts.nodes import Node
from elastask.runtime import Runtime

#: How long ``--wait`` waits for the ownerIds of nodes not known yet.
RESOLVE_WAIT_S = 4.0


def find_node(rt: Runtime, name: str) -> Node:
    """The configured node known as ``name`` (ownerId, URL or configured id); an error lists the known ones."""
    nodes, problems = rt.nodes.resolve(wait_s=RESOLVE_WAIT_S)
    for node in nodes:
        if name in node.names:
            return node
    known = ", ".join(f"{n.url} ({n.owner_id})" for n in nodes) or "none resolved"
    hint = f"; not resolved: {'; '.join(problems)}" if problems else ""
    raise ElastaskError(f"no configured Kibana node is called {name!r}: known nodes {known}{hint}")


def drain(rt: Runtime, name: str) -> Node:
    """Pause the node for every worker; returns it."""
    node = find_node(rt, name)
    pausing.pause(rt, [entry("node", name)])
    return node


def wait_until_empty(
    rt: Runtime,
    node: Node,
    timeout_s: float,
    progress: Callable[[int, int], None],
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Reconcile the node's leases with the engine every second until none is left (True) or the time is
    up (False); ``progress(in-flight units, leases)`` after each look."""
    deadline = time.monotonic() + timeout_s
    while True:
        view = rt.ledger.view([node.owner_id])
        reconcile_ledger(rt, view, pending_max_ms(rt.settings))
        leases = rt.ledger.leases([node.owner_id])
        used = rt.ledger.used_units([node.owner_id]).get(node.owner_id, 0)
        progress(used, len(leases))
        if not leases:
            return True
        if time.monotonic() >= deadline:
            return False
        sleep(1.0)


def undrain(rt: Runtime, name: str) -> list[str]:
    """Back in rotation: resume ``node:<name>``; returns what was resumed."""
    resumed, _ = pausing.resume(rt, [entry("node", name)])
    return resumed
