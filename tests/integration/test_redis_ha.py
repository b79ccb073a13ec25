"""Redis Sentinel on real processes: a master, a replica, three sentinels (Debian's redis-server).

Given/When/Then in each name. The worker and beat are started once and never restarted: they must
follow the failover on their own. The invariants come from the simulator's own statistics.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from elastask.parts.store import TaskStore
from elastask_bed.testbed import Testbed
from elastask_bed.testbed.bed import SimulatorProcess
from elastask_bed.testbed.redis_ha import RedisSentinelGroup
from tests.integration.harness import Dispatcher, assert_no_violations, seed, task_count, wait_for
from tests.integration.test_dispatcher import one_shots
from tests.integration.test_faults import record

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300), pytest.mark.slow]

SimulatorFactory = Callable[..., SimulatorProcess]
DispatcherFactory = Callable[..., Dispatcher]
CONFIG = {"task_types": {"faulty": {"timeout": "4s"}}}
REBUILT = "lease(s) from the engine before claiming"  # the ledger's rebuild log line


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[RedisSentinelGroup]:
    group = RedisSentinelGroup(tmp_path / "redis-ha")
    group.start()
    yield group
    group.stop()


def check_with(testbed: Testbed, sim: SimulatorProcess, group: RedisSentinelGroup) -> str:
    """``elastask check``'s Redis row with Redis given as the sentinel group."""
    env = {**os.environ, **testbed.env(), **group.env(), "ELASTASK_KIBANA_HOSTS": ",".join(sim.urls)}
    env["ELASTASK_CONFIG"] = ""
    result = subprocess.run([sys.executable, "-m", "elastask", "check"], capture_output=True, text=True, env=env)
    return next((line for line in result.stdout.splitlines() if "redis sentinel" in line), result.stdout)


def test_given_sentinel_when_the_master_is_killed_mid_run_then_worker_and_beat_follow_the_promoted_replica(
    testbed: Testbed,
    store: TaskStore,
    simulator: SimulatorFactory,
    dispatcher_factory: DispatcherFactory,
    sentinel_group: RedisSentinelGroup,
) -> None:
    sim = simulator(nodes=3, run_ms="500")
    view = check_with(testbed, sim, sentinel_group)
    assert f"master 127.0.0.1:{sentinel_group.master_port()}" in view and "1 replica(s), quorum 2" in view, view
    seed(store.client, one_shots(150, "faulty"))
    dispatcher = dispatcher_factory(sim, config=CONFIG, env=sentinel_group.env())
    worker = dispatcher.worker(concurrency=4)
    beat = dispatcher.beat()
    wait_for(lambda: sim.stats()["totals"]["runs_finished"] >= 30, 90, "the run under way")
    old_port = sentinel_group.kill_master()
    killed = time.monotonic()
    failover_s = sentinel_group.wait_for_failover(old_port)
    wait_for(lambda: task_count(store.client) == 0, 180, "all 150 tasks done after the failover")
    recovery_s = time.monotonic() - killed
    stats = sim.stats()
    assert_no_violations(stats)
    assert stats["totals"]["runs_finished"] >= 150
    assert worker.running() and beat.running()  # followed the failover without a restart
    record("Sentinel: master SIGKILLed mid-run", f"all 150 done, failover {failover_s:.1f} s", recovery_s)
    print(f"\nfailover {failover_s:.1f} s, all done {recovery_s:.1f} s after the kill")


def test_given_a_replica_that_missed_the_last_ledger_writes_when_it_is_promoted_then_the_ledger_is_rebuilt(
    store: TaskStore,
    simulator: SimulatorFactory,
    dispatcher_factory: DispatcherFactory,
    sentinel_group: RedisSentinelGroup,
) -> None:
    sim = simulator(nodes=2, run_ms="1000")
    seed(store.client, one_shots(300, "faulty"))
    dispatcher = dispatcher_factory(sim, config=CONFIG, env=sentinel_group.env())
    worker = dispatcher.worker(concurrency=4)
    dispatcher.beat()
    wait_for(lambda: sim.stats()["totals"]["runs_started"] >= 20, 90, "the run under way")
    # The replica sleeps: the ledger's next writes (reservations of running tasks) reach only the
    # master, which is then killed; the promoted replica has an older ledger.
    sentinel_group.hold_replica_back(3)
    time.sleep(1)
    rebuilds_before = dispatcher.logs().count(REBUILT)
    old_port = sentinel_group.kill_master()
    sentinel_group.wait_for_failover(old_port)
    # The promoted replica's ledger epoch names the old master: rebuilt from the engine, not trusted.
    wait_for(lambda: dispatcher.logs().count(REBUILT) > rebuilds_before, 90, "the ledger rebuilt after failover")
    wait_for(lambda: task_count(store.client) == 0, 240, "all 300 tasks done after the lossy failover")
    assert_no_violations(sim.stats())  # the cap held: the lost leases were taken back from the engine
    assert worker.running()
