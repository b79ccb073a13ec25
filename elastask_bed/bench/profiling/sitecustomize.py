"""Profile a benchmark's celery worker by CPU time, every thread of every process (``elastask bench --profile``).

Imported by Python at start-up when this directory is on ``PYTHONPATH`` (the benchmark puts it there for
its workers only, with ``ELASTASK_PROFILE_DIR``). Each thread gets a ``cProfile.Profile`` timed by
``time.thread_time`` (CPU, not wall time: a thread waiting on a socket or a queue costs nothing), the pool
children start their own after the fork, and at exit every profile is written to
``ELASTASK_PROFILE_DIR/<main|child>-<pid>-<n>-<thread>.prof``; ``python -m elastask_bed.bench.profiling.report``
reads them. The timer makes the worker several times slower: shares, not speeds.
"""

from __future__ import annotations

import os
import sys

_DIR = os.environ.get("ELASTASK_PROFILE_DIR")


def _install(directory: str) -> None:
    import atexit
    import cProfile
    import threading
    import time

    profiles: list[tuple[str, cProfile.Profile]] = []

    def start(tag: str) -> cProfile.Profile:
        profile = cProfile.Profile(time.thread_time)
        profiles.append((tag, profile))
        profile.enable()
        return profile

    original_run = threading.Thread.run

    def run(self: threading.Thread) -> None:
        profile = start("thread-" + self.name.replace("/", "_"))
        try:
            original_run(self)
        finally:
            profile.disable()

    threading.Thread.run = run  # type: ignore[method-assign]

    def dump(role: str) -> None:
        for n, (tag, profile) in enumerate(list(profiles)):
            try:
                profile.disable()
                profile.dump_stats(os.path.join(directory, f"{role}-{os.getpid()}-{n}-{tag}.prof"))
            except (OSError, TypeError, ValueError) as e:
                print(f"elastask profiling: {tag} of {os.getpid()} not written: {e}", file=sys.stderr)

    start("main")
    atexit.register(dump, "main")

    from celery import signals

    def child_started(**_: object) -> None:  # a pool child: its own profiles, not the parent's copy
        for _tag, profile in profiles:
            profile.disable()
        profiles.clear()
        start("main")

    def child_ending(**_: object) -> None:
        dump("child")

    signals.worker_process_init.connect(child_started, weak=False)
    signals.worker_process_shutdown.connect(child_ending, weak=False)


if _DIR and "worker" in sys.argv:
    _install(_DIR)
