"""The simulated Kibana node's buffered task store: outcomes batched as Kibana's buffered_task_store.ts does."""

from __future__ import annotations

import asyncio

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
    failures: list[int] = []

    async def write(operations: list[Operation]) -> None:
        raise ConnectionError("engine down")

    async def scenario() -> float:
        store = BufferedTaskStore(write, lambda n, _e: failures.append(n))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(*(store.submit({"remove": f"t{i}"}) for i in range(outcomes.BUFFER_MAX_OPERATIONS)))
        return loop.time() - started

    elapsed = asyncio.run(scenario())
    assert failures == [outcomes.BUFFER_MAX_OPERATIONS]
    assert elapsed < outcomes.BUFFER_MAX_DURATION_S  # did not wait for the timer: the buffer was full
