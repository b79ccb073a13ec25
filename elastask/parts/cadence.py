"""The claim cadence: a cycle every ``polling_interval`` while there is work, fewer while the index is quiet.

Kibana polls every 500 ms and stretches to 3 s while its load stays under 25 % (elastic/kibana
PR #200260). The dispatcher can do better because it sees the whole schedule: a quiet cycle (nothing
due, nothing in flight) also learns the earliest ``runAt`` of any idle task, and the claim loop then
rests until the earlier of ``idle_polling_interval`` and that ``runAt`` (less the claim-ahead
window), so a quiet index costs one search per idle interval whatever the number of nodes, and a
task due soon is still claimed ahead and pushed at its ``runAt``. Beat keeps firing every
``polling_interval``; a claim job fired while the loop rests costs one Redis read. Anything that
makes a task due at once (the retry loop, ``elastask tasks requeue``, ``elastask schedule``) wakes it.

While tasks wait for slots (a cycle found more due than it could claim, or its search came back
full), slots free as runs end,
not on beat's schedule: the claim job then sends one more claim job ``busy_polling_interval``
later (at most one pending across every process), so a freed slot is refilled within about that
long instead of a whole ``polling_interval``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import redis

from elastask import keys
from elastask.core.lanes import MAX_LANES
from elastask.parts.redis_errors import redis_errors


def rest_until(now: datetime, *, next_run_at: datetime | None, idle_ms: int, lookahead_ms: int) -> datetime:
    """When a quiet claim loop should run again: after the idle interval, or in time for the next runAt."""
    wake = now + timedelta(milliseconds=idle_ms)
    if next_run_at is not None:
        wake = min(wake, next_run_at - timedelta(milliseconds=lookahead_ms))
    return max(now, wake)


class Cadence:
    """Whether the claim loop (one claim lane of it: core/lanes.py) rests; one Redis key that expires when
    the rest ends."""

    def __init__(self, client: redis.Redis, lane: int = 0) -> None:
        self.client = client
        self.lane = lane

    def resting(self) -> bool:
        """True while a quiet cycle's rest lasts (beat's claim jobs return at once)."""
        with redis_errors("reading the claim loop's rest"):
            return bool(self.client.exists(keys.claim_resting(self.lane)))

    def rest(self, now: datetime, until: datetime) -> None:
        """Rest until ``until`` (nothing happens if that is now or past)."""
        rest_ms = int((until - now).total_seconds() * 1000)
        if rest_ms <= 0:
            return
        with redis_errors("resting the claim loop"):
            self.client.set(keys.claim_resting(self.lane), 1, px=rest_ms)

    def follow_up(self, busy_ms: int) -> bool:
        """True at most once per ``busy_ms`` across every process: schedule one more cycle that soon."""
        with redis_errors("scheduling a follow-up claim cycle"):
            return bool(self.client.set(keys.claim_follow_up(self.lane), 1, nx=True, px=busy_ms))

    def wake(self) -> None:
        """Something became due now: the next claim job of every lane runs a full cycle."""
        with redis_errors("waking the claim loop"):
            self.client.delete(*(keys.claim_resting(lane) for lane in range(MAX_LANES)))
