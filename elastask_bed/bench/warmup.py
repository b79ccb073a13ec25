"""The engine warmed up before anything is measured.

A JVM compiles its hot code while it runs: for its first minutes OpenSearch's JIT compiler threads
take a large share of the CPU (measured per thread from /proc during a 200 ms backlog run started
on a fresh engine: 0.64 of the engine's 0.90 cores were its C2 compiler threads, its request
handling 0.25). On this 2-core machine that starved whichever mode ran first -- always push -- and
no production engine is that cold. So every invocation first runs a small backlog in each mode,
unmeasured, then waits until the compiler threads are quiet.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

#: The compiler threads are quiet below this share of one core, over QUIET_WINDOW_S.
QUIET_SHARE = 0.05
QUIET_WINDOW_S = 2.0


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
    pid: int, timeout_s: float = 120.0, cpu: Callable[[int], float] = compiler_cpu_s
) -> tuple[float, float]:
    """Wait until the compiler threads use under QUIET_SHARE of a core; (seconds waited, their last share)."""
    started = time.monotonic()
    share = 1.0
    while time.monotonic() - started < timeout_s:
        before = cpu(pid)
        time.sleep(QUIET_WINDOW_S)
        share = (cpu(pid) - before) / QUIET_WINDOW_S
        if share < QUIET_SHARE:
            break
    return time.monotonic() - started, share
