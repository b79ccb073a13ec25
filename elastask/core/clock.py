"""Time as the dispatcher counts it: epoch milliseconds of a moment, and a monotonic clock in ms.

Lease decisions use one clock, Redis's ``TIME`` (``Runtime.now()``); these helpers only convert.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime (the ledger's and the usage buckets' unit), exact:
    the milliseconds ``format_date`` writes (no float rounding: a claim's ``startedAt`` is matched by it)."""
    return (moment - _EPOCH) // _MS


def monotonic_ms() -> float:
    """A monotonic clock in ms: for how long this process waited or worked, never for leases."""
    return time.monotonic() * 1000
