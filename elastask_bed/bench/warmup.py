"""The engine warmed up before anything is measured.

A JVM compiles its hot code while it runs, and OpenSearch's JIT compiler keeps at it for tens of
seconds of each new kind of load (measured per thread from /proc: during a 200 ms backlog run on a
fresh engine its compiler threads took 0.6-0.7 of its 0.9 cores, its request handling 0.25; under
300 single deletes a second they settled only after ~30 s and ~10,000 compilations). On this
2-core machine that starved whichever mode ran first -- always push -- and no production engine
is that cold. So every invocation first runs rounds of a backlog in each mode, unmeasured, until a
whole round leaves the compiler threads nearly idle.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

#: The compiler threads are quiet below this share of one core, over QUIET_WINDOW_S.
QUIET_SHARE = 0.05
QUIET_WINDOW_S = 2.0
#: A warm-up round under load is quiet enough below this share of one core; at most MAX_ROUNDS.
ROUND_QUIET_SHARE = 0.15
MAX_ROUNDS = 4


def compiler_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the JVM's JIT compiler threads used so far (threads ``C1/C2 CompilerThread<n>``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if "CompilerThre" in name:
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def wait_for_quiet_compiler(
    pid: int,
    timeout_s: float = 120.0,
    cpu: Callable[[int], float] = compiler_cpu_s,
    *,
    quiet_window_s: float = QUIET_WINDOW_S,
) -> tuple[float, float]:
    """Wait until the compiler threads use under QUIET_SHARE of a core over ``quiet_window_s``;
    (seconds waited, their last share)."""
    started = time.monotonic()
    share = 1.0
    while time.monotonic() - started < timeout_s:
        before = cpu(pid)
        time.sleep(quiet_window_s)
        share = (cpu(pid) - before) / quiet_window_s
        if share < QUIET_SHARE:
            break
    return time.monotonic() - started, share


def warm_until_quiet(
    run_round: Callable[[], None], pid: int, cpu: Callable[[int], float] = compiler_cpu_s
) -> list[float]:
    """Run warm-up rounds until one keeps the compiler under ROUND_QUIET_SHARE (at most MAX_ROUNDS).

    Returns the compiler's share of a core in each round, for the report.
    """
    shares: list[float] = []
    for _ in range(MAX_ROUNDS):
        before, started = cpu(pid), time.monotonic()
        run_round()
        shares.append((cpu(pid) - before) / max(1e-6, time.monotonic() - started))
        if shares[-1] < ROUND_QUIET_SHARE:
            break
    return shares
