"""The claim cadence: when a quiet claim loop may rest, and the Redis key that holds the rest."""

from __future__ import annotations

from datetime import timedelta

import fakeredis

from elastask.core import queries
from elastask.parts.cadence import Cadence, rest_until
from tests.unit.helpers import NOW


def test_a_quiet_index_with_no_later_task_rests_for_the_idle_interval() -> None:
    assert rest_until(NOW, next_run_at=None, idle_ms=3000, lookahead_ms=500) == NOW + timedelta(seconds=3)


def test_a_task_due_before_the_idle_interval_ends_wakes_the_loop_in_time_to_claim_it_ahead() -> None:
    # Due in 1.2 s, claimed up to 0.5 s ahead: the loop runs again 0.7 s from now, not 3 s.
    due = NOW + timedelta(milliseconds=1200)
    assert rest_until(NOW, next_run_at=due, idle_ms=3000, lookahead_ms=500) == NOW + timedelta(milliseconds=700)


def test_a_task_due_within_the_lookahead_means_no_rest_at_all() -> None:
    due = NOW + timedelta(milliseconds=200)
    assert rest_until(NOW, next_run_at=due, idle_ms=3000, lookahead_ms=500) == NOW


def test_a_task_due_after_the_idle_interval_does_not_stretch_the_rest() -> None:
    due = NOW + timedelta(minutes=5)
    assert rest_until(NOW, next_run_at=due, idle_ms=3000, lookahead_ms=500) == NOW + timedelta(seconds=3)


def test_the_rest_expires_on_its_own_and_a_wake_ends_it_early() -> None:
    client = fakeredis.FakeRedis()
    cadence = Cadence(client)
    assert not cadence.resting()
    cadence.rest(NOW, NOW + timedelta(seconds=3))
    assert cadence.resting()
    assert 0 < client.pttl("elastask:claim:resting") <= 3000
    cadence.wake()
    assert not cadence.resting()


def test_a_rest_that_ends_now_or_earlier_is_no_rest() -> None:
    cadence = Cadence(fakeredis.FakeRedis())
    cadence.rest(NOW, NOW)
    assert not cadence.resting()


def test_the_due_search_asks_for_the_next_run_only_when_told_and_reads_it_back() -> None:
    plain = queries.due_tasks(NOW, size=10, default_max_attempts=3, max_attempts_by_type={})
    assert "aggs" not in plain
    body = queries.due_tasks(
        NOW, size=10, default_max_attempts=3, max_attempts_by_type={}, next_run_after=NOW + timedelta(seconds=1)
    )
    later = body["aggs"]["later"]["aggs"]["idle"]
    assert later["aggs"]["next_run_at"] == {"min": {"field": "task.runAt"}}
    assert {"range": {"task.runAt": {"gt": "2026-11-29T12:00:01.000Z"}}} in later["filter"]["bool"]["filter"]
    answer = {"aggregations": {"later": {"idle": {"next_run_at": {"value": 1_700_000_000_123.0}}}}}
    assert queries.next_run_at_ms(answer) == 1_700_000_000_123
    assert queries.next_run_at_ms({"aggregations": {"later": {"idle": {"next_run_at": {"value": None}}}}}) is None
    assert queries.next_run_at_ms({}) is None


def test_at_most_one_follow_up_cycle_is_scheduled_per_busy_interval() -> None:
    client = fakeredis.FakeRedis()
    cadence = Cadence(client)
    assert cadence.follow_up(100)
    assert not cadence.follow_up(100)  # another process's busy cycle: one follow-up is enough
    assert 0 < client.pttl("elastask:claim:follow-up") <= 100
