"""Dispatch jobs as they travel through the broker, when claimed-ahead tasks are pushed, and the
order a worker reads its queues in."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from elastask import keys
from elastask.core import policy
from elastask.core.documents import new_task
from elastask.core.intervals import format_date
from elastask.core.messages import ClaimedTask, DispatchJob
from elastask.entry.queue_order import LoopsFirst
from elastask.loops.claim.summary import ClaimSummary
from elastask.runtime import Runtime

NOW = datetime(2024, 5, 1, 12, 0, 0, 500_000, tzinfo=UTC)


def job(doc_id: str, seq_no: int = 7) -> ClaimedTask:
    return ClaimedTask(
        doc_id=doc_id,
        owner_id="kibana:a",
        node_url="http://kibana-a:5601",
        seq_no=seq_no,
        primary_term=1,
        retry_at="2024-05-01T12:05:05.500Z",
        attempts=1,
        lease_ms=305_000,
        body={"id": doc_id, "runAt": "2024-05-01T12:00:00.000Z"},
        slack_ms=5000,
    )


def test_a_batch_survives_its_json_round_trip_through_the_broker() -> None:
    url = "http://kibana-a:5601"
    batch = DispatchJob("kibana:a", url, (job("task:1"), job("task:2", 9)), "2024-05-01T12:00:00.525Z")
    assert DispatchJob.from_dict(batch.as_dict()) == batch
    assert DispatchJob.from_dict(DispatchJob("kibana:a", url, (job("task:1"),)).as_dict()).not_before is None


def test_a_single_job_message_from_the_previous_release_is_still_dispatched() -> None:
    legacy = job("task:1").as_dict()
    del legacy["claim_seq_no"], legacy["slack_ms"]
    batch = DispatchJob.from_dict(legacy)
    assert batch.owner_id == "kibana:a" and [j.doc_id for j in batch.tasks] == ["task:1"]
    assert batch.tasks[0].slack_ms == policy.MIN_SLACK_MS and batch.tasks[0].claim == 7


def test_a_renewed_job_keeps_the_version_of_its_claim_for_the_push_marker() -> None:
    renewed = ClaimedTask(**{**job("task:1").as_dict(), "seq_no": 12, "claim_seq_no": 7})
    assert renewed.claim == 7 and keys.push_marker("task:1", renewed.claim) == keys.push_marker("task:1", 7)


def test_tasks_due_now_are_pushed_at_once_and_tasks_claimed_ahead_at_their_run_at_in_25ms_steps() -> None:
    assert policy.push_step(NOW - timedelta(seconds=3), NOW) is None
    assert policy.push_step(NOW, NOW) is None
    assert policy.push_step(NOW + timedelta(milliseconds=1), NOW) == NOW + timedelta(milliseconds=25)
    assert policy.push_step(NOW + timedelta(milliseconds=25), NOW) == NOW + timedelta(milliseconds=25)
    assert policy.push_step(NOW + timedelta(milliseconds=190), NOW) == NOW + timedelta(milliseconds=200)
    for ms in range(1, 1000, 7):  # never before runAt, never a step late
        run_at = NOW + timedelta(milliseconds=ms)
        step = policy.push_step(run_at, NOW)
        assert step is not None and run_at <= step < run_at + timedelta(milliseconds=25)


def test_the_dispatch_slack_is_a_tenth_of_the_lease_between_1_and_5_seconds() -> None:
    one_shot = new_task("o", "t", now=NOW)
    assert policy.dispatch_slack_ms(one_shot, 4_000) == 1000
    assert policy.dispatch_slack_ms(one_shot, 30_000) == 3000
    assert policy.dispatch_slack_ms(one_shot, 300_000) == 5000
    hourly = new_task("r", "t", now=NOW, interval="1h")
    assert policy.lease_until(hourly, NOW, 4_000) == NOW + timedelta(hours=1, seconds=5)


def test_a_worker_reads_the_claim_and_retry_queues_before_any_node_queue() -> None:
    order = LoopsFirst()
    order.update(["elastask.dispatch.kibana:a", "elastask.claim", "elastask.dispatch.kibana:b", "elastask.retry"])
    assert order.consume(4)[:2] == ["elastask.claim", "elastask.retry"]
    order.rotate("elastask.claim")
    order.rotate("elastask.dispatch.kibana:a")  # round robin among the nodes, loops still first
    assert order.consume(4) == [
        "elastask.retry",
        "elastask.claim",
        "elastask.dispatch.kibana:b",
        "elastask.dispatch.kibana:a",
    ]


def test_a_claim_summary_times_its_steps_and_keeps_its_clock_out_of_json() -> None:
    summary = ClaimSummary()
    summary.step("search")
    summary.step("search")
    assert set(summary.steps_ms) == {"search"} and summary.steps_ms["search"] >= 0
    assert "_mark" not in summary.as_dict() and "steps_ms" in summary.as_dict()


def test_a_cycle_sends_one_job_per_node_with_an_eta_only_when_every_task_in_it_is_ahead(rt: Runtime) -> None:
    from elastask.core.documents import TaskDocument
    from elastask.loops.claim.jobs import enqueue_jobs
    from elastask.parts.nodes import Node

    node_a, node_b = rt.settings.kibana.hosts[0], replace(rt.settings.kibana.hosts[0], url="http://kibana-b:5601")
    nodes = [Node(node_a, "kibana:a", 20), Node(node_b, "kibana:b", 20)]

    def claimed_doc(doc_id: str, owner_id: str, ahead_ms: int) -> tuple[policy.Assignment, TaskDocument]:
        doc = new_task(doc_id, "sample", now=NOW + timedelta(milliseconds=ahead_ms))
        doc = replace(doc, seq_no=3, primary_term=1, started_at=NOW, retry_at=NOW + timedelta(minutes=5))
        return policy.Assignment(doc, owner_id, 2), doc

    sent: list[DispatchJob] = []
    claimed = [
        claimed_doc("task:a-ahead", "kibana:a", 300),
        claimed_doc("task:a-due", "kibana:a", 0),
        claimed_doc("task:b-later", "kibana:b", 410),
        claimed_doc("task:b-sooner", "kibana:b", 120),
    ]
    enqueue_jobs(rt, NOW, nodes, claimed, sent.append)
    jobs = {job.owner_id: job for job in sent}
    assert len(sent) == 2  # one per node, not one per node and 25 ms step
    assert [t.doc_id for t in jobs["kibana:a"].tasks] == ["task:a-due", "task:a-ahead"]
    assert jobs["kibana:a"].not_before is None  # a task is due: the job runs at once
    assert [t.doc_id for t in jobs["kibana:b"].tasks] == ["task:b-sooner", "task:b-later"]
    assert jobs["kibana:b"].not_before == format_date(NOW + timedelta(milliseconds=125))  # its first step
