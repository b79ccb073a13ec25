"""Redis's clock as a process reads it (``Ledger.now_ms``): one TIME per CLOCK_REUSE_MS, moved on between."""

from __future__ import annotations

from collections.abc import Callable

import fakeredis
import pytest
import redis

from elastask.errors import LedgerError
from elastask.parts.ledger import CLOCK_REUSE_MS, CLOCK_TIGHT_READ_MS, Ledger


class CountedTime(fakeredis.FakeRedis):
    """A Redis whose clock stands at a set time and counts how often it was read."""

    redis_ms = 1_800_000_000_000
    reads = 0
    down = False
    #: Called with each read: a test's clock moved on while the answer travelled.
    on_read: Callable[[], None] = staticmethod(lambda: None)

    def time(self) -> tuple[int, int]:  # type: ignore[override]
        if self.down:
            raise redis.exceptions.ConnectionError("Redis is down")
        self.reads += 1
        self.on_read()
        return self.redis_ms // 1000, (self.redis_ms % 1000) * 1000


def test_one_read_of_redis_clock_serves_a_while_moved_on_by_this_process_clock() -> None:
    # Given a process whose monotonic clock the test moves, and a Redis whose clock is 1.8e12 ms.
    mono = [5_000.0]
    client = CountedTime()
    ledger = Ledger(client, monotonic=lambda: mono[0])
    # When it reads the clock twice within CLOCK_REUSE_MS.
    first = ledger.now_ms()
    mono[0] += 40
    second = ledger.now_ms()
    # Then Redis was asked once, and the second read moved on by the 40 ms this process measured.
    assert client.reads == 1 and first == client.redis_ms and second == first + 40
    # And once CLOCK_REUSE_MS passed, Redis is asked again: its clock, not this process's, decides
    # (here Redis's clock stood still; a process whose own clock ran fast is corrected).
    mono[0] += CLOCK_REUSE_MS
    assert ledger.now_ms() == client.redis_ms and client.reads == 2


def test_a_clock_read_when_redis_is_down_is_a_ledger_error_once_the_last_read_is_too_old() -> None:
    mono = [0.0]
    client = CountedTime()
    ledger = Ledger(client, monotonic=lambda: mono[0])
    ledger.now_ms()
    client.down = True
    mono[0] += CLOCK_REUSE_MS
    with pytest.raises(LedgerError):
        ledger.now_ms()


def test_a_read_redis_answered_late_is_never_ahead_and_not_kept() -> None:
    # Given a loaded machine: Redis's answer to TIME arrives 8 ms after the question, and Redis
    # read its clock at the end of that (the worst case: the question waited, not the answer).
    mono = [1_000.0]
    client = CountedTime()

    def answered_late() -> None:
        mono[0] += 8

    client.on_read = answered_late
    ledger = Ledger(client, monotonic=lambda: mono[0])
    # When the process reads the clock, and again at once.
    assert ledger.now_ms() == client.redis_ms
    # Then the second read asked Redis again: a reading that may be 8 ms behind is not kept for the
    # next 250 ms of decisions (pushes at their runAt would wait for it), and never counted from the
    # middle of the round trip, which would put it 4 ms ahead (a push before its runAt).
    assert ledger.now_ms() == client.redis_ms and client.reads == 2
    # And a read whose answer came within CLOCK_TIGHT_READ_MS is kept, counted from its answer.
    client.on_read = lambda: mono.__setitem__(0, mono[0] + CLOCK_TIGHT_READ_MS)
    assert ledger.now_ms() == client.redis_ms and client.reads == 3
    assert ledger.now_ms() == client.redis_ms and client.reads == 3
