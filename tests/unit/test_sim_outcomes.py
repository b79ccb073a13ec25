"""The simulated Kibana node's buffered task store: outcomes batched as Kibana's buffered_task_store.ts does."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from elastask_bed.simulator import outcomes
from elastask_bed.simulator.outcomes import BufferedTaskStore, Operation


def test_outcomes_submitted_together_are_written_in_one_batch_and_each_caller_waits_for_it() -> None:
    batches: list[list[Operation]] = []

    async def write(operations: list[Operation]) -> None:
        batches.append(operations)

    async def scenario() -> None:
        store = BufferedTaskStore(write, lambda _n, _e: None)
        await asyncio.gather(*(store.submit({"remove": f"t{i}"}) for i in range(3)))
        assert batches == [[{"remove": "t0"}, {"remove": "t1"}, {"remove": "t2"}]]  # all written on return

    asyncio.run(scenario())


def test_a_full_buffer_is_written_at_once_and_a_failed_batch_is_reported_not_raised() -> None:
    # Given a timer far longer than the test may take: only a full buffer can be written in time.
    failures: list[int] = []

    async def write(operations: list[Operation]) -> None:
        raise ConnectionError("engine down")

    async def scenario() -> None:
        store = BufferedTaskStore(write, lambda n, _e: failures.append(n), max_duration_s=600)
        submits = (store.submit({"remove": f"t{i}"}) for i in range(outcomes.BUFFER_MAX_OPERATIONS))
        await asyncio.wait_for(asyncio.gather(*submits), timeout=30)  # did not wait for the timer

    asyncio.run(scenario())
    assert failures == [outcomes.BUFFER_MAX_OPERATIONS]


def test_a_one_shot_is_removed_and_a_recurring_task_rescheduled_with_its_runs_counted() -> None:
    assert outcomes.recurring_interval_ms({"id": "once"}) is None
    assert outcomes.recurring_interval_ms({"schedule": {"interval": "5s"}}) == 5000
    assert outcomes.recurring_interval_ms({"schedule": {}}) == outcomes.DEFAULT_INTERVAL_MS
    at = datetime(2026, 1, 1, tzinfo=UTC)
    fields = outcomes.rescheduled_fields({"state": '{"runs": 2, "kept": true}'}, at)
    assert json.loads(fields["state"]) == {"runs": 3, "kept": True}
    assert fields["runAt"] == "2026-01-01T00:00:00.000Z"
    assert (fields["status"], fields["attempts"], fields["retryAt"], fields["startedAt"]) == ("idle", 0, None, None)
    assert json.loads(outcomes.rescheduled_fields({"state": ""}, at)["state"]) == {"runs": 1}
