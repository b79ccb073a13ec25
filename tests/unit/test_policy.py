"""Pure decisions: assignment by free capacity, claim/release fields, expiry outcomes, backoff."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from elastask.core import policy
from elastask.core.documents import TaskDocument, new_task
from elastask.core.intervals import parse_date

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def task(name: str, **changes: object) -> TaskDocument:
    return new_task(name, "sample", now=NOW).with_changes(**changes)


def test_given_free_units_when_assigning_then_each_task_goes_to_the_node_with_most_room() -> None:
    tasks = [task(f"t{i}") for i in range(5)]
    result = policy.assign(tasks, {"a": 4, "b": 6, "c": 0}, lambda _t: 2)
    owners = [a.owner_id for a in result]
    assert owners == ["b", "a", "b", "a", "b"]
    assert all(a.cost == 2 for a in result)


def test_assignment_never_exceeds_free_capacity_and_stops_at_the_first_misfit() -> None:
    tasks = [task("small"), task("big").with_changes(task_type="big"), task("small2")]
    costs = {"sample": 1, "big": 10}
    result = policy.assign(tasks, {"a": 3, "b": 2}, lambda t: costs[t])
    assert [a.task.id for a in result] == ["task:small"]  # big fits nowhere: stop, keep priority order
    total = policy.assign([task(f"t{i}") for i in range(20)], {"a": 5, "b": 4}, lambda _t: 2)
    used = {o: sum(a.cost for a in total if a.owner_id == o) for o in ("a", "b")}
    assert used["a"] <= 5 and used["b"] <= 4 and len(total) == 4


def test_a_retried_task_avoids_the_node_its_lease_ran_out_on() -> None:
    retried = task("r", attempts=1, owner_id="a")
    fresh = task("f", owner_id="a")
    assert policy.assign([retried], {"a": 20, "b": 2}, lambda _t: 2)[0].owner_id == "b"
    assert policy.assign([fresh], {"a": 20, "b": 2}, lambda _t: 2)[0].owner_id == "a"
    assert policy.assign([retried], {"a": 20, "b": 0}, lambda _t: 2)[0].owner_id == "a"  # no room elsewhere


def test_claim_fields_are_kibanas_mark_task_as_running() -> None:
    one_shot = task("o", attempts=1, run_at=NOW - timedelta(seconds=5))
    fields = policy.claim_fields(one_shot, "kibana:x", NOW, timeout_ms=300_000)
    assert fields["status"] == "running" and fields["ownerId"] == "kibana:x"
    assert fields["attempts"] == 2
    assert parse_date(fields["startedAt"]) == NOW
    # Kibana's lease (the timeout) plus the dispatch slack: a tenth of it, at most 5 s.
    assert parse_date(fields["retryAt"]) == NOW + timedelta(minutes=5, seconds=5)
    assert parse_date(fields["scheduledAt"]) == one_shot.run_at
    recurring = new_task("r", "sample", now=NOW, interval="1h")
    assert parse_date(policy.claim_fields(recurring, "k", NOW, 300_000)["retryAt"]) == NOW + timedelta(
        hours=1, seconds=5
    )
    short = policy.claim_fields(one_shot, "k", NOW, timeout_ms=4000)  # the slack is at least 1 s
    assert parse_date(short["retryAt"]) == NOW + timedelta(seconds=5)


def test_release_gives_the_attempt_back() -> None:
    fields = policy.release_fields_for(3)
    assert fields == {"status": "idle", "ownerId": None, "startedAt": None, "retryAt": None, "attempts": 2}
    assert policy.release_fields_for(0)["attempts"] == 0


#: Kibana's defaults: 3 attempts, retried after 30 s, then up to 1 h apart.
KIBANA_RETRIES = policy.RetryPolicy(max_attempts=3, base_delay_ms=30_000, max_delay_ms=3_600_000)


def test_expired_one_shot_task_is_retried_with_backoff_then_failed() -> None:
    rng = random.Random(1)
    first = policy.on_lease_expired(
        task("o", attempts=1, status="running", owner_id="a"),
        NOW,
        KIBANA_RETRIES,
        rng=rng,
    )
    assert first.outcome == "retry" and first.fields["status"] == "idle"
    assert parse_date(first.fields["runAt"]) == NOW + timedelta(seconds=30)
    assert "ownerId" not in first.fields  # kept, so the retry goes elsewhere
    last = policy.on_lease_expired(
        task("o", attempts=3, status="running"),
        NOW,
        KIBANA_RETRIES,
        rng=rng,
    )
    assert last.outcome == "failed" and last.fields["status"] == "failed"
    assert "3 runs" in last.reason


def test_expired_recurring_task_is_never_failed() -> None:
    rng = random.Random(1)
    doc = new_task("r", "sample", now=NOW, interval="10m").with_changes(attempts=3, status="running")
    expiry = policy.on_lease_expired(doc, NOW, KIBANA_RETRIES, rng=rng)
    assert expiry.outcome == "rescheduled"
    assert expiry.fields["status"] == "idle" and expiry.fields["attempts"] == 0
    assert parse_date(expiry.fields["runAt"]) == NOW + timedelta(minutes=10)
    early = policy.on_lease_expired(doc.with_changes(attempts=1), NOW, KIBANA_RETRIES, rng=rng)
    assert early.outcome == "retry" and parse_date(early.fields["runAt"]) == NOW


def test_retry_delay_follows_kibana() -> None:
    rng = random.Random(7)
    assert policy.retry_delay_ms(1, base_ms=30_000, max_ms=3_600_000, rng=rng) == 30_000
    for attempts in range(2, 12):
        delay = policy.retry_delay_ms(attempts, base_ms=30_000, max_ms=3_600_000, rng=rng)
        assert 30_000 <= delay <= min(3_600_000, 300_000 * 2 ** (attempts - 2))


def test_a_slot_is_free_only_when_kibana_is_done_with_the_task() -> None:
    from elastask.loops.claim.reconcile import finished

    hit = {"_id": "task:x"}
    assert finished(None, None, "kibana:a")  # deleted: a one-shot task succeeded
    assert finished(hit, {"status": "running", "ownerId": "kibana:b"}, "kibana:a")  # someone else has it
    assert finished(hit, {"status": "idle", "attempts": 0, "ownerId": "kibana:a"}, "kibana:a")  # recurring outcome
    # Sent back by the retry loop (attempts kept): the node may still run it until its own timeout.
    assert not finished(hit, {"status": "idle", "attempts": 1, "ownerId": "kibana:a"}, "kibana:a")
    assert not finished(hit, {"status": "running", "attempts": 1, "ownerId": "kibana:a"}, "kibana:a")
    assert not finished(hit, {"status": "failed", "attempts": 3, "ownerId": "kibana:a"}, "kibana:a")


def test_a_running_task_is_not_requeued_before_its_lease_and_grace_ran_out() -> None:
    from datetime import UTC, datetime, timedelta

    from elastask.core.documents import new_task

    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    grace = timedelta(seconds=2)
    running = new_task("r", "sample", now=now).with_changes(
        status="running", owner_id="kibana:a", retry_at=now + timedelta(minutes=5)
    )
    refusal = policy.requeue_refusal(running, now, grace)
    assert refusal is not None and "kibana:a" in refusal and "--force" in refusal
    assert policy.requeue_refusal(running, now + timedelta(minutes=5, seconds=2), grace) is None
    assert policy.requeue_refusal(running.with_changes(status="failed"), now, grace) is None


def test_a_task_bigger_than_every_node_is_passed_over_and_the_tasks_behind_it_still_run() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    big, small = new_task("big", "huge", now=now), new_task("small", "sample", now=now)
    costs = {"huge": 10, "sample": 2}
    assignments = policy.assign([big, small], {"kibana:a": 8}, costs.__getitem__, {"kibana:a": 8})
    assert [a.task.id for a in assignments] == ["task:small"]


def test_a_one_shot_tasks_timeout_override_sets_its_lease_as_kibanas_get_retry_at_does() -> None:
    from dataclasses import replace

    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    once = replace(new_task("report", "report:execute", now=now), timeout_override_ms=3_600_000)
    assert policy.kibana_lease_ms(once, 120_000) == 3_600_000
    recurring = replace(new_task("tick", "sample", now=now, interval="10s"), timeout_override_ms=3_600_000)
    assert policy.kibana_lease_ms(recurring, 120_000) == 120_000  # Kibana ignores it for recurring tasks


def test_an_instances_own_cost_wins_over_its_types_as_kibanas_get_task_cost_does() -> None:
    from dataclasses import replace

    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    heavy = replace(new_task("heavy", "sample", now=now), cost=10)
    light = new_task("light", "sample", now=now)
    assignments = policy.assign([heavy, light], {"kibana:a": 12}, lambda _t: 2)
    assert [(a.task.id, a.cost) for a in assignments] == [("task:heavy", 10), ("task:light", 2)]
