"""Kibana interval strings (``10s``, ``5m``, ``1h``, ``1d``) and ISO-8601 dates, both ways. Pure."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_INTERVAL = re.compile(r"^(\d+)([smhd])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
#: The longest interval accepted (100 years): anything longer cannot be added to a date.
MAX_INTERVAL_MS = 100 * 365 * 86_400_000
#: The years a task date may have: a lease or an interval added to it, or taken from it, must still be a date.
MIN_YEAR = 1000
MAX_YEAR = 9000


def parse_interval_ms(text: str) -> int:
    """Milliseconds in a Kibana interval string; raises ValueError for anything else."""
    match = _INTERVAL.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"expected an interval such as 10s, 5m, 1h or 1d, got {text!r}")
    value = int(match.group(1)) * _UNIT_MS[match.group(2)]
    if value <= 0:
        raise ValueError(f"expected a positive interval, got {text!r}")
    if value > MAX_INTERVAL_MS:
        raise ValueError(f"expected an interval of at most 100 years, got {text!r}")
    return value


def parse_date(text: object) -> datetime:
    """A timezone-aware UTC datetime from an ISO-8601 string as Kibana writes it.

    Total: any other value, or a date outside the years MIN_YEAR to MAX_YEAR once in UTC, raises
    ValueError and nothing else (``0001-01-01T00:00:00+01:00`` is a date the engine stores whose
    UTC form is before the year 1).
    """
    if not isinstance(text, str) or "T" not in text:
        raise ValueError(f"expected an ISO-8601 date such as 2024-05-01T10:00:00.000Z, got {text!r:.80}")
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        # Elasticsearch reads a date without an offset as UTC; so do we.
        utc = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError) as e:
        raise ValueError(f"expected an ISO-8601 date such as 2024-05-01T10:00:00.000Z, got {text!r:.80} ({e})") from e
    if not MIN_YEAR <= utc.year <= MAX_YEAR:
        raise ValueError(f"expected a date from the year {MIN_YEAR} to {MAX_YEAR} (UTC), got {text!r:.80}")
    return utc


def format_date(moment: datetime) -> str:
    """The ISO-8601 form JavaScript's ``Date.toISOString()`` writes: milliseconds, ``Z``."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def ms(delta_ms: int | float) -> timedelta:
    """A timedelta of that many milliseconds."""
    return timedelta(milliseconds=delta_ms)
