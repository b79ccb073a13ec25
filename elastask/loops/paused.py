"""What the loops may not claim or push for now: the pauses, read once per claim cycle and dispatch job."""

from __future__ import annotations

import logging
from datetime import datetime

from elastask.core.clock import epoch_ms
from elastask.core.pauses import PauseSet
from elastask.parts.pauses import PauseStore
from elastask.runtime import Runtime

log = logging.getLogger(__name__)


_last_logged: list[str] = []


def read_pauses(rt: Runtime, now: datetime) -> PauseSet:
    """What is paused now, for a claim cycle or a dispatch job; a change is logged once per process."""
    pauses = PauseStore(rt.redis, rt.settings.paused).read(epoch_ms(now))
    texts = sorted(p.text for p in pauses.pauses)
    if texts != _last_logged:
        if texts:
            log.info("paused: %s (nothing new is claimed or pushed for it)", ", ".join(texts))
        elif _last_logged:
            log.info("nothing is paused any more")
        _last_logged[:] = texts
    return pauses
