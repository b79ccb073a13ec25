"""The randomized fault run, short form: one fixed seed for 2.5 minutes on real processes, then every invariant.

The full run is ``elastask bench chaos --duration 30m``; this one replays a seed whose 90 s of faults
cover every kind (worker and beat SIGKILL and SIGSTOP, Redis restarted empty, the engine answering
503 and dropping connections, Kibana nodes refusing, answering 500, hanging, failing runs and crashing
mid-run, a worker with its clock 3 s behind), then 60 s of quiet. Liveness figures are printed, not asserted.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from elastask_bed.chaos.model import ENGINE, KILL, NODE, PAUSE, REDIS, SKEW
from elastask_bed.chaos.runner import ChaosOptions, ChaosRun
from elastask_bed.testbed import Testbed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900), pytest.mark.slow]

SEED = 817


def test_given_overlapping_faults_from_a_fixed_seed_when_the_quiet_phase_ends_then_no_invariant_is_broken(
    testbed: Testbed, tmp_path: Path
) -> None:
    # Without libfaketime the run has no clock-skew faults and the seed draws another schedule.
    assert shutil.which("faketime"), "faketime not found: apt-get install faketime (scripts/test installs it)"
    options = ChaosOptions(seed=SEED, duration_s=150, quiet_s=60, workdir=tmp_path / "chaos")
    result = ChaosRun(options, lambda line: print(line, flush=True), bed=testbed).run()
    print("\n".join(result.lines()))
    kinds = {w.kind for w in result.windows}
    assert kinds >= {KILL, PAUSE, REDIS, ENGINE, NODE, SKEW}, f"faults injected: {result.fault_summary()}"
    assert {w.detail for w in result.windows if w.kind == NODE} >= {"refuse", "5xx", "hang", "error", "crash"}
    assert all(w.end is not None for w in result.windows), "a fault was never healed"
    assert result.counts["runs completed"] > 0
    assert not result.violations, "\n".join(f"{c.name}: {c.summary} {c.data}" for c in result.violations)
    assert result.exit_status == 0


def test_bench_chaos_is_a_subcommand_of_bench_with_options_of_its_own() -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "elastask", "bench", "chaos", "--help"], capture_output=True, text=True, timeout=60
    )
    assert answer.returncode == 0, answer.stderr
    assert "--seed" in answer.stdout and "--check-liveness" in answer.stdout
    scenarios = subprocess.run(
        [sys.executable, "-m", "elastask", "bench", "--help"], capture_output=True, text=True, timeout=60
    )
    assert scenarios.returncode == 0 and "elastask bench chaos" in scenarios.stdout
