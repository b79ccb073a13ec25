"""What the chaos run reads in elastask's own logs. Pure but for reading the files."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

#: loops/retry/orphans.py: "worker W died with N push(es) in flight, unanswered: ...: 'task:a', 'task:b'"
_IN_FLIGHT = re.compile(r"died with \d+ push\(es\) in flight, unanswered: .*?\): (.*)$")
#: loops/dispatch/push_checks.py: a redelivered job found the push marker of the job that died mid-push.
_PUSHED_ONCE = re.compile(r"task '([^']+)': this claim was already pushed once \(redelivered job\)")
_TASK_ID = re.compile(r"'([^']+)'")


def in_flight_ids(lines: Iterable[str]) -> frozenset[str]:
    """The task ids elastask named as pushed, unanswered, by a process that died (their leases stand): the
    retry loop's "in flight" when it judged a dead worker, or a redelivered job that found the push marker."""
    found: set[str] = set()
    for line in lines:
        match = _IN_FLIGHT.search(line)
        if match:
            found.update(_TASK_ID.findall(match.group(1)))
        once = _PUSHED_ONCE.search(line)
        if once:
            found.add(once.group(1))
    return frozenset(found)


def in_flight_pushes(logs: Iterable[Path]) -> frozenset[str]:
    """``in_flight_ids`` over every line of these log files."""
    return in_flight_ids(line for log in logs for line in log.read_text(errors="replace").splitlines())
