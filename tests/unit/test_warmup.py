"""The benchmark's warm-up waits for the engine's JIT compiler to be quiet (a scripted CPU counter)."""

from __future__ import annotations

import os

from elastask_bed.bench import warmup


def test_waits_while_the_compiler_threads_are_busy_and_stops_once_quiet() -> None:
    readings = iter([0.0, 0.5, 0.5, 0.9, 0.9, 0.9])  # busy, busy, then quiet
    waited, share = warmup.wait_for_quiet_compiler(1, timeout_s=5, cpu=lambda _pid: next(readings), quiet_window_s=0.01)
    assert share == 0.0 and waited < 5


def test_gives_up_after_the_timeout_with_the_last_share() -> None:
    counter = iter(range(10_000))
    _waited, share = warmup.wait_for_quiet_compiler(1, timeout_s=0.0, cpu=lambda _pid: float(next(counter)))
    assert share == 1.0  # never measured: nothing claimed about the compiler


def test_reads_this_processes_threads_from_proc() -> None:
    assert warmup.compiler_cpu_s(os.getpid()) == 0.0  # a Python process has no JIT compiler threads
    assert warmup.compiler_cpu_s(2**22 + 1) == 0.0  # no such process


def test_warm_up_rounds_run_until_one_leaves_the_compiler_nearly_idle() -> None:
    compiled = iter([0.0, 5.0, 5.0, 9.0, 9.0, 9.0])  # two busy rounds, then a quiet one
    rounds: list[int] = []
    shares = warmup.warm_until_quiet(lambda: rounds.append(1), 1, cpu=lambda _pid: next(compiled))
    assert len(rounds) == 3 and shares[-1] == 0.0 and min(shares[:2]) > warmup.ROUND_QUIET_SHARE


def test_warm_up_gives_up_after_max_rounds() -> None:
    counter = iter(range(0, 10**6, 1000))
    shares = warmup.warm_until_quiet(lambda: None, 1, cpu=lambda _pid: float(next(counter)))
    assert len(shares) == warmup.MAX_ROUNDS
