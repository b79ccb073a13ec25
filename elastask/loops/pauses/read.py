"""What the loops may not claim or push for now: the pauses, read once per claim cycle and dispatch job."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime

from elastask.core.clock import epoch_ms
from elastask.core.pauses import PauseSet
from elastask.loops.pauses.kibana import watch_kibana_pause
from elastask.parts.nodes import Node
from elastask.parts.pauses import PauseStore
from elastask.runtime import Runtime

log = logging.getLogger(__name__)


_last_logged: list[str] = []


def read_pauses(rt: Runtime, now: datetime, ask: Sequence[Node] = ()) -> PauseSet:
    """What is paused now, for a claim cycle or a dispatch job; a change is logged once per process.
    ``ask``: the nodes Kibana's execution pause may be asked from, when it is this process's turn."""
    watch_kibana_pause(rt, ask)
    pauses = PauseStore(rt.redis, rt.settings.paused).read(epoch_ms(now))
    _recent[id(rt)] = (time.monotonic(), pauses)
    texts = _described(pauses)
    if texts != _last_logged:
        if texts:
            log.info("paused: %s (nothing new is claimed or pushed for it)", ", ".join(texts))
        elif _last_logged:
            log.info("nothing is paused any more")
        _last_logged[:] = texts
    return pauses


#: How old a read of the pauses a scheduled push step may use (the read of another step or job of
#: this process): a pause holds back every push that starts later than this after it.
STEP_PAUSES_MAX_AGE_S = 0.1
_recent: dict[int, tuple[float, PauseSet]] = {}


def recent_pauses(rt: Runtime, now: datetime, max_age_s: float = STEP_PAUSES_MAX_AGE_S) -> PauseSet:
    """The pauses for a scheduled push step: this process's last read if under ``max_age_s`` old, else read now."""
    seen = _recent.get(id(rt))
    if seen is not None and time.monotonic() - seen[0] < max_age_s:
        return seen[1]
    pauses = read_pauses(rt, now)
    _recent[id(rt)] = (time.monotonic(), pauses)
    return pauses


def _described(pauses: PauseSet) -> list[str]:
    return sorted(p.text + (" (Kibana's execution pause)" if p.source == "kibana" else "") for p in pauses.pauses)
