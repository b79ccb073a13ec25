"""What the loops may not claim or push for now: the pauses, read once per claim cycle and dispatch job."""

from __future__ import annotations

import logging
from datetime import datetime

from elastask.core.clock import epoch_ms
from elastask.core.pauses import PauseSet
from elastask.parts.pauses import PauseStore
from elastask.runtime import Runtime

log = logging.getLogger(__name__)

#: How old a read of the pauses a scheduled push step may use (the read of another step or job of
#: this process): a pause holds back every push that starts later than this after it.
STEP_PAUSES_MAX_AGE_S = 0.1


def read_pauses(rt: Runtime, now: datetime) -> PauseSet:
    """What is paused now, for a claim cycle or a dispatch job; a change is logged once per process."""
    pauses = PauseStore(rt.redis, rt.settings.paused, seen=rt.memory).read(epoch_ms(now))
    rt.memory.remember_read("pauses", pauses, rt.monotonic_ms())
    texts = _described(pauses)
    said_before = rt.memory.said.get("pauses", "")
    if rt.memory.say_once("pauses", ", ".join(texts)):
        if texts:
            log.info("paused: %s (nothing new is claimed or pushed for it)", ", ".join(texts))
        elif said_before:
            log.info("nothing is paused any more")
    return pauses


def recent_pauses(rt: Runtime, now: datetime, max_age_s: float = STEP_PAUSES_MAX_AGE_S) -> PauseSet:
    """The pauses for a scheduled push step: this process's last read if under ``max_age_s`` old, else read now."""
    seen = rt.memory.recent("pauses", max_age_s * 1000, rt.monotonic_ms())
    return seen if isinstance(seen, PauseSet) else read_pauses(rt, now)


def _described(pauses: PauseSet) -> list[str]:
    return sorted(p.text + (" (Kibana's execution pause)" if p.source == "kibana" else "") for p in pauses.pauses)
