"""The operators' plan on real processes: Kibana node restarts without and with a drain, then a rolling
restart of every worker and beat (SIGTERM, one after another), under the chaos run's steady load.

``elastask bench chaos --plan operators`` is the same run, printed; docs/RELIABILITY.md has its figures.
The drained restart and the rolling restart must lose nothing and let no lease run out; the plain
restart's losses are reported, not asserted (they depend on what was running when the node died).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from elastask_bed.chaos.model import RESTART, ROLL
from elastask_bed.chaos.runner import ChaosOptions, ChaosRun
from elastask_bed.testbed import Testbed

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
