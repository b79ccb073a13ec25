"""The operators' plan on real processes: Kibana node restarts without and with a drain, then a rolling
restart of every worker and beat (SIGTERM, one after another), under the chaos run's steady load.

``elastask bench chaos --plan operators`` is the same run, printed; docs/RELIABILITY.md has its figures.
The drained restart and the rolling restart must lose nothing and let no lease run out; the plain
restart's losses are reported, not asserted (they depend on what was running when the node died).
And a worker's cold shutdown (SIGQUIT) with pushes in flight.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from elastask.core.documents import new_task
from elastask.parts.store import TaskStore
from elastask_bed.chaos.model import RESTART, ROLL
from elastask_bed.chaos.runner import ChaosOptions, ChaosRun
from elastask_bed.testbed import Testbed
from elastask_bed.testbed.bed import SimulatorProcess
from tests.integration.harness import Dispatcher, assert_no_violations, now, seed, task_count, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600), pytest.mark.slow]


def test_a_drained_node_restart_and_a_rolling_restart_lose_nothing_and_let_no_lease_run_out(
    testbed: Testbed, tmp_path: Path
) -> None:
    options = ChaosOptions(
        seed=26, duration_s=250, quiet_s=30, nodes=3, plan="operators", workdir=tmp_path / "operators"
    )
    result = ChaosRun(options, lambda line: print(line, flush=True), bed=testbed).run()
    print("\n".join(result.lines()))
    assert [(w.kind, w.detail) for w in result.windows] == [(RESTART, "plain"), (RESTART, "drained"), (ROLL, "")]
    assert all(w.end is not None for w in result.windows) and not result.harness_errors, result.harness_errors
    checks = {c.name: c for c in result.checks}
    assert checks["drained-restart-node1"].ok, checks["drained-restart-node1"].summary
    assert checks["rolling-restart"].ok, checks["rolling-restart"].summary
    assert not result.violations, "\n".join(f"{c.name}: {c.summary} {c.data}" for c in result.violations)


def test_a_cold_shutdown_waits_for_the_pushes_in_flight_instead_of_cutting_them_off(
    store: TaskStore, simulator: Callable[..., SimulatorProcess], dispatcher_factory: Callable[..., Dispatcher]
) -> None:
    # SIGQUIT (or a second Ctrl+C) is Celery's cold shutdown: running jobs are cancelled. With the
    # soft shutdown set (celery_defaults.py) it first waits for them: a push Kibana answers late is
    # settled, not cut off mid-request (its lease would then have to run out, its job redelivered).
    sim = simulator(nodes=1, run_ms="50")
    sim.set_mode(0, "slow", delay_s=3)  # each push is answered 3 s after it arrives
    seed(store.client, [new_task(f"cold-{i}", "sample", now=now()) for i in range(5)])
    dispatcher = dispatcher_factory(sim)
    worker = dispatcher.worker()
    dispatcher.beat()
    wait_for(lambda: sim.stats()["totals"]["pushes"] >= 5, 60, "the pushes in flight")
    assert worker.proc is not None
    quit_at = time.monotonic()
    os.kill(worker.proc.pid, signal.SIGQUIT)  # the main process, as `kill -QUIT <pid>` does
    worker.proc.wait(timeout=30)
    stopped_s = time.monotonic() - quit_at
    log = worker.log_path.read_text(errors="replace")
    assert re.search(r"elastask\.dispatch\[.*\] succeeded", log), log[-3000:]  # settled, not cancelled
    assert "Terminated" not in log and "WorkerLostError" not in log, log[-3000:]
    print(f"cold shutdown with pushes in flight: the worker stopped {stopped_s:.1f} s after SIGQUIT")
    sim.set_mode(0, "ok")
    dispatcher.worker("worker2")
    wait_for(lambda: task_count(store.client) == 0, 60, "every task done")
    logs = dispatcher.logs()
    assert "already pushed once" not in logs  # no job was cut off and redelivered
    assert not re.search(r"retry cycle: expired=[1-9]", logs)  # no lease had to run out
    assert_no_violations(sim.stats())
