"""Kibana's own execution pause, honoured like ``elastask pause``.

Kibana (elastic/kibana PR #279122) can pause task execution for the whole deployment, or for some
task types: ``POST /internal/task_manager/execution/_pause`` stores it in one saved object, and each
node reads it every 5 s. Kibana's pull would then claim nothing for it; pushed tasks would still
run. So a watcher (``watch_kibana_pause``, a step the claim cycle takes explicitly) has one node
asked ``GET /internal/task_manager/execution/_status`` at most once per ``ASK_EVERY_MS`` across every
process (a Redis turn), on a background thread, and the
answer is kept in Redis (``keys.KIBANA_PAUSE``), where every claim cycle and dispatch job reads it
with the other pauses (source ``kibana``): nothing new is claimed or pushed for it, running tasks
finish, due tasks wait with their attempts. It is lifted in Kibana (``_resume``), not with
``elastask resume``.

A node without the route (an older Kibana: 404) has nothing to honour; one that refuses us
(401/403: the route needs a superuser) or gives no answer leaves what was known before, as Kibana's
own nodes keep their last known state when a read fails.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future

from elastask import keys
from elastask.errors import ElastaskError
from elastask.parts.kibana import ExecutionControl
from elastask.parts.nodes import Node
from elastask.parts.pauses import KibanaPauseState, PauseStore
from elastask.parts.redis_errors import redis_errors
from elastask.runtime import Runtime

log = logging.getLogger(__name__)

#: How often Kibana is asked (its own nodes read the state every 5 s: the default
#: ``xpack.task_manager.execution_control.poll_interval``).
ASK_EVERY_MS = 5000
#: How many nodes are tried, in turn, when one gives no answer.
NODES_TRIED = 3
#: How often a process looks whether it is its turn (most steps make no round trip).
LOOK_EVERY_MS = 1000
#: The watcher's name in the process's memory (its turns, what it said of a node).
WATCHER = "kibana-pause"


def watch_kibana_pause(rt: Runtime, nodes: Sequence[Node]) -> Future[object] | None:
    """The watcher's step: take the turn to ask Kibana (one Redis round trip, at most once per
    ``LOOK_EVERY_MS`` in a process) and, if won, ask in the background (the question's future)."""
    if not nodes or not rt.memory.turn(WATCHER, LOOK_EVERY_MS, rt.monotonic_ms()):
        return None
    with redis_errors("taking the turn to ask Kibana for its execution pause"):
        turn = rt.redis.set(keys.KIBANA_PAUSE_TURN, 1, nx=True, px=ASK_EVERY_MS)
    return rt.nodes.submit(_ask_quietly, rt, list(nodes[:NODES_TRIED])) if turn else None


def _ask_quietly(rt: Runtime, nodes: Sequence[Node]) -> None:
    try:
        ask_kibana(rt, nodes)
    except ElastaskError as e:  # a background thread: the pause known before still holds
        log.warning("reading Kibana's execution pause failed: %s", e)
    except Exception:
        log.exception("reading Kibana's execution pause failed")


def ask_kibana(rt: Runtime, nodes: Sequence[Node]) -> KibanaPauseState | None:
    """Ask the nodes in turn until one answers; record what it says. Returns the state recorded."""
    for node in nodes:
        answer = rt.kibana.execution_control(node.config)
        if answer is not None:
            return _record(rt, node, answer)
    return None


def _record(rt: Runtime, node: Node, answer: ExecutionControl) -> KibanaPauseState:
    store = PauseStore(rt.redis)
    known = store.kibana_state() if answer.answer == "refused" else None
    if not answer.readable:
        if rt.memory.say_once(f"{WATCHER}:{node.url}", answer.detail):
            (log.info if answer.answer == "absent" else log.warning)("%s", answer.detail)
    else:
        rt.memory.forget_said(f"{WATCHER}:{node.url}")
    if answer.answer == "refused" and known is not None:  # keep the pause known before: never lifted by a refusal
        paused, types, updated_at, updated_by = known.paused, known.paused_types, known.updated_at, known.updated_by
    else:
        paused, types = answer.paused, answer.paused_types
        updated_at, updated_by = answer.updated_at, answer.updated_by
    state = KibanaPauseState(
        readable=answer.readable,
        paused=paused,
        paused_types=tuple(types),
        updated_at=updated_at,
        updated_by=updated_by,
        node_url=node.url,
        read_ms=rt.ledger.now_ms(),
        detail=answer.detail,
    )
    store.record_kibana(state)
    return state
